"""Adapter configs from the command line: one-word shorthands, JSON, and ablation grids.

Pooling values (``--grid pooling=...``, or terms of ``--config``):

- ``none``: pooling off;
- ``progressive:S_H,S_L,K``: progressive pooling, key-frame stride S_H, other frames S_L, groups of K frames
  (``progressive:S,S,1``: one stride everywhere); bilinear like LLaVA-OneVision's own 2x;
- ``temporal:K,S``, ``adaptive3d:T,H,W``, ``conv3d:kt,kh,kw`` (stride = kernel);
- a JSON stage or list of stages.

RoPE values (``--grid rope=...``):

- ``none``: stock RoPE;
- ``TYPE-SCOPE`` with TYPE ``yarn`` | ``linear`` | ``ntk`` | ``pi`` (position interpolation, the library's
  ``interpolate``) and SCOPE ``all`` | ``visual`` (``yarn-all``, ``yarn-visual``, ...); a bare TYPE means ``-all``;
  ``@N`` at the end sets the visual window (``yarn-visual@6272``), else it comes from ``--visual-window`` or the
  model's preset (an AdapterError names the fix when neither knows it);
- a JSON rope dict.

A whole config (``--config`` of ``run``): ``preset`` (the family preset), ``none`` (stock model), a JSON
AdapterConfig dict or pooling stage, or terms joined with ``+`` (``progressive:2,8,4+yarn-visual``). Inside
lmms-eval model args, where commas separate arguments, ``/`` may stand for ``,`` (``progressive:2/8/4``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence

from longctx_adapter.config import AdapterConfig, known_visual_window
from longctx_adapter.errors import AdapterError

__all__ = [
    "GridCell",
    "ROPE_SHORTHANDS",
    "config_label",
    "expand_grid",
    "parse_config_text",
    "parse_grid_axis",
    "parse_pooling",
    "parse_rope",
    "resolve_window",
    "split_values",
]

_ROPE_TYPES = {"yarn": "yarn", "linear": "linear", "ntk": "ntk", "pi": "interpolate", "interpolate": "interpolate"}
ROPE_SHORTHANDS = tuple(f"{t}-{s}" for t in ("yarn", "linear", "ntk", "pi") for s in ("all", "visual"))
AXES = ("pooling", "rope")


def _ints(text: str, count: int | None, what: str) -> list[int]:
    parts = [p for p in text.replace("/", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise AdapterError(f"{what}: expected integers separated by ',', got {text!r}") from None
    if count is not None and len(values) != count:
        raise AdapterError(f"{what}: expected {count} integers, got {text!r}")
    return values


def _json(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{what} {text!r} is not valid JSON: {exc}") from exc


def parse_pooling(value: str):
    """A pooling shorthand -> a list of stage dicts, or None for ``none``."""
    text = str(value).strip()
    if text.lower() in ("none", "off", "null"):
        return None
    if text[:1] in "{[":
        data = _json(text, "pooling")
        return [data] if isinstance(data, Mapping) else data
    name, _, args = text.partition(":")
    name = name.lower()
    if name == "progressive":
        s_h, s_l, group = _ints(args, 3, "progressive:S_H,S_L,K")
        strides = [s_h] if s_h == s_l or group == 1 else [s_h, s_l]
        return [{"type": "progressive", "group": group, "strides": strides, "mode": "bilinear"}]
    if name == "temporal":
        kernel, stride = _ints(args, 2, "temporal:K,S")
        return [{"type": "temporal", "kernel": kernel, "stride": stride}]
    if name == "adaptive3d":
        return [{"type": "adaptive3d", "output": _ints(args, 3, "adaptive3d:T,H,W")}]
    if name == "conv3d":
        kernel = _ints(args, 3, "conv3d:kt,kh,kw")
        return [{"type": "conv3d", "kernel": kernel, "stride": kernel}]
    raise AdapterError(
        f"unknown pooling value {text!r}; use none, progressive:S_H,S_L,K, temporal:K,S, adaptive3d:T,H,W, "
        "conv3d:kt,kh,kw or JSON"
    )


def parse_rope(value: str, visual_window: int | None = None) -> dict | None:
    """A RoPE shorthand -> a rope dict (window filled from ``@N`` or ``visual_window`` when given), or None."""
    text = str(value).strip()
    if text.lower() in ("none", "off", "null", "stock"):
        return None
    if text.startswith("{"):
        data = _json(text, "rope")
        if visual_window is not None and data.get("visual_window") is None:
            data = {**data, "visual_window": int(visual_window)}
        return data
    body, _, window = text.partition("@")
    if window:
        visual_window = _ints(window, 1, "rope @WINDOW")[0]
    if ":" in body:  # profiling-style yarn:WINDOW[:scope]
        kind, _, rest = body.partition(":")
        win, _, scope = rest.partition(":")
        if win:
            visual_window = _ints(win, 1, f"{kind}:WINDOW")[0]
        body = f"{kind}-{scope or 'all'}"
    kind, _, scope = body.lower().partition("-")
    scope = scope or "all"
    if kind not in _ROPE_TYPES or scope not in ("all", "visual"):
        raise AdapterError(
            f"unknown rope value {text!r}; use none, {', '.join(ROPE_SHORTHANDS)} (optionally @WINDOW) or JSON"
        )
    rope = {"type": _ROPE_TYPES[kind], "scope": scope}
    if visual_window is not None:
        rope["visual_window"] = int(visual_window)
    return rope


def resolve_window(config: AdapterConfig, model_type: str | None, visual_window: int | None = None) -> AdapterConfig:
    """Fill the rope window from ``visual_window`` or the model's preset; refuse now (not mid-run) when unknown."""
    rope = config.rope
    if rope is None or rope.get("visual_window") is not None:
        return config
    window = visual_window if visual_window is not None else known_visual_window(model_type or "")
    if window is None:
        raise AdapterError(
            f"rope {dict(rope)['type']}-{rope['scope']} needs the model's visual training window and the "
            f"{model_type!r} preset does not know it; pass --visual-window N (tokens: frames seen in training x "
            "tokens per frame) or write the value as yarn-visual@N"
        )
    return config.replace(rope={**dict(rope), "visual_window": int(window)})


