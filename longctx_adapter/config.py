"""AdapterConfig: the plain, JSON-able description of what the adapter does to a model."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.pooling import normalize_pooling
from longctx_adapter.ops.rope import ROPE_TYPES, inv_freq_for
from longctx_adapter.registry import MODEL_TYPE_TO_PATCH, family_for, supported_models

_ROPE_KEYS = ("type", "visual_window", "scope", "alpha", "beta", "attention_factor", "factor", "mrope_axes")


def _freeze(value):
    """Read-only view of plain JSON-like data (mappings -> MappingProxyType, lists -> tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value):
    """Plain, mutable JSON-like data again (a deep copy)."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return copy.deepcopy(value)


@dataclass(frozen=True, eq=True)
class AdapterConfig:
    """What to pool and how to extend RoPE; every value is plain data so ablations are one dict away.

    pooling: None, one stage dict, or a list of stage dicts applied in order (docs/configuration.md#pooling-stages).
    rope: None or a dict (visual context window extension; docs/configuration.md#rope).
    pool_single_images: on classes that take frames as images (LLaVA, LLaVA-NeXT), a run of one image is
        left stock unless this is True.
    vision_chunk_frames: None, or encode each video this many frames at a time and pool chunk by chunk where the
        stages allow (memory-lean; same result, see longctx_adapter/hooks/chunking.py). Needs pooling.
    last_logits_only: adapted forward() calls that pass no logits_to_keep (and no labels) compute logits for the
        last position only (shape (B, 1, V)) instead of every position; generate() always does this.
    """

    pooling: tuple[dict, ...] | None = None
    rope: dict | None = None
    pool_single_images: bool = False
    vision_chunk_frames: int | None = None
    last_logits_only: bool = False

    def __post_init__(self):
        stages = normalize_pooling(_thaw(self.pooling))
        # Frozen all the way down: a live handle's config cannot be edited behind validation's back.
        object.__setattr__(self, "pooling", _freeze(stages) if stages else None)
        object.__setattr__(self, "rope", _freeze(_normalize_rope(_thaw(self.rope))))
        if not isinstance(self.pool_single_images, bool):
            raise AdapterError(f"pool_single_images must be true or false, got {self.pool_single_images!r}")
        _check_memory_options(self)

    # --- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "pooling": _thaw(list(self.pooling)) if self.pooling else None,
            "rope": _thaw(self.rope),
            "pool_single_images": self.pool_single_images,
            "vision_chunk_frames": self.vision_chunk_frames,
            "last_logits_only": self.last_logits_only,
        }

    def __hash__(self) -> int:
        return hash(self.to_json(sort_keys=True))

    @classmethod
    def from_dict(cls, data: Mapping) -> AdapterConfig:
        if not isinstance(data, Mapping):
            raise AdapterError(f"an adapter config must be a mapping, got {type(data).__name__}")
        allowed = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise AdapterError(f"unknown adapter config key(s) {unknown}; allowed keys are {sorted(allowed)}")
        return cls(**_thaw(dict(data)))  # a deep copy that also takes another config's frozen values

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> AdapterConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AdapterError(f"adapter config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def replace(self, **overrides) -> AdapterConfig:
        """A copy with some fields changed (validated like a new config)."""
        data = self.to_dict()
        unknown = sorted(set(overrides) - set(data))
        if unknown:
            raise AdapterError(f"unknown adapter config key(s) {unknown}; allowed keys are {sorted(data)}")
        data.update(overrides)
        return AdapterConfig.from_dict(data)

    @classmethod
    def preset(cls, model_type: str) -> AdapterConfig:
        """The family default (declared in its patch module): the paper's progressive pooling on the family's grid,
        plus visual YaRN where the model's visual training window is known."""
        if model_type not in MODEL_TYPE_TO_PATCH:
            raise AdapterError(f"no preset for model_type {model_type!r}; presets exist for {supported_models()}")
        return cls.from_dict(family_for(model_type).preset)


def _check_memory_options(config: AdapterConfig) -> None:
    chunk = config.vision_chunk_frames
    if chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise AdapterError(f"vision_chunk_frames must be None or a positive int (frames), got {chunk!r}")
        if not config.pooling:
            raise AdapterError(
                "vision_chunk_frames acts on pooled calls only, and pooling is off; set a pooling stage (e.g. the "
                "family's stock-equivalent one) or drop vision_chunk_frames"
            )
    if not isinstance(config.last_logits_only, bool):
        raise AdapterError(f"last_logits_only must be true or false, got {config.last_logits_only!r}")


_ROPE_SCOPES = ("all", "visual")
_YARN_ONLY = ("alpha", "beta", "attention_factor")


def _normalize_rope(rope) -> dict | None:
    """Validate a rope spec and fill defaults; the numbers themselves are checked again in rope.inv_freq_for."""
    if rope is None:
        return None
    if not isinstance(rope, Mapping):
        raise AdapterError(f"rope must be None or a dict, got {type(rope).__name__}")
    unknown = sorted(set(rope) - set(_ROPE_KEYS))
    if unknown:
        raise AdapterError(f"unknown rope key(s) {unknown}; allowed keys are {list(_ROPE_KEYS)}")
    spec = {"type": "yarn", "visual_window": None, "scope": "all", "factor": None, **copy.deepcopy(dict(rope))}
    if spec["type"] not in ROPE_TYPES:
        raise AdapterError(f"unknown rope type {spec['type']!r}; use one of {list(ROPE_TYPES)}")
    if spec["scope"] not in _ROPE_SCOPES:
        raise AdapterError(f"unknown rope scope {spec['scope']!r}; use one of {list(_ROPE_SCOPES)}")
    if spec["type"] == "yarn":
        spec = {"alpha": 1.0, "beta": 32.0, "attention_factor": 1.0, **spec}
    else:
        given = sorted(k for k in _YARN_ONLY if k in spec)
        if given:
            raise AdapterError(f"rope key(s) {given} only apply to type 'yarn', not {spec['type']!r}; remove them")
    axes = spec.setdefault("mrope_axes", ["t"])
    if not isinstance(axes, (list, tuple)) or not axes or any(a not in ("t", "h", "w") for a in axes):
        raise AdapterError(f"rope['mrope_axes'] must be a non-empty list of 't', 'h', 'w', got {axes!r}")
    spec["mrope_axes"] = sorted(set(axes), key="thw".index)
    window = spec["visual_window"]
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise AdapterError(f"rope['visual_window'] must be a positive int (tokens), got {window!r}")
    # Let the pure function refuse bad numbers now (factor < 1, alpha >= beta, ...), not in the middle of a call.
    probe = {k: v for k, v in spec.items() if v is not None and k not in ("scope", "mrope_axes")}
    if spec["visual_window"] is None and spec["type"] in ("yarn", "interpolate"):
        probe["visual_window"] = 1
    inv_freq_for(probe, head_dim=8, base=10000.0, factor=1.0)
    return spec


def known_visual_window(model_type: str | None) -> int | None:
    """The visual training window a family's preset knows for this model type, if any."""
    if model_type not in MODEL_TYPE_TO_PATCH:
        return None
    rope = family_for(model_type).preset.get("rope") or {}
    return rope.get("visual_window")
