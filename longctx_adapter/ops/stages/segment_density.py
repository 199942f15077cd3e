"""Segment-and-density merging (FastVID style): cut the video where the scene changes, then keep the most
representative tokens of each segment and merge every other token of the segment into its nearest kept token.

1. **Segments** (FastVID's DySeg): frame feature = mean of the frame's tokens; transition t = cosine of frames t and
   t + 1. Cuts go after the `segments - 1` weakest transitions and after every transition below `cut_similarity`
   (ties: the earlier transition), at most `budget - 1` of them (the weakest first) so that every segment keeps a
   token.
2. **Budget**: the video keeps exactly `budget` tokens (`ratio` or `max_tokens` of its input); segment s of L_s
   frames gets `budget * L_s / T` by largest remainders (ties: the earlier segment), at least 1.
3. **Anchor frames** (FastVID's DTM): every `anchor_step`-th frame of a segment, `start + floor(j * L / A)` for
   j < A (more anchors when the segment's budget does not fit their tokens); the segment's budget is split evenly
   over them (the remainder to the earlier ones).
4. **Density** (DPC-kNN, as FastVID and HoliTom score tokens) inside each anchor frame: distances
   `d = ||x_i - x_j|| / sqrt(D)`, density `rho_i = exp(-mean of d^2 to its k = neighbors nearest tokens, itself
   included)`, `delta_i` = distance to the nearest token of higher density (equal density: the earlier token counts
   as higher; the densest token takes the frame's largest distance), score `rho * delta`. Each anchor keeps its
   top-scoring tokens (ties: the earlier place).
5. **Merge**: every token of the segment joins the kept token of the segment it is most cosine-similar to (ties:
   the earlier kept token; a kept token always represents itself); the output is the exact mean of its members.

Deviations from FastVID (Shen et al. 2025, LunarShen/FastVID): no attention-based selection of salient tokens (it
reads the vision tower's attention-pooling head, which a pure op on projected features does not have), so the
whole budget goes to density-selected tokens; the frame feature for segmentation is the mean of the frame's tokens
rather than that head's pooled embedding; a merged token is the exact mean of its cluster rather than FastVID's
`alpha * anchor + (1 - alpha) * mean(members)` over normalised features; ties are broken by position instead of
random noise; the budget is exact for the whole video rather than `int(ratio * tokens)` per frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.stages.base import Flow, FrameSizes, GridShape, Stage, positive_int, register_stage
from longctx_adapter.ops.stages.merging import (
    MergeDecision,
    blocks,
    budget_from_dict,
    budget_text,
    compute_dtype,
    cosine,
    finite_number,
    input_shape,
    merge_flow,
    parse_budget_parts,
    positions_from,
    rows_bound,
    target_tokens,
)

__all__ = [
    "DensityDecision",
    "SegmentDensity",
    "density_scores",
    "density_merge_decision",
    "density_merge_decisions",
    "segment_budgets",
    "segment_cuts",
]

DEFAULT_RATIO = 0.25


@dataclass(frozen=True)
class DensityDecision(MergeDecision):
    """A merge decision plus what it was built from (for reports and pictures)."""

    segments: tuple[tuple[int, int], ...] = ()  # [start, stop) frames of each segment
    anchors: tuple[int, ...] = ()  # the anchor frames


@register_stage
@dataclass(frozen=True)
class SegmentDensity(Stage):
    ratio: float | None = DEFAULT_RATIO
    max_tokens: int | None = None
    segments: int = 8
    cut_similarity: float = 0.9
    anchor_step: int = 4
    neighbors: int = 4
    positions: str = "kept"

    type = "segment_density"
    shorthand_help = "segment_density:P%"
    must_be_last = "its frames keep sets of tokens chosen from the data, which no later stage can pool"
    takes_frames = True
    data_dependent = True
    gather = False

    @classmethod
    def from_dict(cls, data: Mapping) -> SegmentDensity:
        kind = cls.type
        ratio, most = budget_from_dict(data, kind)
        if ratio is None and most is None:
            if "ratio" in data or "max_tokens" in data:
                raise AdapterError(f"{kind} needs a budget: 'ratio' (e.g. 0.1) or 'max_tokens'; both are null")
            ratio = DEFAULT_RATIO
        return cls(
            ratio=ratio,
            max_tokens=most,
            segments=positive_int(data.get("segments", 8), f"{kind} 'segments'"),
            cut_similarity=finite_number(data.get("cut_similarity", 0.9), f"{kind} 'cut_similarity'"),
            anchor_step=positive_int(data.get("anchor_step", 4), f"{kind} 'anchor_step'"),
            neighbors=positive_int(data.get("neighbors", 4), f"{kind} 'neighbors'"),
            positions=positions_from(data, kind),
        )

    @classmethod
    def parse_shorthand(cls, args: str) -> dict:
        numbers, ratio = parse_budget_parts(args, cls.shorthand_help)
        if numbers or ratio is None:
            raise AdapterError(f"{cls.shorthand_help}: expected the kept share in percent, e.g. 10%, got {args!r}")
        return {"type": cls.type, "ratio": ratio}

    def shorthand(self) -> str | None:
        defaults = (self.segments, self.cut_similarity, self.anchor_step, self.neighbors, self.positions)
        if self.max_tokens is not None or defaults != (8, 0.9, 4, 4, "kept"):
            return None
        text = budget_text(self.ratio)
        return None if text is None else f"{self.type}:{text}"

    # --- shapes ------------------------------------------------------------------------------------------------------
    def target(self, shape: GridShape) -> int:
        return target_tokens(shape.num_tokens, self.ratio, self.max_tokens)

    def output_shape(self, shape: GridShape | FrameSizes) -> FrameSizes:
        """Exactly `budget` tokens come out; which frames hold them depends on the data (so exact=False)."""
        grid = input_shape(shape, self.type)
        return rows_bound(grid.frames, grid.height * grid.width, self.target(grid))

    def keeps_frames(self, shape: GridShape) -> bool:
        return True

    def chunk_frames(self, frames: int) -> tuple[int | None, str]:
        return None, "segment_density cuts segments and shares its budget over the whole video"

    def scratch_tokens(self, shape: GridShape) -> int:
        """The stacked input, the float32 sums and the normalised tokens of a segment, as token vectors."""
        return 3 * shape.num_tokens

    # --- the op ------------------------------------------------------------------------------------------------------
    def apply(self, flow: Flow) -> Flow:
        def decide(grids, shape):
            return density_merge_decisions(
                grids, self.target(shape), self.segments, self.cut_similarity, self.anchor_step, self.neighbors
            )

        return merge_flow(flow, self.type, decide, gather=self.gather)

    def for_coordinates(self) -> SegmentDensity:
        if self.positions == "mean":
            return self
        return self.for_frames()

    def for_frames(self) -> SegmentDensity:
        """An output frame is its representatives' frame, whatever frames their members come from."""
        values = (self.ratio, self.max_tokens, self.segments, self.cut_similarity, self.anchor_step, self.neighbors)
        return _SegmentDensityPlaces(*values, self.positions)


