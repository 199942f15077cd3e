"""Question-guided pooling math (DESIGN 3.4, 3.5 and keyframe progressive pooling, 3.3): pure tensor code.

A `Guide` carries the question relevance of every token of the grid being pooled, as *logits*: the scorer's
scaled cosine similarity of each token to the question (CLIP: `exp(logit_scale) * cos`, SigLIP: plus
`logit_bias`; see longctx_adapter/hooks/scorer.py). The stages turn logits into weights where they use them:

- `prompt_guided` (PPLLaVA): `w = softmax(logits)` over all T*H*W tokens of the grid it pools, then inside each
  window `a = softmax(w_window / temperature)` and `out = sum(a * features)` (`prompt_guided_pool`). Computed as
  `avg_pool3d(f * e) / avg_pool3d(e)` with `e = exp((w - m) / temperature)` over conv3d's exact windows
  (ceil_mode, partial tails averaged over what exists), `m` the window's own maximum where windows do not overlap
  (kernel == stride on every axis) and the global maximum otherwise. Uniform weights give `e == 1` exactly, so
  the result is conv3d average pooling bit for bit. A window whose weights all underflow (only possible with
  overlapping windows and extreme logits) has a zero denominator and takes the plain average instead.
- `select_frames` (training-free VLAP): frame scores are the mean or max of `w` over each frame's tokens
  ("mean" | "max") or the scorer's whole-frame embedding logit ("global"); the video is cut into `segments`
  equal parts (`[floor(i*T/M), floor((i+1)*T/M))`), the top `per_segment` frames of each are kept in temporal
  order (ties: the earlier frame).
- `progressive` with `"anchor": "score"`: the sharp frame of each group is the group's best-scoring frame.

Between stages the guide follows the grid: selected frames keep their logits, uniform stages (temporal,
adaptive3d, conv3d, prompt_guided) average the logit map with the same windows as the features (frame logits
likewise along time), so a later stage scores the grid it actually sees.

Without a guide (no question, see longctx_adapter/hooks/question.py) every stage takes its uniform form:
prompt_guided = conv3d average pooling, select_frames keeps `per_segment` evenly spaced frames per segment
(frame `start + floor((j + 1/2) * len / k)`), anchor "score" = anchor "first".

Positions: pooling a (t, row, column) coordinate grid with the same stages and the same guide (as
positions.pooled_coordinates does) makes the same decisions, so every pooled token's M-RoPE ids are the
(weighted) centre of what it averages; kept frames keep their own t ("original") or take the t of the first
frames in order ("repacked", coordinates only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.pooling import (
    PooledVideo,
    _apply_uniform,
    _check_grid,
    _check_select,
    _conv3d_window,
    conv3d_pool,
    progressive_pool,
)

__all__ = [
    "Guide",
    "GuidedInfo",
    "group_anchors",
    "guided_pool_video",
    "prompt_guided_pool",
    "segment_bounds",
    "select_frame_indices",
    "weighted_window_pool",
]


@dataclass(frozen=True)
class Guide:
    """Question relevance of one video grid, as logits (see module docstring)."""

    logits: torch.Tensor  # (T, H, W): per-token logit of the grid being pooled
    frame_logits: torch.Tensor | None = None  # (T,): whole-frame logit, for score "global"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.logits.shape)

    def weights(self) -> torch.Tensor:
        """PPLLaVA's w: softmax over all T*H*W tokens (float64)."""
        logits = self.logits.to(torch.float64)
        return torch.softmax(logits.reshape(-1), dim=0).reshape(logits.shape)

    def frame_scores(self, mode: str) -> torch.Tensor:
        """(T,) float64 score of each frame: mean / max of w over its tokens, or the whole-frame logit."""
        if mode == "global":
            if self.frame_logits is None:
                raise AdapterError("score 'global' needs whole-frame logits, and this guide has none")
            return self.frame_logits.to(torch.float64)
        w = self.weights().flatten(1)
        return w.mean(1) if mode == "mean" else w.amax(1)

    def select(self, index: torch.Tensor) -> Guide:
        index = index.to(self.logits.device)
        frames = None if self.frame_logits is None else self.frame_logits.index_select(0, index)
        return Guide(self.logits.index_select(0, index), frames)

    def pooled(self, pool) -> Guide:
        """The guide of the grid `pool` makes: `pool` maps a (T, H, W, 1) grid to a (T', H', W', 1) grid."""
        logits = pool(self.logits[..., None])[..., 0]
        frames = None
        if self.frame_logits is not None:
            T, H, W = self.shape
            frames = pool(self.frame_logits[:, None, None, None].expand(T, H, W, 1))[:, 0, 0, 0]
        return Guide(logits, frames)


