"""The question guide of question-guided pooling
(docs/methods.md#prompt-guided and #frame-selection, keyframe progressive pooling).

A `Guide` carries the question relevance of every token of the grid being pooled, as *logits*: the scorer's
scaled cosine similarity of each token to the question (CLIP: `exp(logit_scale) * cos`, SigLIP: plus
`logit_bias`; see longctx_adapter/hooks/scorer.py). The stages that use it turn logits into weights their own way
(`prompt_guided`: window softmax, `select_frames`: frame scores, `progressive` with `"anchor": "score"`: the sharp
frame of each group); see their modules in longctx_adapter/ops/stages/.

Between stages the guide follows the grid: selected frames keep their logits, uniform stages (temporal,
adaptive3d, conv3d, prompt_guided) average the logit map with the same windows as the features (frame logits
likewise along time), so a later stage scores the grid it actually sees.

Without a guide (no question, see longctx_adapter/hooks/question.py) every stage takes its uniform form:
prompt_guided = conv3d average pooling, select_frames keeps `per_segment` evenly spaced frames per segment,
anchor "score" = anchor "first".

Positions: pooling a (t, row, column) coordinate grid with the same stages and the same guide (as
positions.pooled_coordinates does) makes the same decisions, so every pooled token's M-RoPE ids are the
(weighted) centre of what it averages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longctx_adapter.errors import AdapterError

__all__ = ["Guide", "GuidedInfo", "check_guide"]


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


def check_guide(guide: Guide | None, grid: torch.Tensor) -> None:
    if guide is not None and guide.shape != tuple(grid.shape[:3]):
        raise AdapterError(
            f"the question guide covers a {'x'.join(map(str, guide.shape))} grid but the video grid is "
            f"{'x'.join(map(str, grid.shape[:3]))}; score the same frames that are pooled"
        )
