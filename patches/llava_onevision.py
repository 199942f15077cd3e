"""LLaVA-OneVision: pooling acts on the 27x27 SigLIP grid in place of the built-in bilinear 2x.

The stock `get_video_features` runs with `apply_pooling` shadowed by identity on this instance, so vision tower,
feature-layer selection and projector stay HF's own; the one `image_newline` per video is kept after the pooled
tokens. `{"type": "progressive", "group": 1, "strides": [2]}` reproduces the stock tokens bit-exactly. Pixels are
(B, T, C, H, W): chunked encoding splits the frame axis.
"""

from __future__ import annotations

import math

import torch
from longctx_adapter.patches._common import split_frame_axis, tower_grid, video_frames, video_run_inputs, video_segments

from longctx_adapter.family import HALF, EncoderCost, make_family
from longctx_adapter.shadow import shadowed

# Stride 2 on the 27x27 grid = the stock resolution; the paper's progressive defaults (group 4, strides 2 then 8).
# Visual window: 32 frames x 196 tokens = 6,272 (derived from the paper's Fig. 2 ramp boundaries).
PRESET = {
    "pooling": {"type": "progressive", "group": 4, "strides": [2, 8], "mode": "bilinear"},
    "rope": {"type": "yarn", "visual_window": 6272, "scope": "all", "attention_factor": "yarn"},
}
NEWLINES = 1  # image_newline tokens after each video


def _stock_side(side: int) -> int:
    return math.ceil(side / 2)  # the built-in bilinear 2x that pooling replaces


def encode(model, encoder_kwargs, run_lengths, adapter_config):
    inner = model.model
    frames = encoder_kwargs["pixel_values_videos"].shape[1]
    with shadowed(inner, "apply_pooling", lambda features: features):
        output = inner.get_video_features(**encoder_kwargs, return_dict=True)
    per_video = list(output.pooler_output)  # (frames*H*W + 1, D) each: the newline is last
    return video_segments(per_video, frames, tail_tokens=NEWLINES, stock_side=_stock_side), output


def pack(template, features, side_features=()):
    # The stock forward does `pooler_output.flatten(0, 1)`. A (B, N, D) stack keeps one video per row, which
    # generate() needs to expand rows for beams; rows of different lengths (not produced by the stock
    # processor, whose batches share a frame count) fall back to one (1, sum N, D) tensor.
    if len({f.shape[0] for f in features}) == 1:
        template.pooler_output = torch.stack(features)
    else:
        template.pooler_output = torch.cat(features, dim=0)[None]
    return template


def video_grid(config, frames: int, frame_size=None) -> tuple[int, int, int]:
    return (frames, *tower_grid(config))


def stock_tokens(config, frames: int, frame_size=None) -> int:
    side = _stock_side(tower_grid(config)[0])
    return frames * side * side + NEWLINES


def video_inputs(config, frames, frame_size, words, text_before, text_after, generator, dtype):
    return video_run_inputs(
        config, frames, frame_size, words, text_before, text_after, generator, dtype, stock_tokens=stock_tokens
    )


FAMILIES = (
    make_family(
        "llava_onevision",
        "video",
        hooked=("apply_pooling", "vision_tower", "multi_modal_projector"),
        frame_grid=tower_grid,
        encode=encode,
        pack=pack,
        preset=PRESET,
        input_norm=(HALF, HALF),
        scorer_frames=video_frames,
        prompt_placeholder="<video>",
        split_video=split_frame_axis,
        stock_tokens=stock_tokens,
        video_grid=video_grid,
        tail_tokens=NEWLINES,
        cost=EncoderCost("tower", pools_after_projector=True),  # SigLIP: no CLS token
        video_inputs=video_inputs,
    ),
)
