"""Question-aware frame selection (training-free VLAP; docs/methods.md#frame-selection): keep the best frames of each segment.

Frame scores are the mean or max of the question weights `w` over each frame's tokens ("mean" | "max") or the
scorer's whole-frame embedding logit ("global"); the video is cut into `segments` equal parts
(`[floor(i*T/M), floor((i+1)*T/M))`), the top `per_segment` frames of each are kept in temporal order (ties: the
earlier frame). Without a question it keeps `per_segment` evenly spaced frames per segment (frame
`start + floor((j + 1/2) * len / k)`). Kept frames keep their own t on coordinate grids ("original") or take the t
of the first frames in order ("repacked").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.stages.base import (
    Flow,
    GridShape,
    Stage,
    choice,
    frame_score,
    positive_int,
    register_stage,
    scorer_name,
    shorthand_ints,
)
from longctx_adapter.ops.stages.windows import grid_name

__all__ = ["SelectFrames", "segment_bounds", "select_frame_indices"]


@register_stage
@dataclass(frozen=True)
class SelectFrames(Stage):
    """Keeps the `per_segment` best-scoring frames of each of `segments` equal parts, in temporal order."""

    segments: int
    per_segment: int = 1
    score: str = "mean"
    positions: str = "original"
    scorer: str | None = None

    type = "select_frames"
    shorthand_help = "select_frames:SEGMENTS[,PER_SEGMENT]"

    @classmethod
    def from_dict(cls, data: Mapping) -> SelectFrames:
        if data.get("segments") is None:
            raise AdapterError(
                "select_frames needs 'segments' (how many equal parts the video is split into), e.g. "
                "{'type': 'select_frames', 'segments': 4, 'per_segment': 1}"
            )
        return cls(
            segments=positive_int(data["segments"], "select_frames 'segments'"),
            per_segment=positive_int(data.get("per_segment", 1), "select_frames 'per_segment'"),
            score=frame_score(data, cls.type),
            positions=choice(data.get("positions", "original"), ("original", "repacked"), "select_frames 'positions'"),
            scorer=scorer_name(data, cls.type),
        )

    @classmethod
    def parse_shorthand(cls, args: str) -> dict:
        values = shorthand_ints(args, (1, 2), cls.shorthand_help)
        return {"type": cls.type, "segments": values[0], "per_segment": values[1] if len(values) > 1 else 1}

    def shorthand(self) -> str | None:
        if (self.score, self.positions, self.scorer) != ("mean", "original", None):
            return None
        return f"select_frames:{self.segments},{self.per_segment}"

    @property
    def guided(self) -> bool:
        return True

    def _check(self, shape: GridShape) -> None:
        T, name = shape.frames, grid_name(shape.frames, shape.height, shape.width)
        if self.segments > T:
            raise AdapterError(
                f"select_frames 'segments' {self.segments} is larger than the {T} frames of the {name}; use "
                f"segments <= {T} (or sample more frames)"
            )
        shortest = T // self.segments
        if self.per_segment > shortest:
            raise AdapterError(
                f"select_frames 'per_segment' {self.per_segment} is larger than a segment: {T} frames in "
                f"{self.segments} segments gives segments of only {shortest} frame(s) (video grid {name}); use "
                f"per_segment <= {shortest}, fewer segments, or more frames"
            )

    def output_shape(self, shape: GridShape) -> GridShape:
        self._check(shape)
        return GridShape(self.segments * self.per_segment, shape.height, shape.width)

    def min_frames(self, frames_out: int) -> int:
        return self.segments * self.per_segment

    def apply(self, flow: Flow) -> Flow:
        grid, guide = flow.grid, flow.guide
        self._check(flow.shape)
        scores = guide.frame_scores(self.score) if guide is not None else None
        index = select_frame_indices(scores, grid.shape[0], self.segments, self.per_segment)
        selected = grid.index_select(0, index.to(grid.device))
        if flow.coordinates and self.positions == "repacked":
            selected = selected.clone()
            selected[..., 0] = grid[: len(index), :, :, 0]
        origin = flow.origin
        kept = tuple(int(origin[i]) for i in index) if origin is not None else None
        return flow.replace(
            grid=selected,
            guide=guide.select(index) if guide is not None else None,
            origin=origin.index_select(0, index) if origin is not None else None,
            kept_frames=kept,
        )


def segment_bounds(frames: int, segments: int) -> list[tuple[int, int]]:
    """[start, stop) of `segments` near-equal consecutive parts of `frames` frames."""
    return [(i * frames // segments, (i + 1) * frames // segments) for i in range(segments)]


def select_frame_indices(scores: torch.Tensor | None, frames: int, segments: int, per_segment: int) -> torch.Tensor:
    """Sorted indices of the top `per_segment` frames of each segment (evenly spaced ones without scores)."""
    if segments > frames or per_segment > frames // segments:
        raise AdapterError(
            f"select_frames 'per_segment' {per_segment} is larger than a segment: {frames} frames in {segments} "
            f"segments gives segments of only {frames // segments} frame(s); use per_segment <= "
            f"{max(1, frames // segments)}, fewer segments, or more frames"
        )
    picked = []
    for start, stop in segment_bounds(frames, segments):
        length = stop - start
        if scores is None:
            picked += [start + (2 * j + 1) * length // (2 * per_segment) for j in range(per_segment)]
            continue
        order = torch.sort(scores[start:stop].cpu(), descending=True, stable=True).indices[:per_segment]
        picked += sorted(start + int(i) for i in order)
    return torch.tensor(picked, dtype=torch.long)
