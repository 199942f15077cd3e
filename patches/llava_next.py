"""LLaVA-NeXT: frames arrive as consecutive `<image>`s; a run of >= 2 images is pooled as one video on the
base tile (the whole frame resized to the vision tower's input, 24x24 tokens on CLIP-L/336).

The stock `get_image_features` runs with `pack_image_features` wrapped on this instance to keep each image's
base tile beside the stock anyres packing (used for single images and to count each image's tokens).
"""

from __future__ import annotations

from longctx_adapter.patches._common import image_run_segments, pack_list, tower_grid

from longctx_adapter.hooks.family import make_family, swapped


def encode(model, encoder_kwargs, run_lengths, adapter_config):
    inner = model.model
    stock_pack = inner.pack_image_features
    base_tiles = []

    def pack_keeping_base_tiles(image_features, *args, **kwargs):
        base_tiles.extend(feature[0] for feature in image_features)  # (num_patches, H*W, D): patch 0 is the base
        return stock_pack(image_features, *args, **kwargs)

    with swapped(inner, "pack_image_features", pack_keeping_base_tiles):
        output = inner.get_image_features(**encoder_kwargs, return_dict=True)
    per_image = list(output.pooler_output)
    segments = image_run_segments(run_lengths, per_image, base_tiles, adapter_config.pool_single_images)
    return segments, output


FAMILY = make_family(
    "llava_next",
    "image",
    hooked=("pack_image_features", "vision_tower", "multi_modal_projector"),
    frame_grid=tower_grid,
    encode=encode,
    pack=pack_list,
)
