"""Small helpers shared by the LLaVA-family patches."""

from __future__ import annotations

import math

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.hooks.family import Segment


def tower_grid(config) -> tuple[int, int]:
    """Tokens per side of one frame as the vision tower sees it (image_size / patch_size)."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    return side, side


def pack_list(template, features, side_features=()):
    """The stock forward concatenates a list of per-image / per-video feature tensors."""
    template.pooler_output = list(features)
    return template


def square_side(tokens_per_frame: int) -> int:
    side = math.isqrt(tokens_per_frame)
    if side * side != tokens_per_frame:
        raise AdapterError(f"expected a square token grid per frame, got {tokens_per_frame} tokens")
    return side


def video_segments(per_video, frames: int, tail_tokens: int = 0, stock_side=None) -> list[Segment]:
    """(frames * H * W + tail_tokens, D) features per video -> one Segment with a (T, H, W, D) grid each.

    stock_side(side) gives the side of the grid the stock model would scatter (when it pools the grid itself).
    """
    segments = []
    for feats in per_video:
        body = feats.shape[0] - tail_tokens
        side = square_side(body // frames)
        grid = feats[:body].reshape(frames, side, side, feats.shape[-1])
        tail = feats[body:] if tail_tokens else None
        stock = side if stock_side is None else stock_side(side)
        segments.append(Segment(stock_tokens=frames * stock * stock + tail_tokens, grid=grid, tail=tail))
    return segments


def image_run_segments(
    run_lengths: list[int],
    stock_features: list[torch.Tensor],
    frame_features: list[torch.Tensor],
    pool_single_images: bool,
) -> list[Segment]:
    """Group consecutive images into the placeholder runs they fill; a run of >= 2 images is one video.

    stock_features: what the stock model would scatter per image (its length is the image's token count);
    frame_features: the (H*W, D) grid features pooling uses per image (the base tile on LLaVA-NeXT).
    """
    segments, cursor = [], 0
    for length in run_lengths:
        first, filled = cursor, 0
        while filled < length and cursor < len(stock_features):
            filled += stock_features[cursor].shape[0]
            cursor += 1
        if filled != length:
            raise AdapterError(
                f"an image placeholder run of {length} tokens does not match the token counts of the images "
                f"given ({filled} after {cursor - first} images); feed input_ids and pixels from the same processor call"
            )
        count = cursor - first
        if count >= 2 or pool_single_images:
            side = square_side(frame_features[first].shape[0])
            grid = torch.stack(frame_features[first:cursor]).reshape(count, side, side, -1)
            segments.append(Segment(stock_tokens=length, grid=grid))
        else:
            segments.append(Segment(stock_tokens=length, fixed=stock_features[first]))
    if cursor != len(stock_features):
        raise AdapterError(
            f"{len(stock_features)} images were given but the placeholders hold only {cursor}; "
            "feed input_ids and pixels from the same processor call"
        )
    return segments
