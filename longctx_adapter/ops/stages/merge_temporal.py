"""Temporal token merging (FrameFusion / HoliTom style): a token that barely changed since the previous frame at the
same place joins the token it continues.

For every place p of the H x W grid and every frame t >= 1, `s[t, p]` is the cosine similarity of the token at
(t, p) to the token at (t - 1, p), both as they came in. A token is *merged* when `s > threshold` and/or when it is
among the `N - budget` most similar tokens (ties: the earlier token in frame-major order), so with a budget the
stage keeps exactly `budget` tokens when only the budget is given and at most `budget` with a threshold too.
Merged tokens form runs along time at one place; a run is represented by its first token (the earliest frame),
which keeps its frame and place, and its output is the exact mean of the whole run. Frame 0 is never merged, so
at least H x W tokens stay (a budget below that is refused). Threshold above 1 and no budget: nothing merges, and
the tokens come out bit for bit.

Followed: FrameFusion (Fu et al. 2024, thu-nics/FrameFusion `main.py`): similarity of each token to the same patch of
the previous frame, runs of similar tokens averaged into the run's first token, its position kept, a top-k cap on
how many merge. HoliTom (Shao et al. 2025, cokeshao/HoliTom): a place whose consecutive similarities all exceed tau
within a window is averaged over the window into one token in the window's first frame. Deviations: we merge on the
projector's features once, before the language model (FrameFusion merges hidden states inside its first layers
and then prunes by attention, which needs the model); the budget is a token count rather than a FLOPs cost; runs
are not limited to HoliTom's dynamic-programming windows (a run ends where similarity drops); HoliTom's spatial
clustering of the remaining tokens is the separate `segment_density` stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.stages.base import Flow, FrameSizes, GridShape, Stage, register_stage
from longctx_adapter.ops.stages.merging import (
    MergeDecision,
    blocks,
    budget_from_dict,
    budget_text,
    compute_dtype,
    cosine,
    describe_grid,
    input_shape,
    merge_flow,
    parse_budget_parts,
    positions_from,
    rows_bound,
    target_tokens,
    threshold_from,
)

__all__ = ["DEFAULT_THRESHOLD", "MergeTemporal", "consecutive_similarity", "temporal_merge_decisions"]

#: the threshold when no budget is given (HoliTom's tau)
DEFAULT_THRESHOLD = 0.8


@register_stage
@dataclass(frozen=True)
class MergeTemporal(Stage):
    threshold: float | None = DEFAULT_THRESHOLD
    ratio: float | None = None
    max_tokens: int | None = None
    positions: str = "kept"

    type = "merge_temporal"
    shorthand_help = "merge_temporal:THRESHOLD|P%"
    must_be_last = "its frames keep sets of tokens chosen from the data, which no later stage can pool"
    takes_frames = True
    data_dependent = True
    #: coordinate passes with positions "kept" gather each representative's own place (see for_coordinates)
    gather = False

    @classmethod
    def from_dict(cls, data: Mapping) -> MergeTemporal:
        ratio, most = budget_from_dict(data, cls.type)
        default = DEFAULT_THRESHOLD if ratio is None and most is None else None
        threshold = threshold_from(data, cls.type, default)
        if threshold is None and ratio is None and most is None:
            raise AdapterError(
                "merge_temporal needs a 'threshold' (merge tokens more similar than it to the previous frame) and/or "
                "a budget ('ratio' or 'max_tokens'), e.g. {'type': 'merge_temporal', 'threshold': 0.8}"
            )
        return cls(threshold, ratio, most, positions_from(data, cls.type))

    @classmethod
    def parse_shorthand(cls, args: str) -> dict:
        numbers, ratio = parse_budget_parts(args, cls.shorthand_help)
        if len(numbers) > 1 or (not numbers and ratio is None):
            raise AdapterError(f"{cls.shorthand_help} (or THRESHOLD/P%): could not read {args!r}")
        return {"type": cls.type, "threshold": numbers[0] if numbers else None, "ratio": ratio}

    def shorthand(self) -> str | None:
        if self.max_tokens is not None or self.positions != "kept":
            return None
        parts = [] if self.threshold is None else [f"{self.threshold:g}"]
        if self.threshold is not None and float(parts[0]) != self.threshold:
            return None
        if self.ratio is not None:
            text = budget_text(self.ratio)
            if text is None:
                return None
            parts.append(text)
        return f"{self.type}:{'/'.join(parts)}"

    # --- shapes ------------------------------------------------------------------------------------------------------
    def target(self, shape: GridShape) -> int | None:
        """The budget on this grid; refused below one frame's tokens (the first frame is never merged)."""
        target = target_tokens(shape.num_tokens, self.ratio, self.max_tokens)
        per_frame = shape.height * shape.width
        if target is not None and target < per_frame:
            key = "ratio" if self.ratio is not None else "max_tokens"
            value = self.ratio if self.ratio is not None else self.max_tokens
            raise AdapterError(
                f"merge_temporal '{key}' {value!r} asks for {target} tokens of the {describe_grid(shape)}, fewer than "
                f"one frame's {per_frame}; temporal merging keeps every token of the first frame, so ask for at "
                f"least {per_frame} tokens or pool spatially before it (e.g. progressive:2,2,1 or conv3d:1,2,2)"
            )
        return target

    def output_shape(self, shape: GridShape | FrameSizes) -> FrameSizes:
        grid = input_shape(shape, self.type)
        target = self.target(grid)
        total = grid.num_tokens if target is None else target
        return rows_bound(grid.frames, grid.height * grid.width, total)

    def min_frames(self, frames_out: int) -> int:
        """A ratio keeps at least one frame's tokens from ceil(1 / ratio) frames on (at any frame size)."""
        if self.ratio is None:
            return frames_out
        frames = max(1, math.ceil(1 / self.ratio))
        while frames > 1 and self.ratio * (frames - 1) >= 1:
            frames -= 1
        while self.ratio * frames < 1:
            frames += 1
        return max(frames_out, frames)

    def keeps_frames(self, shape: GridShape) -> bool:
        return True

    def chunk_frames(self, frames: int) -> tuple[int | None, str]:
        if self.ratio is not None or self.max_tokens is not None:
            return None, "merge_temporal's budget is shared by the whole video"
        return None, "merge_temporal compares the first frame of a chunk with the last frame of the chunk before it"

    def scratch_tokens(self, shape: GridShape) -> int:
        """The stacked input (after progressive) and the float32 sums of the means, counted as token vectors."""
        return 2 * shape.num_tokens

    # --- the op ------------------------------------------------------------------------------------------------------
    def apply(self, flow: Flow) -> Flow:
        def decide(grids, shape):
            return temporal_merge_decisions(grids, self.threshold, self.target(shape))

        return merge_flow(flow, self.type, decide, gather=self.gather)

    def for_coordinates(self) -> MergeTemporal:
        if self.positions == "mean":
            return self
        return _MergeTemporalPlaces(self.threshold, self.ratio, self.max_tokens, self.positions)

    def for_frames(self) -> MergeTemporal:
        """An output frame is its representatives' frame, whatever frames their members come from."""
        return _MergeTemporalPlaces(self.threshold, self.ratio, self.max_tokens, self.positions)


