"""Which adapter config a vLLM engine serves, and whether an engine can honour it.

Sources, first match wins:
1. `hf_overrides={"longctx_adapter": {...}}` (or `--hf-overrides '{"longctx_adapter": {...}}'`): vLLM sets the dict
   as an attribute of the model's HF config; `{"longctx_adapter": None}` serves the stock model even when the
   folder holds a config.
2. `longctx_adapter.json` in the model folder (what `save_pretrained` of an adapted model writes).
3. Neither: the stock model, exactly.

Both are read by the one config grammar of the package (`config_text.parse_config`: a JSON config dict, a stage
dict or list, a text shorthand such as "progressive:2,8,4+yarn", or null), validated by the same `AdapterConfig` as
on the HF path, with a missing rope `visual_window` filled from the family preset. Then they are checked for what a
serving engine can do: parameter-free pooling only (question-guided stages need a scorer model run on each question),
pooling whose tokens are known before the model runs (vLLM writes the prompt's placeholders first), and a fixed
RoPE factor (vLLM builds one rotary table per model, so the per-call factor s = visual tokens / visual_window cannot
follow each request). Imports only the ops and config layers and errors.py: never transformers >= 5.24 code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from longctx_adapter.config import AdapterConfig
from longctx_adapter.config_text import ADAPTER_CONFIG_NAME, parse_config, saved_config_path
from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.pooling import is_data_dependent, is_guided

__all__ = ["ADAPTER_CONFIG_NAME", "HF_OVERRIDES_KEY", "ServingAdapter", "adapter_for", "serving_adapter"]
#: the key of `hf_overrides` (and so the HF config attribute) that carries an adapter config
HF_OVERRIDES_KEY = "longctx_adapter"
#: architectures whose vLLM classes the plugin replaces, by HF model_type
SERVED_MODEL_TYPES = ("llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl")


@dataclass(frozen=True)
class ServingAdapter:
    """An adapter config an engine can serve, with where it came from (for messages)."""

    config: AdapterConfig
    source: str

    @property
    def pooling(self) -> tuple:
        return tuple(self.config.pooling or ())

    @property
    def rope(self) -> dict | None:
        return None if self.config.rope is None else dict(self.config.rope)

    @property
    def not_applied(self) -> list[str]:
        """Options of the HF call path that change memory or output layout only, which an engine has no use for."""
        defaults = AdapterConfig()
        return [
            name
            for name in ("vision_chunk_frames", "last_logits_only", "pool_single_images")
            if getattr(self.config, name) != getattr(defaults, name)
        ]


def check_servable(config: AdapterConfig, source: str) -> None:
    """Refuse what a vLLM engine cannot do, naming the fix; everything else is served as on the HF path."""
    for position, stage in enumerate(config.pooling or (), start=1):
        if is_guided(stage):
            raise AdapterError(
                f"{source}: pooling stage {position} ({stage['type']}"
                f"{', anchor score' if stage.get('anchor') == 'score' else ''}) is question-guided: it scores every "
                "frame against the question with a CLIP/SigLIP model, which the vLLM plugin does not run inside the "
                "engine. Serve a parameter-free stage instead (progressive with anchor 'first', temporal, adaptive3d "
                "or conv3d), or run question-guided pooling on the Hugging Face path (apply_adapter)"
            )
        if is_data_dependent(stage):
            raise AdapterError(
                f"{source}: pooling stage {position} ({stage['type']}) keeps tokens chosen from the video's features, "
                "but a vLLM engine writes the prompt's placeholders (and Qwen's position ids) before the model sees "
                "the video. Serve a parameter-free stage with a fixed size (progressive, temporal, adaptive3d or "
                "conv3d), or run the merge stages on the Hugging Face path (apply_adapter)"
            )
    rope = config.rope
    if rope is None:
        return
    if rope.get("factor") is None:
        window = rope.get("visual_window")
        example = f"visual tokens of your longest video / {window}" if window else "longest visual run / visual_window"
        raise AdapterError(
            f"{source}: rope has no fixed 'factor', so the HF path computes s = visual tokens / visual_window for "
            "every call; vLLM builds one rotary table per model and cannot change it per request. Add a fixed "
            f'factor for the longest video you will serve, e.g. "factor": {example} (YaRN then covers that length '
            "and keeps short videos close to stock), or set rope to null"
        )
    if rope["type"] == "interpolate":
        raise AdapterError(
            f"{source}: rope type 'interpolate' moves position ids per request, which a vLLM engine computes itself; "
            "use type 'yarn', 'linear' or 'ntk' with a fixed 'factor'"
        )
    if rope.get("scope") != "all":
        raise AdapterError(
            f"{source}: rope scope {rope.get('scope')!r} rotates visual tokens differently from text in the same "
            'sequence, but a vLLM engine has one rotary table for every token; use "scope": "all"'
        )


def _served(config: AdapterConfig | None, source: str) -> ServingAdapter | None:
    if config is None or (not config.pooling and config.rope is None):
        return None  # the stock model, by construction
    check_servable(config, source)
    return ServingAdapter(config, source)


def parse_adapter(data, source: str, model_type: str | None = None) -> ServingAdapter | None:
    """Any config form of the package's grammar (None: the stock model) -> a checked ServingAdapter, or None."""
    if data is None:
        return None
    try:
        config = parse_config(data, model_type)
    except AdapterError as err:
        raise AdapterError(f"{source}: {err}") from None
    return _served(config, source)


