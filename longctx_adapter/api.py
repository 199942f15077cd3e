"""Public entry points: apply_adapter / remove_adapter / AdapterHandle and load-time patching."""

from __future__ import annotations

import os
from collections.abc import Mapping

from longctx_adapter.compat import check_transformers_version
from longctx_adapter.config import AdapterConfig, known_visual_window
from longctx_adapter.errors import AdapterError
from longctx_adapter.hooks.handle import AdapterHandle, handle_of
from longctx_adapter.hooks.question import build_guidance
from longctx_adapter.hooks.rotary import RopeBase
from longctx_adapter.ops.pooling import check_frame_grid
from longctx_adapter.registry import family_for, supported_models
from longctx_adapter.saving import find_saved_config, read_adapter_config

__all__ = [
    "AdapterHandle",
    "apply_adapter",
    "from_pretrained",
    "get_adapter",
    "patch_transformers",
    "remove_adapter",
    "supported_models",
    "unpatch_transformers",
]


def _resolve_config(model_type: str, config, overrides: Mapping) -> AdapterConfig:
    if config is None:
        config = AdapterConfig.preset(model_type)
    elif isinstance(config, Mapping):
        config = AdapterConfig.from_dict(config)
    elif isinstance(config, str):
        config = AdapterConfig.from_json(config)
    elif not isinstance(config, AdapterConfig):
        raise AdapterError(
            f"config must be an AdapterConfig, a dict, a JSON string or None, got {type(config).__name__}"
        )
    config = config.replace(**overrides) if overrides else config
    return _with_visual_window(model_type, config)


def _with_visual_window(model_type, config: AdapterConfig) -> AdapterConfig:
    """Fill rope.visual_window from the preset when the user left it out; refuse when nobody knows it."""
    rope = config.rope
    if rope is None or rope.get("visual_window") is not None:
        return config
    fixed_without_ramp = rope.get("factor") is not None and rope["type"] in ("linear", "ntk")
    if fixed_without_ramp or model_type is None:
        return config
    window = known_visual_window(model_type)
    if window is None:
        raise AdapterError(
            f"rope needs the model's visual training window (visual_window, in tokens) and no preset knows it "
            f"for {model_type!r}; pass rope={{..., 'visual_window': N}} (e.g. frames seen in training x tokens "
            "per frame), or use a fixed 'factor' with type 'linear' or 'ntk'"
        )
    return config.replace(rope={**rope, "visual_window": window})


def _has_path(obj, dotted: str) -> bool:
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _check_model(model, family) -> None:
    for dotted in family.required:
        if _has_path(model, dotted):
            continue
        inner = dotted.split(".", 1)[1] if "." in dotted else None
        generates = callable(getattr(model, "can_generate", None)) and model.can_generate()
        if inner is not None and not generates and _has_path(model, inner):  # what the top model's `.model` holds
            raise AdapterError(
                f"apply_adapter got {type(model).__name__}, the inner model of a {family.model_types[0]} "
                "checkpoint; pass the whole model that has generate() (e.g. apply_adapter(model), not "
                "apply_adapter(model.model))"
            )
        obj = model
        for part in dotted.split("."):
            if not hasattr(obj, part):
                raise AdapterError(
                    f"{type(model).__name__} has no attribute {dotted!r}, which the {family.model_types[0]} patch "
                    "hooks; this transformers version changed the model layout. Use a supported transformers "
                    "release (docs/compatibility.md) or report it."
                )
            obj = getattr(obj, part)


def _check_grid(model, family, config: AdapterConfig) -> None:
    """Refuse spatial windows the model's frame grid cannot hold now; frame counts are checked per call."""
    if config.pooling:
        height, width = family.frame_grid(model.config)
        check_frame_grid(height, width, config.pooling)


def _check_is_model(model) -> None:
    if isinstance(model, (str, os.PathLike)):
        raise AdapterError(
            f"apply_adapter takes a loaded model, got the path or hub id {os.fspath(model)!r}; load and adapt it in "
            f"one step with longctx_adapter.from_pretrained({os.fspath(model)!r}), or load it with transformers "
            "first and pass the model"
        )
    if getattr(getattr(model, "config", None), "model_type", None) is None:
        raise AdapterError(
            f"apply_adapter takes a loaded transformers model (with a config.model_type), got "
            f"{type(model).__name__}; pass e.g. the LlavaOnevisionForConditionalGeneration or "
            "Qwen2VLForConditionalGeneration instance that has generate()"
        )


def apply_adapter(
    model, config: AdapterConfig | Mapping | str | None = None, *, scorer=None, tokenizer=None, **overrides
) -> AdapterHandle:
    """Install the adapter on this model instance and return the handle that removes it.

    config: an AdapterConfig, a dict or JSON string of one, or None for the family preset; keyword overrides
    replace single fields (e.g. `pooling=None`). Refusals raise AdapterError and leave the model untouched.
    scorer: for question-guided stages (prompt_guided, select_frames, progressive anchor "score"): a
    hooks.scorer.Scorer, a CLIPModel/SiglipModel, a registered name or a local checkpoint path; overrides the stages'
    "scorer". tokenizer: the model's tokenizer (or processor), to read the question from the prompt's text tokens.
    """
    check_transformers_version()
    _check_is_model(model)
    model_type = model.config.model_type
    family = family_for(model_type)
    if handle_of(model) is not None:
        raise AdapterError(
            "this model already has an adapter applied; call handle.remove() (or remove_adapter(model)) "
            "before applying another config"
        )
    resolved = _resolve_config(model_type, config, overrides)
    _check_model(model, family)
    _check_grid(model, family, resolved)
    if resolved.rope is not None:
        RopeBase.from_text_config(model.config.text_config)  # refuse incompatible model RoPE before installing
    guidance = build_guidance(model, family, resolved, scorer, tokenizer)  # refuses a missing/unfit scorer
    handle = AdapterHandle(model, family, resolved, guidance)
    handle.install()  # refuses a model another thread adapted meanwhile; removes what it installed on failure
    return handle


def remove_adapter(model) -> None:
    """Remove whatever adapter is on `model` (no-op when none is)."""
    handle = handle_of(model)
    if handle is not None:
        handle.remove()


def get_adapter(model) -> AdapterHandle | None:
    """The active handle of a model, or None."""
    return handle_of(model)


# --- load-time patching ------------------------------------------------------------------------
_PATCHED_LOADERS: dict[type, object] = {}


def _model_classes():
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    names = (MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(t) for t in supported_models())
    return [getattr(transformers, name) for name in names if name is not None]


def from_pretrained(
    name_or_path, adapter: AdapterConfig | Mapping | str | None = None, *, scorer=None, tokenizer=None, **hf_kwargs
):
    """Load a supported checkpoint with the adapter applied.

    `adapter=None` means the config an adapted model saved beside its weights (`longctx_adapter.json`, written by
    its `save_pretrained`) when there is one, else the family preset. scorer / tokenizer: as for apply_adapter
    (question-guided stages).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    check_transformers_version()
    _check_local_path(name_or_path)
    if adapter is None:
        saved = find_saved_config(name_or_path, **hf_kwargs)
        adapter = read_adapter_config(saved) if saved is not None else None
    hf_config = AutoConfig.from_pretrained(name_or_path, **_config_kwargs(hf_kwargs))
    family_for(hf_config.model_type)  # refuse unsupported models before loading weights
    _resolve_config(hf_config.model_type, adapter, {})
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, **hf_kwargs)
    if handle_of(model) is not None:  # patch_transformers already adapted it
        handle_of(model).remove()
    apply_adapter(model, adapter, scorer=scorer, tokenizer=tokenizer)
    return model


def _looks_like_local_path(name: str) -> bool:
    """Hub ids are 'name' or 'namespace/name'; anything else with a separator or a leading '.', '~' is a path."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or (os.altsep is not None and os.altsep != "/" and os.altsep in name)
    )


def _check_local_path(name_or_path) -> None:
    """A local folder that is not there gets a plain answer, not the hub's repo-id rules."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise AdapterError(
            f"from_pretrained takes a local folder or a hub id, got {type(name_or_path).__name__}; to adapt a "
            "model already loaded, use apply_adapter(model)"
        )
    name = os.fspath(name_or_path)
    if os.path.isfile(name):
        raise AdapterError(f"{name!r} is a file; pass the checkpoint folder that holds config.json and the weights")
    if not os.path.exists(name) and (isinstance(name_or_path, os.PathLike) or _looks_like_local_path(name)):
        raise AdapterError(
            f"the folder {name!r} does not exist; pass the folder a checkpoint was saved to (with config.json), "
            "or a hub id such as 'llava-hf/llava-onevision-qwen2-0.5b-ov-hf'"
        )


def _config_kwargs(hf_kwargs: Mapping) -> dict:
    keys = ("revision", "trust_remote_code", "cache_dir", "local_files_only", "token")
    return {k: hf_kwargs[k] for k in keys if k in hf_kwargs}


def patch_transformers(config: AdapterConfig | Mapping | str | None = None, *, scorer=None, tokenizer=None) -> None:
    """Make `from_pretrained` of every supported class return adapted models until unpatch_transformers().

    scorer / tokenizer: handed to apply_adapter for every model loaded meanwhile (question-guided stages).
    """
    check_transformers_version()
    if _PATCHED_LOADERS:
        raise AdapterError("transformers is already patched; call unpatch_transformers() first")
    frozen = _resolve_config(None, config, {}) if config is not None else None
    for cls in _model_classes():
        _PATCHED_LOADERS[cls] = cls.__dict__.get("from_pretrained")
        loader = _adapting_loader(cls.from_pretrained.__func__, frozen, scorer, tokenizer)
        cls.from_pretrained = classmethod(loader)


def _adapting_loader(inner, config, scorer=None, tokenizer=None):
    def from_pretrained(klass, *args, **kwargs):
        model = inner(klass, *args, **kwargs)
        if handle_of(model) is None:
            saved = config if config is not None else _saved_config(args, kwargs)
            apply_adapter(model, saved, scorer=scorer, tokenizer=tokenizer)
        return model

    return from_pretrained


def _saved_config(args, kwargs) -> AdapterConfig | None:
    """The adapter config saved beside a checkpoint being loaded (None: use the preset)."""
    path = args[0] if args else kwargs.get("pretrained_model_name_or_path")
    saved = find_saved_config(path, **kwargs) if path is not None else None
    return read_adapter_config(saved) if saved is not None else None


def unpatch_transformers() -> None:
    """Undo patch_transformers(); models already loaded keep their adapters."""
    for cls, original in _PATCHED_LOADERS.items():
        if original is None:
            del cls.from_pretrained
        else:
            cls.from_pretrained = original
    _PATCHED_LOADERS.clear()
