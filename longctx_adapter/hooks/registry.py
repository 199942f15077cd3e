"""One table: `config.model_type` -> the family patch module that knows that model."""

from __future__ import annotations

import importlib

from longctx_adapter.errors import AdapterError
from longctx_adapter.hooks.family import VisualFamily

MODEL_TYPE_TO_PATCH: dict[str, str] = {
    "llava": "longctx_adapter.patches.llava",
    "llava_next": "longctx_adapter.patches.llava_next",
    "llava_next_video": "longctx_adapter.patches.llava_next_video",
    "llava_onevision": "longctx_adapter.patches.llava_onevision",
    "qwen2_vl": "longctx_adapter.patches.qwen2_vl",
    "qwen2_5_vl": "longctx_adapter.patches.qwen2_5_vl",
    "qwen3_vl": "longctx_adapter.patches.qwen3_vl",
}


def supported_models() -> list[str]:
    """The `config.model_type` values apply_adapter accepts."""
    return sorted(MODEL_TYPE_TO_PATCH)


def family_for(model_type: str | None) -> VisualFamily:
    if model_type not in MODEL_TYPE_TO_PATCH:
        raise AdapterError(
            f"model_type {model_type!r} is not supported; supported model types are {supported_models()}. "
            "Load one of those classes (e.g. LlavaOnevisionForConditionalGeneration) or open an issue for yours."
        )
    return importlib.import_module(MODEL_TYPE_TO_PATCH[model_type]).FAMILY