@dataclass(frozen=True)
class _SegmentDensityPlaces(SegmentDensity):
    """The coordinate pass of positions "kept": every token sits at its representative's own (t, row, column)."""

    gather = True


# ---------------------------------------------------------------------------------------------------------------------
# The steps.


def _ascending(values: torch.Tensor) -> list[int]:
    """Indices by value, ascending; equal values keep their order (the earlier first)."""
    return torch.sort(values, stable=True).indices.tolist()


def segment_cuts(transitions: torch.Tensor, segments: int, cut_similarity: float, most: int) -> list[int]:
    """Transitions to cut after (ascending): the `segments - 1` weakest, every one below `cut_similarity`, at most
    `most` (the weakest first)."""
    order = _ascending(transitions)
    wanted = set(order[: max(0, segments - 1)])
    wanted |= {i for i in order if float(transitions[i]) < cut_similarity}
    return sorted([i for i in order if i in wanted][: max(0, most)])


def segment_budgets(lengths: list[int], budget: int) -> list[int]:
    """`budget * L_s / T` per segment by largest remainders (ties: the earlier segment), every segment at least 1."""
    total = sum(lengths)
    shares = [budget * n // total for n in lengths]
    rests = [budget * n % total for n in lengths]
    for s in sorted(range(len(lengths)), key=lambda s: (-rests[s], s))[: budget - sum(shares)]:
        shares[s] += 1
    for s in range(len(lengths)):
        if shares[s] == 0:  # take one from the largest share (the earliest of equals)
            donor = max(range(len(lengths)), key=lambda d: (shares[d], -d))
            shares[donor] -= 1
            shares[s] = 1
    return shares


def _anchors(start: int, length: int, budget: int, step: int, per_frame: int) -> list[tuple[int, int]]:
    """(frame, tokens kept) of each anchor frame of one segment."""
    count = min(max(-(-length // step), -(-budget // per_frame)), budget, length)
    base, extra = divmod(budget, count)
    return [(start + j * length // count, base + (1 if j < extra else 0)) for j in range(count)]


def density_scores(frames: torch.Tensor, neighbors: int) -> torch.Tensor:
    """(A, P, D) -> (A, P): DPC-kNN score `rho * delta` of every token within its own frame (module docstring).

    Density order is decided on the mean squared distance itself (lower = denser), so equal densities are exact
    ties broken by position, whatever rounding `exp` adds."""
    dtype = compute_dtype(frames.dtype)
    x = frames.to(dtype)
    A, P, D = x.shape
    square = (x * x).sum(-1)
    d2 = (square[:, :, None] + square[:, None, :] - 2 * (x @ x.transpose(1, 2))).clamp_min(0) / D
    d2 = d2.masked_fill(torch.eye(P, dtype=torch.bool, device=x.device), 0.0)
    spread = torch.topk(d2, min(neighbors, P), dim=-1, largest=False).values.mean(-1)
    index = torch.arange(P, device=x.device)
    denser = (spread[:, None, :] < spread[:, :, None]) | (
        (spread[:, None, :] == spread[:, :, None]) & (index[None, None, :] < index[None, :, None])
    )
    dist = d2.sqrt()
    farthest = dist.flatten(1).amax(-1)[:, None, None].expand(A, P, P)
    delta = torch.where(denser, dist, farthest).amin(-1)
    return torch.exp(-spread) * delta


def density_merge_decisions(
    grids: torch.Tensor, budget: int, segments: int = 8, cut_similarity: float = 0.9, anchor_step: int = 4,
    neighbors: int = 4,
) -> list[DensityDecision]:  # fmt: skip
    """The decision of `SegmentDensity` on each video of a (B, T, H, W, D) batch, each keeping exactly `budget`
    tokens: frame features, transitions and the density of every anchor frame of the batch are computed together;
    segments and merges are per video."""
    B, T, H, W, D = grids.shape
    P = H * W
    shape = (T, H, W)
    if budget >= T * P:
        identity = MergeDecision.identity(shape, grids.device)
        return [DensityDecision(shape, identity.assign, identity.kept, ((0, T),), tuple(range(T)))] * B
    x = grids.reshape(B, T, P, D)
    dtype = compute_dtype(grids.dtype)
    means = torch.cat([x[:, a:b].to(dtype).mean(2) for a, b in blocks(T, B * P * D)], dim=1)
    transitions = cosine(means[:, 1:], means[:, :-1]).cpu()
    plans = []
    for video in range(B):
        cuts = segment_cuts(transitions[video], segments, cut_similarity, budget - 1)
        bounds = list(zip([0] + [c + 1 for c in cuts], [c + 1 for c in cuts] + [T]))
        shares = segment_budgets([b - a for a, b in bounds], budget)
        plans.append((bounds, [_anchors(a, b - a, n, anchor_step, P) for (a, b), n in zip(bounds, shares)]))
    anchor_rows = [(video, frame) for video, (_, anchors) in enumerate(plans) for seg in anchors for frame, _ in seg]
    scores = torch.cat(
        [
            density_scores(torch.stack([x[v, f] for v, f in anchor_rows[i:j]]), neighbors)
            for i, j in blocks(len(anchor_rows), P * max(P, D))
        ]
    )
    decisions, row = [], 0
    for video, (bounds, anchors) in enumerate(plans):
        kept_parts = []
        for seg in anchors:
            for frame, count in seg:
                picks = torch.sort(-scores[row], stable=True).indices[:count]
                kept_parts.append(frame * P + picks.sort().values.to(grids.device))
                row += 1
        kept = torch.cat(kept_parts)
        assign = _assign(x[video].reshape(T * P, D), kept, bounds, [sum(n for _, n in seg) for seg in anchors], P)
        frames = tuple(f for seg in anchors for f, _ in seg)
        decisions.append(DensityDecision(shape, assign, kept, tuple(bounds), frames))
    return decisions


def _assign(flat: torch.Tensor, kept: torch.Tensor, bounds, counts, places: int) -> torch.Tensor:
    """Every token joins the kept token of its segment it is most cosine-similar to (ties: the earlier one)."""
    dtype = compute_dtype(flat.dtype)
    assign = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    first = 0
    for (a, b), count in zip(bounds, counts):
        members = kept[first : first + count]
        centres = flat.index_select(0, members).to(dtype)
        centre_norms = torch.linalg.vector_norm(centres, dim=-1)
        for lo, hi in blocks((b - a) * places, count + flat.shape[1]):
            tokens = flat[a * places + lo : a * places + hi].to(dtype)
            norms = torch.linalg.vector_norm(tokens, dim=-1)
            similarity = (tokens @ centres.T) / (norms[:, None] * centre_norms[None, :]).clamp_min(tiny(dtype))
            assign[a * places + lo : a * places + hi] = similarity.argmax(-1) + first
        assign[members] = torch.arange(first, first + count, device=flat.device)
        first += count
    return assign


def density_merge_decision(grid: torch.Tensor, budget: int, **keys) -> DensityDecision:
    """The decision on one (T, H, W, D) video (see `density_merge_decisions`)."""
    return density_merge_decisions(grid[None], budget, **keys)[0]


def tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny
