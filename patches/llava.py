"""LLaVA-1.5: frames arrive as consecutive `<image>`s; each run of >= 2 adjacent images is pooled as one video.

A single image stays stock unless `pool_single_images=True`.
"""

from __future__ import annotations

from longctx_adapter.family import VisualFamily

from ._common import image_run_segments


def frame_grid(config):
    side = config.vision_config.image_size // config.vision_config.patch_size
    return side, side


def encode(model, encoder_kwargs, run_lengths, adapter_config):
    output = model.model.get_image_features(**encoder_kwargs, return_dict=True)
    per_image = list(output.pooler_output)  # (H*W, D) each
    return image_run_segments(run_lengths, per_image, per_image, adapter_config.pool_single_images), output


def pack(template, features, side_features=()):
    template.pooler_output = list(features)
    return template


FAMILY = VisualFamily(
    model_types=("llava",),
    modality="image",
    token_attr="image_token_id",
    pixel_keys=("pixel_values",),
    encoder_name="get_image_features",
    required=(
        "model.get_image_features",
        "model.vision_tower",
        "model.multi_modal_projector",
        "model.language_model",
        "model.language_model.rotary_emb",
    ),
    frame_grid=frame_grid,
    encode=encode,
    pack=pack,
)
