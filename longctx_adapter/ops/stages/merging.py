"""What the content-aware merge stages share (`merge_temporal`, `segment_density`): their budget keys, the input
they accept, the decision they record, and how a decision is applied to features or to coordinates.

A merge keeps a set of *representative* tokens and assigns every input token to exactly one of them. The output
token of a representative is the exact mean of every input token assigned to it: one sum divided by one count, never
an average of averages, so however many tokens join, each weighs the same. The representative stays in its own
frame, in row-major order, so the output is frame-major like every pooled video; a frame keeps any number of tokens
(a row `(1, n, D)`, n may be 0).

Positions replay the decision on a coordinate grid: `"mean"` puts a token at the centre of what it stands for (the
mean (t, row, column) of its members), `"kept"` at its representative's own (t, row, column).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.stages.base import Flow, FrameSizes, GridShape, choice, cycle_of, is_int
from longctx_adapter.ops.stages.windows import check_grid, grid_name

__all__ = [
    "POSITIONS",
    "MergeDecision",
    "apply_decision",
    "budget_from_dict",
    "cluster_means",
    "cosine",
    "finite_number",
    "grid_input",
    "input_shape",
    "rows_bound",
    "target_tokens",
]

#: where a merged token sits on a coordinate grid (Qwen M-RoPE ids): its representative's place, or the mean place
POSITIONS = ("kept", "mean")
#: elements one block of a blocked computation holds (bounds the op's scratch memory at long videos)
BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class MergeDecision:
    """Which input token each output token stands for, on a (T, H, W) grid (flat indices are frame-major)."""

    shape: tuple[int, int, int]
    assign: torch.Tensor  # (T*H*W,) long: the output token each input token joins
    kept: torch.Tensor  # (M,) long, ascending: the flat index of each output token's representative

    @property
    def num_tokens(self) -> int:
        return int(self.kept.numel())

    @property
    def frame_counts(self) -> list[int]:
        """Tokens each output frame keeps (the frame of a representative is its own)."""
        T, H, W = self.shape
        return torch.bincount(self.kept // (H * W), minlength=T).tolist()

    @property
    def counts(self) -> torch.Tensor:
        """How many input tokens each output token stands for."""
        return torch.bincount(self.assign, minlength=self.num_tokens)

    @classmethod
    def identity(cls, shape: tuple[int, int, int], device=None) -> MergeDecision:
        index = torch.arange(math.prod(shape), device=device)
        return cls(shape, index, index)


# ---------------------------------------------------------------------------------------------------------------------
# Config keys.


def finite_number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise AdapterError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def budget_from_dict(data: Mapping, kind: str) -> tuple[float | None, int | None]:
    """(ratio, max_tokens): at most one of them; ratio in (0, 1] of the tokens the stage receives."""
    ratio, most = data.get("ratio"), data.get("max_tokens")
    if ratio is not None and most is not None:
        raise AdapterError(
            f"{kind} takes one budget: 'ratio' (a fraction of its input tokens) or 'max_tokens' (a count), got both "
            f"({ratio!r} and {most!r}); drop one"
        )
    if ratio is not None:
        ratio = finite_number(ratio, f"{kind} 'ratio'")
        if not 0 < ratio <= 1:
            raise AdapterError(f"{kind} 'ratio' must be in (0, 1] (the fraction of tokens kept), got {ratio!r}")
    if most is not None and (not is_int(most) or most < 1):
        raise AdapterError(f"{kind} 'max_tokens' must be a positive integer, got {most!r}; use an int >= 1")
    return ratio, None if most is None else int(most)


def threshold_from(data: Mapping, kind: str, default: float | None) -> float | None:
    value = data.get("threshold", default)
    return None if value is None else finite_number(value, f"{kind} 'threshold'")


def positions_from(data: Mapping, kind: str) -> str:
    return choice(data.get("positions", "kept"), POSITIONS, f"{kind} 'positions'")


def target_tokens(tokens: int, ratio: float | None, max_tokens: int | None) -> int | None:
    """The token budget of a stage receiving `tokens` tokens: round(ratio * tokens) (at least 1) or max_tokens,
    never above `tokens`; None without a budget."""
    if ratio is not None:
        return min(tokens, max(1, round(ratio * tokens)))
    if max_tokens is not None:
        return min(tokens, max_tokens)
    return None


def budget_text(ratio: float | None) -> str | None:
    """`ratio` as `P%` when that text parses back to exactly the same number."""
    text = f"{ratio * 100:g}%"
    return text if float(text[:-1]) / 100 == ratio else None


def parse_budget_parts(args: str, usage: str) -> tuple[list[float], float | None]:
    """`0.8/10%` -> ([0.8], 0.1): plain numbers and one `P%` ratio, separated by ',' or '/'."""
    parts = [p.strip() for p in str(args).replace("/", ",").split(",") if p.strip()]
    numbers, ratio = [], None
    for part in parts:
        try:
            if part.endswith("%"):
                if ratio is not None:
                    raise ValueError
                ratio = float(part[:-1]) / 100
            else:
                numbers.append(float(part))
        except ValueError:
            raise AdapterError(f"{usage}: could not read {args!r}") from None
    return numbers, ratio


# ---------------------------------------------------------------------------------------------------------------------
# Input: a grid, or the equal-size frames of a stage that must be last (progressive with one stride).


def _ragged_error(kind: str) -> AdapterError:
    return AdapterError(
        f"{kind} cannot follow a stage whose tokens per frame depend on the data; put {kind} after grid stages only "
        "(or after progressive with one stride)"
    )


def _sizes_error(kind: str, sizes) -> AdapterError:
    return AdapterError(
        f"{kind} needs frames of one size, but the stage before it makes frames of sizes {sorted(sizes)}; use "
        "progressive with one stride (e.g. progressive:2,2,1) or a grid stage before it"
    )


def input_shape(shape: GridShape | FrameSizes, kind: str) -> GridShape:
    """The grid a merge stage sees, from the shape the stage before it makes (same refusals as `grid_input`)."""
    if isinstance(shape, GridShape):
        return shape
    if not shape.exact:
        raise _ragged_error(kind)
    sizes = {size for count, size in shape.cycle if count}
    if len(sizes) != 1:
        raise _sizes_error(kind, sizes)
    ((height, width),) = sizes
    return GridShape(shape.frames, height, width)


def grid_input(flow: Flow, kind: str) -> torch.Tensor:
    """The (T, H, W, D) grid of `flow`: its grid, or its frames stacked when they all have one size."""
    if flow.grid is not None:
        return flow.grid
    if flow.ragged:
        raise _ragged_error(kind)
    sizes = {tuple(int(n) for n in f.shape[:2]) for f in flow.frames}
    if len(sizes) != 1:
        raise _sizes_error(kind, sizes)
    return torch.stack(flow.frames)


def rows_bound(frames: int, per_frame: int, total: int) -> FrameSizes:
    """An upper bound on a merge's output: `total` tokens over `frames` rows of at most `per_frame` (one layout that
    reaches it: full frames first)."""
    full, rest = divmod(total, per_frame)
    full = min(full, frames)
    runs = [(full, (1, per_frame))]
    if rest and full < frames:
        runs.append((1, (1, rest)))
    runs.append((frames - sum(n for n, _ in runs), (1, 0)))
    return FrameSizes(frames, cycle_of([(n, size) for n, size in runs if n]), exact=False)


def describe_grid(shape: GridShape) -> str:
    return grid_name(shape.frames, shape.height, shape.width)


# ---------------------------------------------------------------------------------------------------------------------
# Arithmetic.


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Similarities and sums run in float32 (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def blocks(count: int, width: int):
    """[start, stop) ranges over `count` rows of `width` elements, each block at most BLOCK_ELEMENTS elements."""
    step = max(1, BLOCK_ELEMENTS // max(1, width))
    return [(start, min(count, start + step)) for start in range(0, count, step)]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last axis in the compute dtype; exactly equal vectors score exactly 1, a zero
    vector scores 0 against anything else, NaN scores -inf (never merged)."""
    dtype = compute_dtype(a.dtype)
    x, y = a.to(dtype), b.to(dtype)
    dot = torch.einsum("...d,...d->...", x, y)
    norms = torch.linalg.vector_norm(x, dim=-1) * torch.linalg.vector_norm(y, dim=-1)
    cos = (dot / norms.clamp_min(torch.finfo(dtype).tiny)).clamp(-1.0, 1.0)
    cos = torch.where((a == b).all(-1), torch.ones_like(cos), cos)
    return torch.nan_to_num(cos, nan=-math.inf)


