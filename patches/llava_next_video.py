"""LLaVA-NeXT-Video: pooling acts on the stock per-frame grid (12x12 after the model's own 2x average pooler).

Only videos are pooled; images (`pixel_values`) take the stock path.
"""

from __future__ import annotations

from longctx_adapter.patches._common import pack_list, square_side, tower_grid, video_segments

from longctx_adapter.hooks.family import make_family


def frame_grid(config):
    side = tower_grid(config)[0] // config.spatial_pool_stride
    return side, side


def encode(model, encoder_kwargs, run_lengths, adapter_config):
    frames = encoder_kwargs["pixel_values_videos"].shape[1]
    output = model.model.get_video_features(**encoder_kwargs, return_dict=True)
    per_video = list(output.pooler_output)  # (frames*H*W, D) each
    square_side(per_video[0].shape[0] // frames)
    return video_segments(per_video, frames), output


FAMILY = make_family(
    "llava_next_video",
    "video",
    hooked=("vision_tower", "vision_resampler"),
    frame_grid=frame_grid,
    encode=encode,
    pack=pack_list,
)
