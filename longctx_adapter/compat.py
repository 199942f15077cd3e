"""Which transformers releases the adapter supports, checked on import and again in apply_adapter.

The adapter hooks transformers internals (`mm_encoder_outputs` in forward/generate, per-class feature layouts,
the decoder's `rotary_emb`), so a release outside the tested range fails with a clear AdapterError naming the
range instead of producing wrong results in the middle of a forward. `SUPPORTED_TRANSFORMERS` must equal the
`transformers` requirement in pyproject.toml (tests/test_compat.py checks it).

Oldest supported release, 5.24.0 (checked against the released wheels): from 5.18 forward/generate accept
`mm_encoder_outputs` and `get_video_features` takes `pixel_values_videos`; from 5.21 LLaVA-NeXT-Video returns its
video features as one (B, T*H*W, D) tensor (5.18-5.20: per-video (T, H*W, D) splits); 5.24 renamed the decoder's
`past_key_values` argument and output field to `cache`, which manual decode loops and chunked prefill with the
visual RoPE extension rely on. Releases before 5.18 have no `mm_encoder_outputs` at all. `make test-compat` runs
the suite on the oldest supported release in a second virtualenv.

Set LONGCTX_ADAPTER_SKIP_VERSION_CHECK=1 to try an untested release anyway (at your own risk: every family patch
still checks the attributes it hooks when it is applied).
"""

from __future__ import annotations

import os

from longctx_adapter.errors import AdapterError

SUPPORTED_TRANSFORMERS = ">=5.24,<6"
OLDEST_TESTED = "5.24.0"
SKIP_ENV = "LONGCTX_ADAPTER_SKIP_VERSION_CHECK"


def transformers_version() -> str:
    """The version of the transformers module actually imported (not just the installed metadata)."""
    import transformers

    return str(transformers.__version__)


def is_supported(version: str) -> bool:
    """True when `version` lies in SUPPORTED_TRANSFORMERS; dev/rc builds count as the release they precede."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    return SpecifierSet(SUPPORTED_TRANSFORMERS).contains(parsed, prereleases=True)


def check_transformers_version(version: str | None = None) -> None:
    """Raise AdapterError naming the supported range when transformers is outside it."""
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
        return
    version = transformers_version() if version is None else version
    if not is_supported(version):
        raise AdapterError(
            f"longctx-adapter supports transformers {SUPPORTED_TRANSFORMERS} (tested from {OLDEST_TESTED}), but "
            f"transformers {version} is installed; install a supported release, e.g. "
            f"pip install 'transformers{SUPPORTED_TRANSFORMERS}', or set {SKIP_ENV}=1 to try this one at your own risk"
        )
