"""Progressive pooling (VCWE; docs/methods.md#progressive): in each group of `group` consecutive frames the first frame keeps a
small stride (sharp), the others a larger one; `strides` may give one stride per position in the group.

The operator is LLaVA-OneVision's own: bilinear interpolation to ceil(H/s) x ceil(W/s) (default), or ceil-mode
average / max pooling. With `"anchor": "score"` (keyframe mode) the sharp frame of each group is the group's
best-scoring frame for the question instead of its first frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.stages.base import (
    Flow,
    FrameSizes,
    GridShape,
    PooledVideo,
    Stage,
    choice,
    cycle_of,
    frame_score,
    int_list,
    positive_int,
    register_stage,
    scorer_name,
    shorthand_ints,
)
from longctx_adapter.ops.stages.windows import check_grid, grid_name, pooled_side

__all__ = ["PROGRESSIVE_MODES", "Progressive", "group_anchors", "progressive_pool"]

PROGRESSIVE_MODES = ("bilinear", "avg", "max")


@register_stage
@dataclass(frozen=True)
class Progressive(Stage):
    group: int = 4
    strides: tuple[int, ...] = (2, 8)
    mode: str = "bilinear"
    anchor: str = "first"
    score: str | None = None
    scorer: str | None = None

    type = "progressive"
    shorthand_help = "progressive:S_H,S_L,K[,MODE]"
    must_be_last = "it makes frames of different sizes that no later stage can pool"

    @classmethod
    def from_dict(cls, data: Mapping) -> Progressive:
        group = positive_int(data.get("group", 4), "progressive 'group'")
        strides = int_list(data.get("strides", [2, 8]), "progressive 'strides'")
        if not strides:
            raise AdapterError("progressive 'strides' is empty; give at least one stride, e.g. [2, 8]")
        if len(strides) > group:
            raise AdapterError(
                f"progressive 'strides' {strides} has {len(strides)} entries but 'group' is {group}; give at most "
                f"one stride per position in a group (len(strides) <= group)"
            )
        mode = choice(data.get("mode", "bilinear"), PROGRESSIVE_MODES, "progressive 'mode'")
        anchor = data.get("anchor", "first")
        if anchor not in ("first", "score"):
            raise AdapterError(f"progressive 'anchor' {anchor!r} is not supported; use 'first' or 'score'")
        if anchor == "first":
            given = sorted(k for k in ("score", "scorer") if data.get(k) is not None)
            if given:
                raise AdapterError(f"progressive key(s) {given} only apply with 'anchor': 'score'; add it or drop them")
            return cls(group, tuple(strides), mode)
        return cls(group, tuple(strides), mode, "score", frame_score(data, cls.type), scorer_name(data, cls.type))

    def to_dict(self) -> dict:
        out = {"type": self.type, "group": self.group, "strides": list(self.strides), "mode": self.mode}
        if self.anchor == "score":  # the stock form has no extra keys, so configs written before anchors stay equal
            out.update(anchor="score", score=self.score, scorer=self.scorer)
        return out

    @classmethod
    def parse_shorthand(cls, args: str) -> dict:
        """S_H,S_L,K: key-frame stride, other frames' stride, group size (`S,S,1`: one stride everywhere)."""
        parts = [p.strip() for p in str(args).replace("/", ",").split(",") if p.strip()]
        mode = parts.pop() if len(parts) == 4 else "bilinear"
        s_h, s_l, group = shorthand_ints(",".join(parts), (3,), cls.shorthand_help)
        strides = [s_h] if s_h == s_l or group == 1 else [s_h, s_l]
        return {"type": cls.type, "group": group, "strides": strides, "mode": mode}

    def shorthand(self) -> str | None:
        if self.anchor != "first" or len(self.strides) > 2:
            return None
        if len(self.strides) == 2 and (self.strides[0] == self.strides[1] or self.group == 1):
            return None  # parses back to one stride
        s_h, s_l = self.strides[0], self.strides[-1]
        mode = "" if self.mode == "bilinear" else f",{self.mode}"
        return f"progressive:{s_h},{s_l},{self.group}{mode}"

    @property
    def guided(self) -> bool:
        return self.anchor == "score"

    def describe(self) -> str:
        return "progressive anchor 'score'" if self.guided else self.type

    # --- shapes ------------------------------------------------------------------------------------------------------
    def _check(self, shape: GridShape) -> None:
        H, W = shape.height, shape.width
        for s in self.strides:
            if s > H or s > W:
                raise AdapterError(
                    f"progressive stride {s} is larger than the {H}x{W} token grid of a frame (video grid "
                    f"{grid_name(shape.frames, H, W)}); use strides <= {min(H, W)}"
                )

    def _stride_runs(self) -> list[tuple[int, int]]:
        """(positions, stride) runs of one group: strides[p] for p < last, strides[-1] for the rest."""
        last = len(self.strides) - 1
        return [(1, s) for s in self.strides[:last]] + [(self.group - last, self.strides[-1])]

    def output_shape(self, shape: GridShape) -> FrameSizes:
        self._check(shape)
        H, W = shape.height, shape.width
        runs = [(n, (pooled_side(H, s), pooled_side(W, s))) for n, s in self._stride_runs()]
        return FrameSizes(shape.frames, cycle_of(runs))

    def frame_strides(self, shape: GridShape, anchors: Sequence[int] | None = None) -> list[int]:
        """The stride of every frame: position p in its group uses strides[min(p, last)].

        anchors (keyframe mode): the frame index of each group's anchor, which takes strides[0]; the group's other
        frames take strides[1], strides[2], ... in temporal order (the last stride repeating).
        """
        self._check(shape)
        T, group, strides, last = shape.frames, self.group, self.strides, len(self.strides) - 1
        if anchors is None:
            return [strides[min(t % group, last)] for t in range(T)]
        schedule = []
        for number, start in enumerate(range(0, T, group)):
            members = range(start, min(start + group, T))
            if anchors[number] not in members:
                raise AdapterError(f"anchor frame {anchors[number]} is not in group {number} (frames {list(members)})")
            rank = 1
            for t in members:
                if t == anchors[number]:
                    schedule.append(strides[0])
                else:
                    schedule.append(strides[min(rank, last)])
                    rank += 1
        return schedule

    def scratch_tokens(self, shape: GridShape) -> int:
        """The largest same-stride gather (index_select copy) of the op, in tokens; stride 1 frames are not copied."""
        full, rest = divmod(shape.frames, self.group)
        frames: dict[int, int] = {}
        position = 0
        for n, s in self._stride_runs():
            count = n * full + max(0, min(rest, position + n) - position)
            position += n
            if s != 1:
                frames[s] = frames.get(s, 0) + count
        return max(frames.values(), default=0) * shape.height * shape.width

    # --- the op ------------------------------------------------------------------------------------------------------
    def apply(self, flow: Flow) -> Flow:
        anchors = None
        if self.anchor == "score" and flow.guide is not None:
            anchors = group_anchors(flow.guide.frame_scores(self.score), flow.grid.shape[0], self.group)
        pooled = self.pool(flow.grid, anchors)
        return flow.replace(
            grid=None, frames=pooled.frames, guide=None, anchors=tuple(anchors) if anchors else flow.anchors
        )

    def pool(self, grid: torch.Tensor, anchors=None) -> PooledVideo:
        """Frames sharing a stride are gathered and pooled in one batched call."""
        schedule = self.frame_strides(check_grid(grid), anchors)
        frames: list[torch.Tensor | None] = [None] * len(schedule)
        for stride in sorted(set(schedule)):
            picked = [t for t, s in enumerate(schedule) if s == stride]
            if stride == 1:
                pooled = grid.unbind(0)
                pooled = [pooled[t] for t in picked]
            else:
                index = torch.tensor(picked, device=grid.device)
                pooled = _pool_frames(grid.index_select(0, index), stride, self.mode).unbind(0)
            for t, frame in zip(picked, pooled):
                frames[t] = frame
        return PooledVideo(tuple(frames))

    def for_coordinates(self) -> Progressive:
        """Max pooling picks a feature, not a place: its tokens sit at the centre of their window, like avg."""
        if self.mode != "max":
            return self
        return Progressive(self.group, self.strides, "avg", self.anchor, self.score, self.scorer)

    def chunk_frames(self, frames: int) -> tuple[int | None, str]:
        if frames % self.group:
            return None, f"{frames} frames reach the progressive stage per chunk, not a multiple of its group {self.group}"
        return frames, ""


