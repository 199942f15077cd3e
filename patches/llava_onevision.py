"""LLaVA-OneVision: pooling acts on the 27x27 SigLIP grid in place of the built-in bilinear 2x.

The stock `get_video_features` runs with `apply_pooling` shadowed by identity on this instance, so vision tower,
feature-layer selection and projector stay HF's own; the one `image_newline` per video is kept after the pooled
tokens. `{"type": "progressive", "group": 1, "strides": [2]}` reproduces the stock tokens bit-exactly.
"""

from __future__ import annotations

import math

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from longctx_adapter.family import VisualFamily, swapped

from ._common import video_segments


def frame_grid(config):
    side = config.vision_config.image_size // config.vision_config.patch_size
    return side, side


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


FAMILY = VisualFamily(
    model_types=("llava_onevision",),
    modality="video",
    token_attr="video_token_id",
    pixel_keys=("pixel_values_videos",),
    encoder_name="get_video_features",
    required=(
        "model.get_video_features",
        "model.apply_pooling",
        "model.vision_tower",
        "model.multi_modal_projector",
        "model.language_model",
        "model.language_model.rotary_emb",
    ),
    frame_grid=frame_grid,
    encode=encode,
    pack=pack,
)
