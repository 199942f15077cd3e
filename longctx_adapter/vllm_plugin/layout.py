"""Shape, position and RoPE-table math the vLLM plugin needs, on top of the pure ops (no vLLM, no transformers).

- Placeholder counts: `ops.pooling.count_tokens` on the grid the model pools, so the prompt vLLM builds before the
  model runs has exactly as many placeholders as the pooled features.
- M-RoPE ids of pooled Qwen videos: the HF path gives each pooled token the centre of the window it averages, in
  the stock (t, h, w) coordinates (`ops.positions.pooled_coordinates`), fractional where a window has even size.
  vLLM keeps position ids as integers, so the plugin rounds each centre to the nearest integer, ties toward the
  window's start: `ceil(c - 0.5)` (0.5 -> 0, 1.5 -> 1, 2.5 -> 2). Every rounded id stays inside its window and the
  ids stay in order along each axis; unpooled tokens and text keep their stock ids exactly.
- A fixed RoPE table: the frequencies `ops.rope.inv_freq_for` gives the HF path for the same spec and factor, so
  the cos/sin rows equal the HF path's for a sequence with video. On M-RoPE only the sections of the axes in
  `mrope_axes` (default: time) take the extended frequencies, as on the HF path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.pooling import count_tokens
from longctx_adapter.ops.positions import pooled_coordinates
from longctx_adapter.ops.rope import default_inv_freq, inv_freq_for

__all__ = [
    "integer_positions",
    "pooled_mrope_ids",
    "pooled_video_tokens",
    "fixed_rope_frequencies",
    "rope_cache",
]


def pooled_video_tokens(frames: int, height: int, width: int, stages, extra: int = 0) -> int:
    """Placeholders of one pooled video: its pooled tokens plus `extra` (LLaVA-OneVision's one newline)."""
    return count_tokens(frames, height, width, stages) + extra


def integer_positions(coordinates: torch.Tensor) -> torch.Tensor:
    """The plugin's integer rule: nearest integer, ties toward the window start (`ceil(c - 0.5)`), as int64."""
    return torch.ceil(coordinates.to(torch.float64) - 0.5).to(torch.int64)


def pooled_mrope_ids(t_values: Sequence[float] | torch.Tensor, height: int, width: int, stages) -> torch.Tensor:
    """(3, N) integer (t, h, w) ids of a pooled video, relative to the video's first stock id.

    t_values: the stock temporal id of each temporal patch (Qwen2.5-VL: scaled by seconds per grid step).
    """
    coordinates = pooled_coordinates(torch.as_tensor(t_values, dtype=torch.float64), height, width, stages)
    return integer_positions(coordinates.flatten()).T.contiguous()


def _section_axes(mrope_section: Sequence[int]) -> torch.Tensor:
    """Which axis (0 = t, 1 = h, 2 = w) owns each frequency index in a contiguous M-RoPE layout (Qwen2/2.5-VL)."""
    return torch.cat([torch.full((int(n),), i % 3) for i, n in enumerate(mrope_section)])


def fixed_rope_frequencies(
    rope: Mapping,
    head_dim: int,
    base: float,
    partial_rotary_factor: float = 1.0,
    mrope_section: Sequence[int] | None = None,
) -> tuple[torch.Tensor, float]:
    """(inv_freq, attention_scaling) of a rope spec with a fixed factor, as the HF path uses for a video call."""
    if rope.get("factor") is None:
        raise AdapterError("a served rope spec needs a fixed 'factor' (see longctx_adapter/vllm_plugin/settings.py)")
    pure = {k: v for k, v in rope.items() if v is not None and k not in ("scope", "mrope_axes")}
    extended, scaling = inv_freq_for(pure, head_dim, base, float(rope["factor"]), partial_rotary_factor)
    if mrope_section is None:
        return extended, scaling
    if sum(int(n) for n in mrope_section) != extended.numel():
        raise AdapterError(
            f"mrope_section {list(mrope_section)} does not cover the {extended.numel()} rotary frequencies"
        )
    owners = _section_axes(mrope_section)
    chosen = torch.zeros_like(owners, dtype=torch.bool)
    for axis in rope.get("mrope_axes") or ["t"]:
        chosen |= owners == "thw".index(axis)
    stock = default_inv_freq(head_dim, base, partial_rotary_factor)
    return torch.where(chosen, extended, stock), scaling


def rope_cache(inv_freq: torch.Tensor, scaling: float, positions: int, dtype: torch.dtype) -> torch.Tensor:
    """vLLM's `cos_sin_cache` layout, (positions, 2 * len(inv_freq)): cat(cos, sin), each scaled, cast to dtype.

    Each angle is the single float32 product `position * inv_freq`, as HF's rotary (and the adapter's hook) form it.
    """
    angles = torch.arange(positions, dtype=torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]
    return torch.cat((angles.cos() * scaling, angles.sin() * scaling), dim=-1).to(dtype)


def with_pooled_video_runs(updates: Sequence, pooled_run: Callable[[int], list[int]]) -> list:
    """vLLM's prompt updates with every video's placeholder run replaced by `pooled_run(item_idx)` (its pooled
    length); image and other updates stay as vLLM made them."""
    return [dataclasses.replace(u, replacement=pooled_run) if u.modality == "video" else u for u in updates]