@dataclass(frozen=True)
class _MergeTemporalPlaces(MergeTemporal):
    """The coordinate pass of positions "kept": every token sits at its representative's own (t, row, column)."""

    gather = True


def consecutive_similarity(grids: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, D) -> (B, T - 1, H * W): cosine of each token of frame t >= 1 to the same place of frame t - 1."""
    B, T, H, W, D = grids.shape
    x = grids.reshape(B, T, H * W, D)
    out = torch.empty(B, T - 1, H * W, dtype=compute_dtype(grids.dtype), device=grids.device)
    for start, stop in blocks(T - 1, B * H * W * D):
        out[:, start:stop] = cosine(x[:, start + 1 : stop + 1], x[:, start:stop])
    return out


def temporal_merge_decisions(grids: torch.Tensor, threshold: float | None, target: int | None) -> list[MergeDecision]:
    """The merge decision of each video of a (B, T, H, W, D) batch (see the module docstring)."""
    B, T, H, W, _ = grids.shape
    places, tokens = H * W, T * H * W
    merged = torch.zeros(B, T, places, dtype=torch.bool, device=grids.device)
    if T > 1:
        similarity = consecutive_similarity(grids)
        if threshold is not None:
            merged[:, 1:] = similarity > threshold
        if target is not None and tokens > target:
            order = torch.sort(-similarity.reshape(B, -1), dim=1, stable=True).indices[:, : tokens - target]
            later = merged[:, 1:].reshape(B, -1).clone()
            later.scatter_(1, order, True)
            merged[:, 1:] = later.reshape(B, T - 1, places)
    return [_decision(row, (T, H, W)) for row in merged]


def _decision(merged: torch.Tensor, shape: tuple[int, int, int]) -> MergeDecision:
    """Runs along time at each place: every token joins the latest kept token at or before it at its place."""
    T, places = merged.shape
    keep = ~merged
    frame = torch.arange(T, device=merged.device)[:, None].expand(T, places)
    first = torch.where(keep, frame, torch.full_like(frame, -1)).cummax(dim=0).values
    representative = (first * places + torch.arange(places, device=merged.device)).reshape(-1)
    flat = keep.reshape(-1)
    output = flat.cumsum(0) - 1
    return MergeDecision(shape, output[representative], flat.nonzero().squeeze(1))
