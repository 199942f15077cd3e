"""LLaVA-1.5: frames arrive as consecutive `<image>`s; each run of >= 2 adjacent images is pooled as one video.

A single image stays stock unless `pool_single_images=True`.
"""

from __future__ import annotations

from longctx_adapter.patches._common import image_run_segments, pack_list, tower_grid

from longctx_adapter.hooks.family import make_family


def encode(model, encoder_kwargs, run_lengths, adapter_config):
    output = model.model.get_image_features(**encoder_kwargs, return_dict=True)
    per_image = list(output.pooler_output)  # (H*W, D) each
    return image_run_segments(run_lengths, per_image, per_image, adapter_config.pool_single_images), output


FAMILY = make_family(
    "llava",
    "image",
    hooked=("vision_tower", "multi_modal_projector"),
    frame_grid=tower_grid,
    encode=encode,
    pack=pack_list,
)
