"""LLaVA-NeXT: frames arrive as consecutive `<image>`s; a run of >= 2 images is pooled as one video on the
base tile (the whole frame resized to the vision tower's input, 24x24 tokens on CLIP-L/336).

The stock `get_image_features` runs with `pack_image_features` wrapped on this instance to keep each image's
base tile beside the stock anyres packing (used for single images and to count each image's tokens). The
question scorer sees each image's base tile too. No chunked encoding (each frame is its own image).
"""

from __future__ import annotations

import torch
from longctx_adapter.patches._common import image_frames, image_run_segments, pack_list, tower_grid

from longctx_adapter.family import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, make_family
from longctx_adapter.shadow import shadowed

# The paper's progressive defaults (group 4, strides 2 then 8) on the 24x24 base-tile grid.
PRESET = {"pooling": {"type": "progressive", "group": 4, "strides": [2, 8], "mode": "bilinear"}}


def encode(model, encoder_kwargs, run_lengths, adapter_config):
    inner = model.model
    stock_pack = inner.pack_image_features
    base_tiles = []

    def pack_keeping_base_tiles(image_features, *args, **kwargs):
        base_tiles.extend(feature[0] for feature in image_features)  # (num_patches, H*W, D): patch 0 is the base
        return stock_pack(image_features, *args, **kwargs)

    with shadowed(inner, "pack_image_features", pack_keeping_base_tiles):
        output = inner.get_image_features(**encoder_kwargs, return_dict=True)
    per_image = list(output.pooler_output)
    segments = image_run_segments(run_lengths, per_image, base_tiles, adapter_config.pool_single_images)
    return segments, output


def base_tiles(model, encoder_kwargs, segments):
    """Each image's base tile (its first anyres patch) and its row in the tower's batch."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    pixels = encoder_kwargs["pixel_values"]
    tiles = [
        image_size_to_num_patches(
            image_size=size,
            grid_pinpoints=model.config.image_grid_pinpoints,
            patch_size=model.config.vision_config.image_size,
        )
        for size in encoder_kwargs["image_sizes"]
    ]
    starts = [0]
    for n in tiles[:-1]:
        starts.append(starts[-1] + n)
    starts = torch.tensor(starts)
    base = pixels[:, 0] if pixels.dim() == 5 else pixels[starts.to(pixels.device)]
    return image_frames(base, starts, segments)


FAMILIES = (
    make_family(
        "llava_next",
        "image",
        hooked=("pack_image_features", "vision_tower", "multi_modal_projector"),
        frame_grid=tower_grid,
        encode=encode,
        pack=pack_list,
        preset=PRESET,
        input_norm=(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
        scorer_frames=base_tiles,
        prompt_placeholder="<image>",
    ),
)
