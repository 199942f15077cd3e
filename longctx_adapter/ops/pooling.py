"""Parameter-free pooling of one video's visual tokens (docs/methods.md): the ops-level entry points.

Every stage takes one video grid of shape (T, H, W, D): T frames of H x W tokens with D features, as they come out
of the projector. Nothing here knows about models, so the same code serves every architecture, and the shape
arithmetic (`pooled_shape`, `pooled_frame_sizes`, `count_tokens`) sizes placeholder runs before any tensor exists.
Each stage `type` is one class in longctx_adapter/ops/stages/ (validation, shapes, the op); this module runs a list
of them and holds no per-type code.

Tail rule shared by every windowed average: a window that runs past the end of an axis is averaged over the
elements that exist, so no frame or token is ever dropped and no zero padding dilutes a mean.
Features keep their dtype and device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.guided import GuidedInfo, check_guide
from longctx_adapter.ops.stages import STAGES, Flow, FrameSizes, GridShape, PooledVideo, parse_stages, stage_from_dict
from longctx_adapter.ops.stages.adaptive3d import adaptive_pool3d
from longctx_adapter.ops.stages.conv3d import conv3d_pool
from longctx_adapter.ops.stages.progressive import PROGRESSIVE_MODES, group_anchors, progressive_pool
from longctx_adapter.ops.stages.prompt_guided import prompt_guided_pool, weighted_window_pool
from longctx_adapter.ops.stages.select_frames import segment_bounds, select_frame_indices
from longctx_adapter.ops.stages.temporal import temporal_pool
from longctx_adapter.ops.stages.windows import check_grid, check_grid_shape, solve_window

__all__ = [
    "PROGRESSIVE_MODES",
    "STAGE_TYPES",
    "PooledVideo",
    "adaptive_pool3d",
    "check_frame_grid",
    "chunk_plan",
    "conv3d_pool",
    "count_tokens",
    "fewest_frames",
    "group_anchors",
    "is_data_dependent",
    "is_guided",
    "normalize_pooling",
    "normalize_stage",
    "pool_video",
    "pooled_frame_sizes",
    "pooled_shape",
    "progressive_pool",
    "prompt_guided_pool",
    "segment_bounds",
    "select_frame_indices",
    "solve_window",
    "temporal_pool",
    "weighted_window_pool",
]

#: the stage types shipped with the library (the live registry is longctx_adapter.ops.stages.STAGES)
STAGE_TYPES = tuple(STAGES)


def normalize_stage(stage: Mapping) -> dict:
    """Validate one stage dict and fill its defaults, so the config on disk stays short and typos fail loudly."""
    return stage_from_dict(stage).to_dict()


def normalize_pooling(pooling) -> tuple[dict, ...]:
    """Accept None, one stage or a list of stages; a stage that must be last (progressive) has to be."""
    return tuple(stage.to_dict() for stage in parse_stages(pooling))


def is_guided(stage) -> bool:
    """True for stages whose result depends on the question (they need a scorer)."""
    return stage_from_dict(stage).guided


def is_data_dependent(stage) -> bool:
    """True for stages whose kept tokens depend on the features (token counts without tensors are upper bounds)."""
    return stage_from_dict(stage).data_dependent


# ---------------------------------------------------------------------------------------------------------------------
# Shapes without tensors.


def pooled_shape(T, H, W, stages) -> GridShape | FrameSizes:
    """The shape after pooling, arithmetically (no per-frame lists): sizes and refusals match `pool_video`."""
    shape = check_grid_shape(T, H, W)
    for stage in parse_stages(stages):
        out = stage.output_shape(shape)
        shape = out if shape.exact else _bound(out)
    return shape


def _bound(shape):
    return dataclasses.replace(shape, exact=False)


def pooled_frame_sizes(T, H, W, stages) -> list[tuple[int, int]]:
    """Per-frame (h, w) after pooling, without tensors: sizes the placeholder run before features exist."""
    return pooled_shape(T, H, W, stages).frame_sizes()


def count_tokens(T, H, W, stages) -> int:
    """Tokens after pooling (an upper bound when a stage's count depends on the data)."""
    return pooled_shape(T, H, W, stages).num_tokens


def fewest_frames(stages) -> int:
    """The fewest input frames every stage accepts (each stage in turn gets what the next one needs)."""
    frames = 1
    for stage in reversed(parse_stages(stages)):
        frames = stage.min_frames(frames)
    return frames


def check_frame_grid(height: int, width: int, stages) -> None:
    """Refuse spatial windows a height x width frame grid cannot hold, at the fewest frames the stages accept.

    Arithmetic only: the cost does not grow with the numbers in the stages."""
    stages = parse_stages(stages)
    if stages:
        pooled_shape(fewest_frames(stages), height, width, stages)


def chunk_plan(stages, chunk: int) -> tuple[bool, int, str]:
    """(frame_local, temporal_reduction, reason): can `stages` be applied chunk by chunk at `chunk` grid frames?"""
    size = chunk
    for stage in parse_stages(stages):
        if stage.guided:
            return False, chunk // size, f"{stage.describe()} depends on question scores over the whole video"
        out, reason = stage.chunk_frames(size)
        if out is None:
            return False, chunk // size, reason
        size = out
    return True, chunk // size, ""


# ---------------------------------------------------------------------------------------------------------------------
# Running the stages.


def pool_video(grid: torch.Tensor, stages, guide=None, *, coordinates: bool = False, trace=None) -> PooledVideo:
    """Apply the stages in order; no stages gives every frame unchanged.

    guide: a `guided.Guide` (question relevance of every token of `grid`) for question-guided stages; without
    one they fall back to their uniform form. coordinates: `grid` holds (t, row, column) coordinates
    (positions.pooled_coordinates), so select_frames with positions "repacked" renumbers t. trace: the
    `PooledVideo.trace` of the features' pass, so data-dependent stages replay their decisions on this grid.
    """
    check_grid(grid)
    stages = parse_stages(stages)
    check_guide(guide, grid)
    flow = Flow(grid=grid, guide=guide, origin=torch.arange(grid.shape[0]), coordinates=coordinates, replay=trace)
    decisions = []
    for step, stage in enumerate(stages):
        flow = stage.apply(flow.replace(step=step, decision=None))
        decisions.append(flow.decision)
    frames = flow.frames if flow.grid is None else tuple(flow.grid.unbind(0))
    if not any(f.shape[0] * f.shape[1] for f in frames):
        names = " -> ".join(stage.describe() for stage in stages)
        raise AdapterError(
            f"pooling ({names}) left the {tuple(grid.shape[:3])} video with no token at all, and a video must keep "
            "at least one; loosen the stage that decides from the data (a lower threshold, a larger budget)"
        )
    info = None
    if guide is not None or any(stage.guided for stage in stages):
        info = GuidedInfo(guide, flow.kept_frames, flow.anchors)
    return PooledVideo(frames, guided=info, trace=tuple(decisions))