def read_folder_config(folder, model_type: str | None = None) -> ServingAdapter | None:
    """The checked adapter config saved in a local model folder, or None when it has none."""
    path = saved_config_path(folder)
    if path is None:
        return None
    return _served(parse_config("saved", model_type, folder=folder), path)  # its errors name the file


def _hub_config_folder(repo: str, revision) -> str | None:
    """The local folder holding longctx_adapter.json of a Hub model id, when the Hub (or its cache) has one."""
    try:
        from huggingface_hub import hf_hub_download

        return os.path.dirname(hf_hub_download(repo, ADAPTER_CONFIG_NAME, revision=revision))
    except Exception:  # no such file, offline, gated: no saved adapter config to use
        return None


def serving_adapter(hf_config, model: str | None, revision=None) -> ServingAdapter | None:
    """The adapter config an engine for this model serves (see the module docstring for the order)."""
    model_type = getattr(hf_config, "model_type", None)
    if hasattr(hf_config, HF_OVERRIDES_KEY):
        source = f"hf_overrides[{HF_OVERRIDES_KEY!r}]"
        return parse_adapter(getattr(hf_config, HF_OVERRIDES_KEY), source, model_type)
    if model is None:
        return None
    folder = model if os.path.isdir(os.fspath(model)) else _hub_config_folder(str(model), revision)
    return read_folder_config(folder, model_type) if folder is not None else None


def adapter_for(model_config) -> ServingAdapter | None:
    """serving_adapter() of a vLLM ModelConfig, computed once per distinct (override, model, revision).

    Cached here rather than on the config object, which vLLM may pickle to other processes.
    """
    hf_config = model_config.hf_config
    override = (
        json.dumps(getattr(hf_config, HF_OVERRIDES_KEY), sort_keys=True, default=str)
        if hasattr(hf_config, HF_OVERRIDES_KEY)
        else None
    )
    key = (override, str(model_config.model), str(getattr(model_config, "revision", None)))
    if key not in _CACHE:
        _CACHE[key] = serving_adapter(hf_config, model_config.model, getattr(model_config, "revision", None))
    return _CACHE[key]


_CACHE: dict[tuple, ServingAdapter | None] = {}


def log_not_applied(adapter: ServingAdapter | None, logger) -> None:
    """Say once per engine which HF-path-only options the engine leaves aside (they never change the numbers)."""
    if adapter is not None and adapter.not_applied:
        logger.warning(
            "%s: %s only shape memory or the output layout of the HF call path; the vLLM engine does not apply them",
            adapter.source,
            ", ".join(adapter.not_applied),
        )
