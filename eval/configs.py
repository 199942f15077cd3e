"""Ablation grids of adapter configs: every combination of a few config values, validated up front.

The values use the one config grammar of longctx_adapter.config_text (documented in docs/configuration.md):
``--grid pooling=none,progressive:2,8,4`` varies the pooling stages, ``--grid rope=none,yarn-all,yarn-visual`` the
RoPE extension, over each base config (``--config``, else the model folder's saved ``longctx_adapter.json``, else
the stock model).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from longctx_adapter.config import AdapterConfig
from longctx_adapter.config_text import (
    GRID_AXES,
    ROPE_SHORTHANDS,
    parse_axis_value,
    parse_config,
    parse_grid_axis,
    parse_pooling,
    parse_rope,
    resolve_window,
    split_values,
)
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

AXES = GRID_AXES


def parse_config_text(
    text: str | None, model_type: str | None = None, visual_window: int | None = None, folder=None
) -> AdapterConfig | None:
    """``--config`` of a command (config_text.parse_config): None -> the folder's saved config, else the preset."""
    return parse_config(text, model_type, folder=folder, visual_window=visual_window)


class GridCell:
    """One adapter configuration of an ablation grid: a label (the base and the axis values) and the config."""

    def __init__(self, values: Mapping[str, str], config: AdapterConfig | None, base: str | None = None):
        self.values = dict(values)
        self.config = config
        self.base = base

    @property
    def label(self) -> str:
        parts = [f"config={self.base}"] if self.base is not None else []
        return " ".join(parts + [f"{axis}={self.values[axis]}" for axis in AXES if axis in self.values])

    @property
    def config_dict(self) -> dict | None:
        return None if self.config is None else self.config.to_dict()

    def __repr__(self) -> str:
        return f"GridCell({self.label!r})"


def expand_grid(
    axes: Sequence[str] | Mapping[str, Sequence[str]],
    model_type: str | None = None,
    visual_window: int | None = None,
    bases: Sequence[tuple[str, AdapterConfig | None]] | None = None,
) -> list[GridCell]:
    """Every combination of the bases and the axes' values, configs validated and windows resolved up front.

    axes: ``--grid`` strings (``["pooling=none,progressive:2,8,4", "rope=none,yarn-all"]``) or a mapping
    axis -> values. bases: (label, config) pairs the axes modify (each axis replaces that field); None means one
    unlabelled stock base. A cell whose config does nothing (no pooling, no rope, defaults otherwise) has config
    None (the stock model, no adapter).
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
    if bases is None:
        bases = [(None, None)]
        if not grid:
            grid = {"pooling": ["none"]}
    names = [a for a in AXES if a in grid]
    cells = []
    for (base_label, base), combo in itertools.product(bases, itertools.product(*(grid[a] for a in names))):
        values = dict(zip(names, combo))
        fields = {axis: parse_axis_value(axis, value, visual_window) for axis, value in values.items()}
        config = (base or AdapterConfig()).replace(**fields) if fields else base
        if config == AdapterConfig():
            config = None
        cells.append(GridCell(values, resolve_window(config, model_type, visual_window), base_label))
    labels = [c.label for c in cells]
    if len(set(labels)) != len(labels):
        raise AdapterError(f"--grid gives duplicate cells: {labels}")
    return cells


def config_label(config: AdapterConfig | None) -> str:
    return "none" if config is None else config.to_json(sort_keys=True)


def check_cells(cells: Sequence[GridCell], model_config, frames: Sequence[int] = ()) -> None:
    """Refuse, before anything runs, a cell whose config this model cannot take: a window its frame grid cannot
    hold (at any of ``frames``), or RoPE settings its decoder's rotary cannot take. Arithmetic on the config only
    (no weights): the same checks ``apply_adapter`` and pooling make, so a grid that passes here does not end in a
    results file full of errors."""
    from longctx_adapter.hooks.rotary import RopeBase
    from longctx_adapter.ops.pooling import check_frame_grid, pooled_shape
    from longctx_adapter.registry import family_for

    family = family_for(model_config.model_type)
    for cell in cells:
        config = cell.config
        if config is None:
            continue
        try:
            if config.pooling:
                height, width = family.frame_grid(model_config)
                check_frame_grid(height, width, config.pooling)
                for n in frames:
                    if family.video_grid is not None:
                        grid = family.video_grid(model_config, int(n), family.frame_size)
                    else:
                        grid = (int(n), height, width)
                    pooled_shape(*grid, config.pooling)
            if config.rope is not None:
                RopeBase.from_text_config(model_config.text_config)
        except (AdapterError, ValueError) as exc:
            where = f"grid cell {cell.label!r}" if cell.label else "the config"
            raise AdapterError(
                f"{where} cannot run on this {model_config.model_type} model: {exc}; change or drop that value "
                "(nothing was run)"
            ) from None
