"""Vision-tower weight names that transformers 5.x writes and vLLM 0.32's LLaVA classes do not read.

transformers 5.x `save_pretrained` writes a CLIP/SigLIP tower built from a config (a fresh or converted model) as
`vision_tower.{embeddings,encoder,...}.*`; a model loaded from a released checkpoint is saved back in that
checkpoint's `vision_tower.vision_model.*` layout. vLLM 0.32's LLaVA-OneVision and LLaVA-NeXT-Video classes read only
the latter and stop with "There is no module or parameter named 'vision_tower.embeddings'". The plugin's classes add
the missing level; every name stock vLLM reads maps exactly as before.
"""

from __future__ import annotations

from vllm.model_executor.models.utils import WeightsMapper

#: top-level modules of transformers' CLIP and SigLIP vision transformers (below `vision_model`)
VISION_TRANSFORMER_PARTS = ("embeddings", "pre_layrnorm", "encoder", "post_layernorm", "head")


def with_vision_model_level(stock: WeightsMapper) -> WeightsMapper:
    """`stock`, then `vision_tower.<part>.` -> `vision_tower.vision_model.<part>.` (after `model.` is stripped)."""
    return stock | WeightsMapper(
        orig_to_new_prefix={
            f"vision_tower.{part}.": f"vision_tower.vision_model.{part}." for part in VISION_TRANSFORMER_PARTS
        }
    )