def cluster_means(x: torch.Tensor, assign: torch.Tensor, count: int) -> torch.Tensor:
    """(N, D) tokens -> (count, D): the mean of the tokens assigned to each output token, as one sum over one count.

    Sums run in float32 (float64 input: float64) in blocks, then are cast back to the input dtype. On CPU the adds
    run in index order (bit-reproducible); CUDA's index_add uses atomic adds, so there the last bit may vary
    between runs (the decision never does).
    """
    if count == x.shape[0] and bool((assign == torch.arange(count, device=assign.device)).all()):
        return x  # nothing merged: the tokens themselves, bit for bit
    dtype = compute_dtype(x.dtype)
    sums = torch.zeros(count, x.shape[1], dtype=dtype, device=x.device)
    assign = assign.to(x.device)
    for start, stop in blocks(x.shape[0], x.shape[1]):
        sums.index_add_(0, assign[start:stop], x[start:stop].to(dtype))
    counts = torch.bincount(assign, minlength=count).to(dtype)
    return (sums / counts[:, None]).to(x.dtype)


def apply_decision(grid: torch.Tensor, decision: MergeDecision, gather: bool = False) -> tuple[torch.Tensor, ...]:
    """The frames of `decision` applied to `grid`: exact means of the members, or (gather) each representative's
    own token; one row `(1, n, D)` per frame."""
    shape = check_grid(grid)
    if (shape.frames, shape.height, shape.width) != decision.shape:
        raise AdapterError(
            f"internal: a merge decided on a {'x'.join(map(str, decision.shape))} grid is replayed on a "
            f"{describe_grid(shape)}; positions must replay the trace of the same stages"
        )
    x = grid.reshape(-1, grid.shape[-1])
    if gather:
        out = x.index_select(0, decision.kept.to(x.device))
    else:
        out = cluster_means(x, decision.assign, decision.num_tokens)
    return tuple(part[None] for part in out.split(decision.frame_counts))


def merge_flow(flow: Flow, kind: str, decide, gather: bool = False) -> Flow:
    """One merge stage's step: decide on the grid (or replay the traced decision), then merge.

    decide: (grid (1, T, H, W, D), shape) -> the batch's decisions; run without gradient, since a decision carries
    none (the means it leads to do)."""
    grid = grid_input(flow, kind)
    decision = flow.replayed
    if decision is None:
        shape = GridShape(*(int(n) for n in grid.shape[:3]))
        with torch.no_grad():
            (decision,) = decide(grid[None], shape)
    frames = apply_decision(grid, decision, gather=gather)
    return flow.replace(grid=None, frames=frames, guide=None, decision=decision, ragged=True)
