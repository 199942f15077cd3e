"""One table: `config.model_type` -> the patch module that declares that model's family."""

from __future__ import annotations

import importlib

from longctx_adapter.errors import AdapterError
from longctx_adapter.family import VisualFamily

MODEL_TYPE_TO_PATCH: dict[str, str] = {
    "llava": "longctx_adapter.patches.llava",
    "llava_next": "longctx_adapter.patches.llava_next",
    "llava_next_video": "longctx_adapter.patches.llava_next_video",
    "llava_onevision": "longctx_adapter.patches.llava_onevision",
    "qwen2_vl": "longctx_adapter.patches.qwen_vl",
    "qwen2_5_vl": "longctx_adapter.patches.qwen_vl",
    "qwen3_vl": "longctx_adapter.patches.qwen_vl",
}


def supported_models() -> list[str]:
    """The `config.model_type` values apply_adapter accepts."""
    return sorted(MODEL_TYPE_TO_PATCH)


def family_for(model_type: str | None) -> VisualFamily:
    """The family of a model type (its patch module is imported on first use)."""
    if model_type not in MODEL_TYPE_TO_PATCH:
        raise AdapterError(
            f"model_type {model_type!r} is not supported; supported model types are {supported_models()}. "
            "Load one of those classes (e.g. LlavaOnevisionForConditionalGeneration) or open an issue for yours."
        )
    module = importlib.import_module(MODEL_TYPE_TO_PATCH[model_type])
    for family in module.FAMILIES:
        if model_type in family.model_types:
            return family
    raise AdapterError(f"internal: {module.__name__} declares no family for {model_type!r}; please report this")


def families_where(predicate) -> list[str]:
    """The supported model types whose family satisfies `predicate` (for error messages that list them)."""
    return [t for t in supported_models() if predicate(family_for(t))]
