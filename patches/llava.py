"""LLaVA-1.5: frames arrive as consecutive `<image>`s; each run of >= 2 adjacent images is pooled as one video.

A single image stays stock unless `pool_single_images=True`. No chunked encoding (each frame is its own image).
"""

from __future__ import annotations

from longctx_adapter.patches._common import image_run_segments, pack_list, single_images, tower_grid

from longctx_adapter.family import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, make_family

# The paper's progressive defaults (group 4, strides 2 then 8) on the 24x24 CLIP grid: stride 2 -> 144 tokens,
# stride 8 -> 9 tokens.
PRESET = {"pooling": {"type": "progressive", "group": 4, "strides": [2, 8], "mode": "bilinear"}}


def encode(model, encoder_kwargs, run_lengths, adapter_config):
    output = model.model.get_image_features(**encoder_kwargs, return_dict=True)
    per_image = list(output.pooler_output)  # (H*W, D) each
    return image_run_segments(run_lengths, per_image, per_image, adapter_config.pool_single_images), output


FAMILIES = (
    make_family(
        "llava",
        "image",
        hooked=("vision_tower", "multi_modal_projector"),
        frame_grid=tower_grid,
        encode=encode,
        pack=pack_list,
        preset=PRESET,
        input_norm=(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
        scorer_frames=single_images,
        prompt_placeholder="<image>",
    ),
)