def _pool_frames(frames: torch.Tensor, stride: int, mode: str) -> torch.Tensor:
    """Pool (N, H, W, D) frames at one stride, returning (N, ceil(H/s), ceil(W/s), D) contiguous.

    The (N, D, H, W) input is a channels-last view rather than LLaVA-OneVision's `.contiguous()` copy: torch's
    bilinear kernels evaluate the same expression in both layouts, so the bits match (tested) and a copy is saved.
    """
    x = frames.permute(0, 3, 1, 2)
    if mode == "bilinear":
        size = (pooled_side(x.shape[2], stride), pooled_side(x.shape[3], stride))
        pooled = F.interpolate(x, size=size, mode="bilinear")
    elif mode == "avg":
        pooled = F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False)
    else:
        pooled = F.max_pool2d(x, stride, stride, ceil_mode=True)
    return pooled.permute(0, 2, 3, 1).contiguous()


def group_anchors(scores: torch.Tensor, frames: int, group: int) -> list[int]:
    """Index of the best-scoring frame of each group of `group` consecutive frames (ties: the earlier one)."""
    scores = scores.cpu()
    anchors = []
    for start in range(0, frames, group):
        part = scores[start : start + group]
        anchors.append(start + int(torch.sort(part, descending=True, stable=True).indices[0]))
    return anchors


def progressive_pool(
    grid: torch.Tensor, group: int = 4, strides=(2, 8), mode: str = "bilinear", anchors=None
) -> PooledVideo:
    """VCWE's progressive pooling; anchors: None (each group's first frame is the sharp one) or one frame index per
    group (keyframe mode)."""
    return Progressive.from_dict({"group": group, "strides": strides, "mode": mode}).pool(grid, anchors)
