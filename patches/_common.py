"""Helpers shared by the LLaVA-family patches: grids, segments, frames for the scorer, chunking, hand-built inputs."""

from __future__ import annotations

import math

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.family import Segment


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


# --- the frames the question scorer sees: (pixels (n, 3, h, w), rows of the vision tower's batch) per segment


def image_frames(frames: torch.Tensor, tower_rows: torch.Tensor, segments) -> list[tuple]:
    """Frames given as images, one per image placeholder run member (a stock single image counts one)."""
    out, cursor = [], 0
    for seg in segments:
        count = seg.frames if seg.grid is not None else 1
        out.append((frames[cursor : cursor + count], tower_rows[cursor : cursor + count]))
        cursor += count
    return out


def single_images(model, encoder_kwargs, segments) -> list[tuple]:
    pixels = encoder_kwargs["pixel_values"]
    return image_frames(pixels, torch.arange(pixels.shape[0]), segments)


def video_frames(model, encoder_kwargs, segments) -> list[tuple]:
    """(B, T, C, H, W) video pixels: each video's frames, and its rows of the tower's (B * T) batch."""
    videos = encoder_kwargs["pixel_values_videos"]
    batch, frames = videos.shape[:2]
    return [(videos[b], torch.arange(b * frames, (b + 1) * frames)) for b in range(batch)][: len(segments)]


# --- chunked encoding


def split_frame_axis(encoder_kwargs, bounds):
    """(B, T, C, H, W) video pixels, a chunk of frames of every video at a time."""
    pixels = encoder_kwargs["pixel_values_videos"]
    videos = tuple(range(pixels.shape[0]))
    for start, stop in bounds(pixels.shape[1]):
        # a copy of one chunk only when the batch has several videos
        yield videos, {"pixel_values_videos": pixels[:, start:stop].contiguous()}


# --- hand-built inputs (profiling)


def video_run_inputs(config, frames, frame_size, words, text_before, text_after, generator, dtype, *, stock_tokens):
    """One video as one run of video placeholders, pixels (1, T, 3, S, S) at the tower's input size."""
    run = torch.full((stock_tokens(config, frames),), config.video_token_id)
    ids = torch.cat([words(text_before), run, words(text_after)])[None]
    side = config.vision_config.image_size
    pixels = torch.randn((1, frames, 3, side, side), generator=generator, dtype=torch.float32).to(dtype)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": pixels}
