"""longctx-adapter: long-video understanding for off-the-shelf HF vision-language models, without retraining.

    handle = apply_adapter(model)   # family preset: progressive pooling of visual tokens
    ...
    handle.remove()                 # bit-exactly the stock model again

Layers, lowest first (an import only points down): `ops` (pure tensor math, no transformers), the model
families (`family`, `registry`, `shadow` and `patches`: one file per family, torch only at import), `config`,
`hooks` (the call path on a transformers model; checks the transformers version when imported), `api`,
then `profiling`, `demo`, `cli`. `testing` holds the tiny model factories for tests, demos and benchmarks.
The public names below load lazily, so `import longctx_adapter.ops` never imports transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "AdapterConfig": "longctx_adapter.config",
    "AdapterError": "longctx_adapter.errors",
    "AdapterHandle": "longctx_adapter.api",
    "EncodedVideo": "longctx_adapter.streaming",
    "apply_adapter": "longctx_adapter.api",
    "encode_video": "longctx_adapter.streaming",
    "from_pretrained": "longctx_adapter.api",
    "get_adapter": "longctx_adapter.api",
    "patch_transformers": "longctx_adapter.api",
    "remove_adapter": "longctx_adapter.api",
    "unpatch_transformers": "longctx_adapter.api",
    "supported_models": "longctx_adapter.api",
    "profile": "longctx_adapter.profiling",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'longctx_adapter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