def parse_config_text(
    text: str | None, model_type: str | None = None, visual_window: int | None = None
) -> AdapterConfig | None:
    """``--config``: None/``preset`` -> the family preset, ``none`` -> None (stock), JSON, or ``+``-joined terms."""
    if text is None or str(text).strip().lower() == "preset":
        if model_type is None:
            raise AdapterError("'preset' needs the model type")
        config = AdapterConfig.preset(model_type)
        return resolve_window(config, model_type, visual_window) if config.rope else config
    text = str(text).strip()
    if text.lower() in ("none", "stock"):
        return None
    if text.startswith("{") or text.startswith("["):
        data = _json(text, "--config")
        if isinstance(data, list) or (isinstance(data, Mapping) and "type" in data):
            config = AdapterConfig(pooling=data)
        else:
            config = AdapterConfig.from_dict(data)
        return resolve_window(config, model_type, visual_window)
    pooling, rope = None, None
    for term in text.split("+"):
        term = term.strip()
        key, sep, value = term.partition("=")
        if sep and key in AXES:
            axis, term = key, value
        else:
            head = term.split(":")[0].split("-")[0].split("@")[0].lower()
            axis = "rope" if head in _ROPE_TYPES else "pooling"
        if axis == "rope":
            rope = parse_rope(term, visual_window)
        else:
            stages = parse_pooling(term)
            pooling = (pooling or []) + (stages or [])
    if pooling is None and rope is None:
        return None
    return resolve_window(AdapterConfig(pooling=pooling or None, rope=rope), model_type, visual_window)


def split_values(text: str) -> list[str]:
    """``none,progressive:2,8,4,yarn-all`` -> ``['none', 'progressive:2,8,4', 'yarn-all']``: a bare integer
    continues the value before it; JSON values (``{...}``) are kept whole."""
    values: list[str] = []
    depth, current = 0, ""
    for char in text:
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    out: list[str] = []
    for value in (v.strip() for v in values):
        if not value:
            continue
        if out and value.lstrip("-").isdigit():
            out[-1] = f"{out[-1]},{value}"
        else:
            out.append(value)
    return out


def parse_grid_axis(text: str) -> tuple[str, list[str]]:
    """``pooling=none,progressive:2,8,4`` -> ``('pooling', ['none', 'progressive:2,8,4'])``."""
    axis, sep, values = str(text).partition("=")
    axis = axis.strip().lower()
    if not sep or axis not in AXES:
        raise AdapterError(f"--grid {text!r}: expected AXIS=V1,V2,... with AXIS one of {list(AXES)}")
    parsed = split_values(values)
    if not parsed:
        raise AdapterError(f"--grid {text!r} lists no values")
    return axis, parsed


class GridCell:
    """One adapter configuration of an ablation grid: a label (the shorthands) and the resolved config."""

    def __init__(self, values: Mapping[str, str], config: AdapterConfig | None):
        self.values = dict(values)
        self.config = config

    @property
    def label(self) -> str:
        return " ".join(f"{axis}={self.values[axis]}" for axis in AXES if axis in self.values)

    @property
    def config_dict(self) -> dict | None:
        return None if self.config is None else self.config.to_dict()

    def __repr__(self) -> str:
        return f"GridCell({self.label!r})"


def expand_grid(
    axes: Sequence[str] | Mapping[str, Sequence[str]], model_type: str | None = None, visual_window: int | None = None
) -> list[GridCell]:
    """Every combination of the axes' values, configs validated and windows resolved up front.

    axes: ``--grid`` strings (``["pooling=none,progressive:2,8,4", "rope=none,yarn-all"]``) or a mapping
    axis -> values. A cell with pooling and rope both off has config None (the stock model, no adapter).
    """
    if isinstance(axes, Mapping):
        grid = {k: [str(v) for v in vals] for k, vals in axes.items()}
    else:
        grid = {}
        for text in axes:
            axis, values = parse_grid_axis(text)
            if axis in grid:
                raise AdapterError(f"--grid names axis {axis!r} twice")
            grid[axis] = values
    for axis in grid:
        if axis not in AXES:
            raise AdapterError(f"unknown grid axis {axis!r}; use {list(AXES)}")
    if not grid:
        grid = {"pooling": ["none"]}
    names = [a for a in AXES if a in grid]
    cells = []
    for combo in itertools.product(*(grid[a] for a in names)):
        values = dict(zip(names, combo))
        pooling = parse_pooling(values["pooling"]) if "pooling" in values else None
        rope = parse_rope(values["rope"], visual_window) if "rope" in values else None
        if pooling is None and rope is None:
            cells.append(GridCell(values, None))
            continue
        config = resolve_window(AdapterConfig(pooling=pooling, rope=rope), model_type, visual_window)
        cells.append(GridCell(values, config))
    labels = [c.label for c in cells]
    if len(set(labels)) != len(labels):
        raise AdapterError(f"--grid gives duplicate cells: {labels}")
    return cells


def config_label(config: AdapterConfig | None) -> str:
    return "none" if config is None else config.to_json(sort_keys=True)
