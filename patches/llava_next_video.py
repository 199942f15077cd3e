"""LLaVA-NeXT-Video: pooling acts on the stock per-frame grid (12x12 after the model's own 2x average pooler).

Only videos are pooled; images (`pixel_values`) take the stock path.
"""

from __future__ import annotations

from longctx_adapter.family import VisualFamily

from ._common import square_side, video_segments


def frame_grid(config):
    side = config.vision_config.image_size // config.vision_config.patch_size // config.spatial_pool_stride
    return side, side


def encode(model, encoder_kwargs, run_lengths, adapter_config):
    frames = encoder_kwargs["pixel_values_videos"].shape[1]
    output = model.model.get_video_features(**encoder_kwargs, return_dict=True)
    per_video = list(output.pooler_output)  # (frames*H*W, D) each
    square_side(per_video[0].shape[0] // frames)
    return video_segments(per_video, frames), output


def pack(template, features, side_features=()):
    template.pooler_output = list(features)
    return template


FAMILY = VisualFamily(
    model_types=("llava_next_video",),
    modality="video",
    token_attr="video_token_id",
    pixel_keys=("pixel_values_videos",),
    encoder_name="get_video_features",
    required=(
        "model.get_video_features",
        "model.vision_tower",
        "model.vision_resampler",
        "model.language_model",
        "model.language_model.rotary_emb",
    ),
    frame_grid=frame_grid,
    encode=encode,
    pack=pack,
)
