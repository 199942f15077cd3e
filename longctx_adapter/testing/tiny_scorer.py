"""Tiny random CLIP / SigLIP scorers for tests and benchmarks (question-guided pooling), built from configs.

They share the word vocabulary of `tiny.tiny_tokenizer`, with a tokenizer that wraps text in `<s> ... </s>` (CLIP
pools at the first `</s>`). Nothing is downloaded; a fixed seed gives identical weights on every call.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipModel,
    SiglipTextConfig,
    SiglipVisionConfig,
)

from longctx_adapter.testing.tiny import _VOCAB, BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, TINY_VOCAB_SIZE, UNK

__all__ = ["clip_from_vision_tower", "tiny_clip", "tiny_scorer_tokenizer", "tiny_siglip"]


def tiny_scorer_tokenizer() -> PreTrainedTokenizerFast:
    """WordLevel tokenizer over the tiny vocabulary that adds `<s>` and `</s>` around every text."""
    backend = Tokenizer(models.WordLevel(vocab={tok: i for i, tok in enumerate(_VOCAB)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS)


def _text(cls, positions: int, hidden: int, **extra):
    return cls(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=positions,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        **extra,
    )


def _build(cls, config, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls._from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()


def tiny_clip(
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 4,
    hidden: int = 32,
    layers: int = 2,
    projection_dim: int = 16,
    text_positions: int = 77,
    vision_config: CLIPVisionConfig | None = None,
) -> CLIPModel:
    """A tiny random CLIPModel (77 text positions like the real one, so Long-CLIP stretching gives 248)."""
    vision = vision_config or CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = CLIPConfig(
        text_config=_text(CLIPTextConfig, text_positions, hidden).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=projection_dim,
    )
    return _build(CLIPModel, config, seed)


def tiny_siglip(
    seed: int = 0,
    image_size: int = 28,
    patch_size: int = 4,
    hidden: int = 32,
    layers: int = 2,
    text_projection: int | None = None,
    text_positions: int = 16,
) -> SiglipModel:
    """A tiny random SiglipModel with an attention-pooling head (text_projection != hidden breaks the sizes)."""
    text = _text(SiglipTextConfig, text_positions, hidden, projection_size=text_projection or hidden)
    vision = SiglipVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=True,
    )
    return _build(SiglipModel, SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict()), seed)


def clip_from_vision_tower(model, seed: int = 0, projection_dim: int = 16) -> CLIPModel:
    """A tiny CLIPModel whose vision model holds a copy of `model.model.vision_tower`'s weights (reuse tests)."""
    tower = model.model.vision_tower
    clip = tiny_clip(seed=seed, projection_dim=projection_dim, vision_config=tower.config)
    missing, unexpected = clip.vision_model.load_state_dict(tower.state_dict(), strict=True)
    assert not missing and not unexpected
    return clip
