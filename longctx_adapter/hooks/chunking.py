"""Frame-chunked vision encoding (`AdapterConfig.vision_chunk_frames`): the same features, a flat encoder peak.

Without chunking the vision tower sees every frame of a video in one batch, so its activations (and the unpooled
projected features) grow with the frame count: at 256 frames on LLaVA-OneVision-7B the encoder alone can peak above
the language model. With `vision_chunk_frames=C` the adapter

1. splits each video's pixels into chunks of C frames as the family declares (`split_video`; LLaVA family:
   the frame axis of `(B, T, C, H, W)` pixels; Qwen-VL: the patch rows of C frames with `video_grid_thw`
   t = C / temporal_patch_size),
2. runs the family's own stock encoder (`family.encode`) on one chunk at a time, and
3. pools each chunk as soon as it is encoded, keeping only pooled tokens, when the pooling stages are *frame-local*
   at that chunk size (below); otherwise it keeps each chunk's unpooled grid and pools the concatenation once at
   the end (encoder activations stay flat, the unpooled features of the whole video exist once).

Frame-local stages (pooling chunk by chunk gives exactly the tokens of pooling the whole video) are decided by each
stage's `chunk_frames` rule (`ops.pooling.chunk_plan`): e.g. progressive when the chunk (in grid frames, after
earlier temporal stages) is a multiple of its group, temporal when kernel == stride divides the chunk, conv3d with
an explicit temporal kernel == stride dividing the chunk; never adaptive3d (its windows depend on the whole
video's frame count) nor a question-guided stage.
A last chunk whose length is not a multiple of the stages' temporal reduction is merged into the chunk before it,
so every window sees the same frames as in the unchunked run.

Equality with the unchunked path: pooling is per frame/window, so it is bit-identical given identical encoder
output; the encoder is batched over frames and runs the same per-frame computation on a smaller batch. On CPU in
float32 and bfloat16 the tests find bit-identical results for the LLaVA family; BLAS kernels may choose different
blockings for a different batch size, so the guarantee stated is equality within 1e-5 relative (fp32).

The template output handed to the stock forward keeps only `pooler_output` (and Qwen3-VL's `deepstack_features`),
which is all a stock forward reads from pre-encoded outputs: the vision tower's hidden states are not kept alive
through prefill and decoding (the unchunked path keeps them, as the stock model does).

Qwen3-VL's DeepStack features (`Segment.side_grids`) are chunked and pooled exactly like the main grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.family import Segment
from longctx_adapter.ops.pooling import PooledVideo, chunk_plan, pool_video
from longctx_adapter.registry import families_where

__all__ = ["ChunkedSegment", "chunk_plan", "encode_segments", "pool_segment", "pool_side_grids"]


@dataclass
class ChunkedSegment(Segment):
    """A video encoded and pooled chunk by chunk.

    `grid` is a tensor on the meta device: it carries the unpooled (T, H, W, D) shape for stats and position code
    but no data (any attempt to compute with it fails loudly). The pooled tokens are in `pooled`, the pooled
    DeepStack features in `side_pooled`.
    """

    pooled: PooledVideo | None = None
    side_pooled: tuple = ()


def pool_segment(seg: Segment, stages, guide=None) -> PooledVideo:
    """The pooled frames of a segment: precomputed for a ChunkedSegment, pooled here otherwise.

    guide: the question guide of the segment's grid (question-guided stages are never frame-local, so a
    ChunkedSegment never needs one)."""
    if isinstance(seg, ChunkedSegment):
        return seg.pooled
    return pool_video(seg.grid, stages, guide)


def pool_side_grids(seg: Segment, stages, guide=None, trace=None) -> tuple:
    """The pooled side grids (Qwen3-VL DeepStack) of a segment; trace: the main grid's `PooledVideo.trace`, so
    stages that decide from the data merge the side grids exactly as they merged the main one."""
    if isinstance(seg, ChunkedSegment):
        return seg.side_pooled
    return tuple(pool_video(g, stages, guide, trace=trace).flatten() for g in seg.side_grids)


def _chunks(total: int, chunk: int, reduction: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of `chunk` frames; a last chunk that is not a multiple of `reduction` joins the one before."""
    bounds = [(s, min(s + chunk, total)) for s in range(0, total, chunk)]
    if len(bounds) > 1 and (bounds[-1][1] - bounds[-1][0]) % reduction:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def _lean_template(template):
    """A fresh output of the same type holding only what a stock forward reads from pre-encoded outputs."""
    kept = {"pooler_output": template.pooler_output}
    if getattr(template, "deepstack_features", None) is not None:
        kept["deepstack_features"] = template.deepstack_features
    return type(template)(**kept)


