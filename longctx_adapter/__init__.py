"""longctx-adapter: long-video understanding for off-the-shelf HF vision-language models, without retraining.

    handle = apply_adapter(model)   # family preset: progressive pooling of visual tokens
    ...
    handle.remove()                 # bit-exactly the stock model again
"""

from .api import (
    AdapterHandle,
    apply_adapter,
    from_pretrained,
    get_adapter,
    patch_transformers,
    remove_adapter,
    unpatch_transformers,
)
from .config import AdapterConfig
from .errors import AdapterError
from .profiling import profile
from .registry import supported_models

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "AdapterError",
    "AdapterHandle",
    "apply_adapter",
    "from_pretrained",
    "get_adapter",
    "patch_transformers",
    "profile",
    "remove_adapter",
    "supported_models",
    "unpatch_transformers",
]

# A transformers release outside the supported range fails here, naming the range (see compat.py).
from .compat import check_transformers_version as _check_transformers_version  # noqa: E402

_check_transformers_version()
