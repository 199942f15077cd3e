"""Position maps for pooled layouts: where each pooled token sits in the unpooled video's coordinates.

Pure tensor code (no transformers import). Every pooling op is a weighted average over a window (bilinear
interpolation included), so pooling a grid of coordinates with the *same* stages yields, for each pooled token,
the centre of the window it averages, in the original grid's coordinates. Max pooling picks a feature, not a
place, so its coordinates use the average of its window. Unpooled tokens keep their integer coordinates exactly.
"""

from __future__ import annotations

import torch

from longctx_adapter.ops.pooling import PooledVideo, pool_video
from longctx_adapter.ops.stages import parse_stages


def _coordinate_stages(stages) -> list:
    """Each stage as it runs on coordinates (`Stage.for_coordinates`: e.g. max pooling places tokens like avg)."""
    return [stage.for_coordinates() for stage in parse_stages(stages)]


def pooled_coordinates(
    t_values: torch.Tensor, height: int, width: int, stages, guide=None, trace=None
) -> PooledVideo:
    """(h, w, 3) float64 frames of (t, row, column) coordinates after pooling.

    t_values: the temporal coordinate of each input frame (e.g. Qwen2.5-VL's `second_per_grid_ts`-scaled ids);
    rows and columns are 0..H-1, 0..W-1. guide: the `guided.Guide` the features were pooled with (question-guided
    stages), so frame selection, keyframes and prompt-guided weights make the same decisions on the coordinates.
    trace: the features' `PooledVideo.trace`, replayed by stages whose decisions depend on the data.
    """
    t_values = torch.as_tensor(t_values, dtype=torch.float64)
    t, h, w = torch.meshgrid(
        t_values,
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    grid = torch.stack([t, h, w], dim=-1)
    return pool_video(grid, _coordinate_stages(stages), guide, coordinates=True, trace=trace)


def mrope_positions(
    start: float, t_values: torch.Tensor, height: int, width: int, stages, guide=None, trace=None
) -> torch.Tensor:
    """(3, N) M-RoPE (t, h, w) ids of a pooled video whose stock ids are `start + (t_values[f], i, j)`."""
    return pooled_coordinates(t_values, height, width, stages, guide, trace).flatten().T + start


def frame_sources(
    frames: int, height: int, width: int, stages, guide=None, chunk: int = 256, trace=None
) -> list[tuple[int, ...]]:
    """For each pooled frame, the input frames it draws on (non-zero weight in any of its tokens), ascending.

    Pools one-hot frame indicators with the same stages (and guide) as the features, so every stage type, frame
    selection included, answers alike. Channels go `chunk` frames at a time to bound memory at long videos.
    A merge stage's output frame draws on its representatives' frames only (`Stage.for_frames`): tokens merged in
    from other frames do not move it. trace: the features' `PooledVideo.trace` (data-dependent stages replay it).
    """
    stages = [stage.for_frames() for stage in parse_stages(stages)]
    parts = []
    for lo in range(0, frames, chunk):
        hi = min(frames, lo + chunk)
        indicator = torch.zeros(frames, 1, 1, hi - lo)
        indicator[torch.arange(lo, hi), 0, 0, torch.arange(hi - lo)] = 1.0
        pooled = pool_video(indicator.expand(frames, height, width, hi - lo), stages, guide, trace=trace)
        parts.append(torch.stack([f.reshape(-1, hi - lo).ne(0).any(0) for f in pooled.frames]))
    return [tuple(row.nonzero().squeeze(1).tolist()) for row in torch.cat(parts, dim=1)]