class _Video:
    """Chunks of one video as they arrive: pooled frames (frame-local) or unpooled grids (pooled at the end)."""

    def __init__(self, stages, local: bool, blocks_per_frame: bool = False):
        self.stages, self.local, self.blocks_per_frame = stages, local, blocks_per_frame
        self.frames: list = []  # pooled frames, or unpooled grids
        self.sides: list[list] = []
        self.stock_tokens = 0
        self.tail = None
        self.shape = None  # (T, H, W, D) so far

    def add(self, seg: Segment) -> None:
        if seg.grid is None:
            raise AdapterError("vision_chunk_frames only chunks videos pooled as grids; this input has a stock segment")
        tail_len = 0 if seg.tail is None else seg.tail.shape[0]
        if self.tail is None and seg.tail is not None:
            self.tail = seg.tail.clone()  # a view would keep this chunk's whole encoder output alive
            self.stock_tokens += tail_len
        self.stock_tokens += seg.stock_tokens - tail_len
        t, h, w, d = seg.grid.shape
        self.shape = (t, h, w, d) if self.shape is None else (self.shape[0] + t, h, w, d)
        if self.local:
            self.frames.extend(_own(f, seg.grid) for f in pool_video(seg.grid, self.stages).frames)
            pooled_sides = [pool_video(g, self.stages).flatten() for g in seg.side_grids]
        else:
            self.frames.append(seg.grid)
            pooled_sides = list(seg.side_grids)
        if not self.sides:
            self.sides = [[] for _ in pooled_sides]
        for bucket, side in zip(self.sides, pooled_sides):
            bucket.append(side)

    def segment(self) -> Segment:
        runs = self.shape[0] if self.blocks_per_frame else 1  # Qwen3-VL: one placeholder run per grid frame
        if self.local:
            sides = tuple(torch.cat(parts) for parts in self.sides)
            grid = torch.empty(self.shape, device="meta")
            return ChunkedSegment(
                stock_tokens=self.stock_tokens,
                grid=grid,
                tail=self.tail,
                runs=runs,
                pooled=PooledVideo(tuple(self.frames)),
                side_pooled=sides,
            )
        grid = torch.cat(self.frames) if len(self.frames) > 1 else self.frames[0]
        sides = tuple(torch.cat(parts) for parts in self.sides)
        return Segment(stock_tokens=self.stock_tokens, grid=grid, tail=self.tail, runs=runs, side_grids=sides)


def _own(frame: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """A pooled frame that is still a view of the unpooled chunk (stride 1) is copied, so the chunk can be freed."""
    if frame.untyped_storage().data_ptr() == grid.untyped_storage().data_ptr():
        return frame.clone()
    return frame


def encode_segments(family, model, encoder_kwargs: dict, run_lengths, config):
    """`family.encode`, or the same frame chunk by frame chunk when `config.vision_chunk_frames` is set."""
    chunk = getattr(config, "vision_chunk_frames", None)
    if not chunk:
        return family.encode(model, encoder_kwargs, run_lengths, config)
    if family.split_video is None:
        raise AdapterError(
            f"vision_chunk_frames is not supported for model_type {model.config.model_type!r} (frames arrive as "
            f"separate images there); it works for {families_where(lambda f: f.split_video is not None)}. "
            "Drop vision_chunk_frames for this model"
        )
    step = family.temporal_patch(model.config)
    if chunk % step:
        raise AdapterError(
            f"vision_chunk_frames={chunk} must be a multiple of this model's temporal patch size ({step} frames)"
        )
    local, reduction, _ = chunk_plan(config.pooling, chunk // step)
    videos: dict[int, _Video] = {}
    template = None
    for indices, part in family.split_video(encoder_kwargs, lambda total: _chunks(total, chunk // step, reduction)):
        template = None  # free the previous chunk's encoder output before encoding the next one
        segments, template = family.encode(model, {**encoder_kwargs, **part}, run_lengths, config)
        for index, seg in zip(indices, segments):
            videos.setdefault(index, _Video(config.pooling, local, family.blocks_per_frame)).add(seg)
        part = seg = segments = None  # the last segment's grid views this chunk's whole encoder output: drop it now
    return [videos[index].segment() for index in sorted(videos)], _lean_template(template)