@dataclass(frozen=True)
class GuidedInfo:
    """What question-guided stages decided for one video (kept on PooledVideo.guided)."""

    guide: Guide | None  # the guide of the input grid (replaying it on coordinates makes the same decisions)
    kept_frames: tuple[int, ...] | None = None  # input frames kept by select_frames (last selection, input indices)
    anchors: tuple[int, ...] | None = None  # keyframe of each progressive group (frame indices of that grid)


# ---------------------------------------------------------------------------------------------------------------------
# Prompt-guided pooling.


def _non_overlapping_max(z: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Each element's window maximum, for windows that tile the grid (kernel == stride)."""
    T, H, W = z.shape
    peak = F.max_pool3d(z[None, None], kernel, stride, ceil_mode=True)[0, 0]
    for axis, (k, n) in enumerate(zip(kernel, (T, H, W))):
        peak = peak.repeat_interleave(k, dim=axis).narrow(axis, 0, n)
    return peak


def weighted_window_pool(grid: torch.Tensor, weights: torch.Tensor, kernel, stride, temperature: float) -> torch.Tensor:
    """(T, H, W, D) -> (T', H', W', D): inside each conv3d window, `softmax(w / temperature)`-weighted average.

    kernel, stride: solved (time, height, width) windows as `pooling._conv3d_window` gives them. Float16/bfloat16
    features are pooled in float32 and cast back; float32/float64 stay as they are.
    """
    T, H, W = _check_grid(grid)
    if tuple(weights.shape) != (T, H, W):
        raise AdapterError(f"weights of shape {tuple(weights.shape)} do not match the {T}x{H}x{W} grid")
    kernel, stride = tuple(int(k) for k in kernel), tuple(int(s) for s in stride)
    compute = torch.float32 if grid.dtype in (torch.float16, torch.bfloat16) else grid.dtype
    z = weights.to(device=grid.device, dtype=torch.float64)
    z = (z - z.max()) / float(temperature)
    if kernel == stride:
        z = z - _non_overlapping_max(z, kernel, stride)
    e = torch.exp(z).to(compute)
    features = grid.to(compute) * e[..., None]
    num = F.avg_pool3d(features.permute(3, 0, 1, 2)[None], kernel, stride, ceil_mode=True, count_include_pad=False)
    den = F.avg_pool3d(e[None, None], kernel, stride, ceil_mode=True, count_include_pad=False)
    out = num / den
    empty = den == 0
    if bool(empty.any()):  # every weight of a window underflowed: plain average there
        plain = F.avg_pool3d(grid.to(compute).permute(3, 0, 1, 2)[None], kernel, stride, ceil_mode=True,
                             count_include_pad=False)  # fmt: skip
        out = torch.where(empty, plain, out)
    return out[0].permute(1, 2, 3, 0).to(grid.dtype)


def prompt_guided_pool(grid: torch.Tensor, weights: torch.Tensor | None, kernel, stride, temperature: float = 0.01):
    """PPLLaVA's prompt-guided pooling; None or constant weights are conv3d average pooling (exactly)."""
    if weights is None or bool(weights.max() == weights.min()):
        return conv3d_pool(grid, kernel, stride)
    return weighted_window_pool(grid, weights, kernel, stride, temperature)


# ---------------------------------------------------------------------------------------------------------------------
# Frame selection and keyframes.


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


def group_anchors(scores: torch.Tensor, frames: int, group: int) -> list[int]:
    """Index of the best-scoring frame of each group of `group` consecutive frames (ties: the earlier one)."""
    scores = scores.cpu()
    anchors = []
    for start in range(0, frames, group):
        part = scores[start : start + group]
        anchors.append(start + int(torch.sort(part, descending=True, stable=True).indices[0]))
    return anchors


# ---------------------------------------------------------------------------------------------------------------------
# The stage loop for configs with question-guided stages (pooling.pool_video delegates here).


def _check_guide(guide: Guide | None, grid: torch.Tensor) -> None:
    if guide is not None and guide.shape != tuple(grid.shape[:3]):
        raise AdapterError(
            f"the question guide covers a {'x'.join(map(str, guide.shape))} grid but the video grid is "
            f"{'x'.join(map(str, grid.shape[:3]))}; score the same frames that are pooled"
        )


def guided_pool_video(grid: torch.Tensor, stages: Sequence[Mapping], guide: Guide | None, *, coordinates=False):
    """pool_video for normalized stages, question-guided ones included (see the module docstring)."""
    _check_grid(grid)
    _check_guide(guide, grid)
    info = {"guide": guide, "kept_frames": None, "anchors": None}
    origin = torch.arange(grid.shape[0])  # input frame behind each current frame (until time is pooled)
    for stage in stages:
        kind = stage["type"]
        if kind == "select_frames":
            frames = grid.shape[0]
            _check_select(stage, *grid.shape[:3])
            scores = guide.frame_scores(stage["score"]) if guide is not None else None
            index = select_frame_indices(scores, frames, stage["segments"], stage["per_segment"])
            selected = grid.index_select(0, index.to(grid.device))
            if coordinates and stage["positions"] == "repacked":
                selected = selected.clone()
                selected[..., 0] = grid[: len(index), :, :, 0]
            info["kept_frames"] = tuple(int(origin[i]) for i in index) if origin is not None else None
            origin = origin.index_select(0, index) if origin is not None else None
            grid, guide = selected, (guide.select(index) if guide is not None else None)
        elif kind == "progressive":
            anchors = None
            if stage.get("anchor") == "score" and guide is not None:
                anchors = group_anchors(guide.frame_scores(stage["score"]), grid.shape[0], stage["group"])
                info["anchors"] = tuple(anchors)
            pooled = progressive_pool(grid, stage["group"], stage["strides"], stage["mode"], anchors=anchors)
            return PooledVideo(pooled.frames, guided=GuidedInfo(**info))
        elif kind == "prompt_guided":
            kernel, stride = _conv3d_window(stage, *grid.shape[:3])
            weights = guide.weights() if guide is not None else None
            pooled = prompt_guided_pool(grid, weights, kernel, stride, stage["temperature"])
            if guide is not None:
                guide = guide.pooled(lambda g, k=kernel, s=stride: conv3d_pool(g, k, s))
            grid, origin = pooled, (origin if kernel[0] == stride[0] == 1 else None)
        else:
            if origin is not None and not _keeps_time(stage, *grid.shape[:3]):
                origin = None
            if guide is not None:
                guide = guide.pooled(lambda g, st=stage: _apply_uniform(g, st))
            grid = _apply_uniform(grid, stage)
    return PooledVideo(tuple(grid.unbind(0)), guided=GuidedInfo(**info))


def _keeps_time(stage: Mapping, T: int, H: int, W: int) -> bool:
    """True when a uniform stage maps frame i to frame i (no temporal averaging)."""
    if stage["type"] == "temporal":
        return stage["kernel"] == 1
    if stage["type"] == "adaptive3d":
        return stage["output"][0] == T
    kernel, stride = _conv3d_window(stage, T, H, W)
    return kernel[0] == stride[0] == 1
