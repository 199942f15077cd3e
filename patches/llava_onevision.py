"""LLaVA-OneVision: pooling acts on the 27x27 SigLIP grid in place of the built-in bilinear 2x.

The stock `get_video_features` runs with `apply_pooling` shadowed by identity on this instance, so vision tower,
feature-layer selection and projector stay HF's own; the one `image_newline` per video is kept after the pooled
tokens. `{"type": "progressive", "group": 1, "strides": [2]}` reproduces the stock tokens bit-exactly.
"""

from __future__ import annotations

import math

import torch
from longctx_adapter.patches._common import tower_grid, video_segments
from transformers.modeling_outputs import BaseModelOutputWithPooling

from longctx_adapter.hooks.family import make_family, swapped


def _stock_side(side: int) -> int:
    return math.ceil(side / 2)  # the built-in bilinear 2x that pooling replaces


def encode(model, encoder_kwargs, run_lengths, adapter_config):
    inner = model.model
    frames = encoder_kwargs["pixel_values_videos"].shape[1]
    with swapped(inner, "apply_pooling", lambda features: features):
        output = inner.get_video_features(**encoder_kwargs, return_dict=True)
    per_video = list(output.pooler_output)  # (frames*H*W + 1, D) each: the newline is last
    return video_segments(per_video, frames, tail_tokens=1, stock_side=_stock_side), output


def pack(template: BaseModelOutputWithPooling, features, side_features=()):
    # The stock forward does `pooler_output.flatten(0, 1)`. A (B, N, D) stack keeps one video per row, which
    # generate() needs to expand rows for beams; rows of different lengths (not produced by the stock
    # processor, whose batches share a frame count) fall back to one (1, sum N, D) tensor.
    if len({f.shape[0] for f in features}) == 1:
        template.pooler_output = torch.stack(features)
    else:
        template.pooler_output = torch.cat(features, dim=0)[None]
    return template


FAMILY = make_family(
    "llava_onevision",
    "video",
    hooked=("apply_pooling", "vision_tower", "multi_modal_projector"),
    frame_grid=tower_grid,
    encode=encode,
    pack=pack,
)
