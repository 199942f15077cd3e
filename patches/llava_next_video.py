"""LLaVA-NeXT-Video: pooling acts on the stock per-frame grid (12x12 after the model's own 2x average pooler).

Only videos are pooled; images (`pixel_values`) take the stock path. Pixels are (B, T, C, H, W): chunked encoding
splits the frame axis.
"""

from __future__ import annotations

from longctx_adapter.patches._common import (
    pack_list,
    split_frame_axis,
    square_side,
    tower_grid,
    video_frames,
    video_run_inputs,
    video_segments,
)

from longctx_adapter.family import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, EncoderCost, make_family

# The model already pools 2x (24x24 -> 12x12) before its projector: the paper's strides (2, 8) halved.
PRESET = {"pooling": {"type": "progressive", "group": 4, "strides": [1, 4], "mode": "bilinear"}}


def frame_grid(config):
    side = tower_grid(config)[0] // config.spatial_pool_stride
    return side, side


def encode(model, encoder_kwargs, run_lengths, adapter_config):
    frames = encoder_kwargs["pixel_values_videos"].shape[1]
    output = model.model.get_video_features(**encoder_kwargs, return_dict=True)
    per_video = list(output.pooler_output)  # (frames*H*W, D) each
    square_side(per_video[0].shape[0] // frames)
    return video_segments(per_video, frames), output


def video_grid(config, frames: int, frame_size=None) -> tuple[int, int, int]:
    return (frames, *frame_grid(config))


def stock_tokens(config, frames: int, frame_size=None) -> int:
    t, h, w = video_grid(config, frames)
    return t * h * w


def video_inputs(config, frames, frame_size, words, text_before, text_after, generator, dtype):
    return video_run_inputs(
        config, frames, frame_size, words, text_before, text_after, generator, dtype, stock_tokens=stock_tokens
    )


FAMILIES = (
    make_family(
        "llava_next_video",
        "video",
        hooked=("vision_tower", "vision_resampler"),
        frame_grid=frame_grid,
        encode=encode,
        pack=pack_list,
        preset=PRESET,
        input_norm=(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
        scorer_frames=video_frames,
        prompt_placeholder="<video>",
        split_video=split_frame_axis,
        stock_tokens=stock_tokens,
        video_grid=video_grid,
        cost=EncoderCost("tower", cls_token=True),  # CLIP; 2x average pool before the projector
        video_inputs=video_inputs,
    ),
)
