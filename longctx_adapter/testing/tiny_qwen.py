"""Tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL models and hand-built video inputs (part of the tiny factory).

Real `mrope_section` layouts scaled to a 16-dim head: Qwen2/2.5-VL [2, 3, 3] (the 7B's [16, 24, 24] / 8),
Qwen3-VL [2, 3, 3] interleaved. A video of `frames` frames at patch grid (frames, 8, 8) gives
`frames/2` temporal patches of 4x4 = 16 merged tokens each. Qwen3-VL puts each temporal patch in its own
`<|vision_start|> ... <|vision_end|>` block preceded by timestamp text, all inside one more
`<|vision_start|> ... <|vision_end|>` pair, as its processor does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

QWEN_TINY_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
PATCH = 4
MERGE = 2
TEMPORAL_PATCH = 2
PATCH_GRID = 8  # patches per side of a frame: 4x4 merged tokens

_CLASSES = {
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration),
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration),
    "qwen3_vl": (Qwen3VLConfig, Qwen3VLForConditionalGeneration),
}


def _ids():
    from longctx_adapter.testing.tiny import (
        BOS_ID,
        EOS_ID,
        IMAGE_TOKEN_ID,
        PAD_ID,
        TINY_VOCAB_SIZE,
        VIDEO_TOKEN_ID,
        _token_id,
    )

    return dict(
        vocab=TINY_VOCAB_SIZE,
        pad=PAD_ID,
        bos=BOS_ID,
        eos=EOS_ID,
        image=IMAGE_TOKEN_ID,
        video=VIDEO_TOKEN_ID,
        start=_token_id("<|vision_start|>"),
        end=_token_id("<|vision_end|>"),
    )


def qwen_tiny_config(model_type: str, **text_overrides):
    ids = _ids()
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}
    if model_type == "qwen3_vl":
        rope["mrope_interleaved"] = True
    text = dict(
        vocab_size=ids["vocab"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters=rope,
        pad_token_id=ids["pad"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
    )
    text.update(text_overrides)
    common_vision = dict(in_channels=3, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL_PATCH)
    if model_type == "qwen2_vl":
        vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, **common_vision)
    elif model_type == "qwen2_5_vl":
        vision = dict(
            depth=2,
            hidden_size=32,
            out_hidden_size=64,
            intermediate_size=64,
            num_heads=2,
            window_size=16,
            fullatt_block_indexes=[1],
            tokens_per_second=4,
            **common_vision,
        )
    elif model_type == "qwen3_vl":
        vision = dict(
            depth=2,
            hidden_size=32,
            out_hidden_size=64,
            intermediate_size=64,
            num_heads=2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0],
            **common_vision,
        )
    else:
        raise ValueError(f"no tiny Qwen model for {model_type!r}; known: {QWEN_TINY_TYPES}")
    config_class, _ = _CLASSES[model_type]
    return config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["start"],
        vision_end_token_id=ids["end"],
        pad_token_id=ids["pad"],
    )


def qwen_tiny_model(model_type: str, seed=0, attn_implementation="sdpa", dtype=torch.float32, **text_overrides):
    config = qwen_tiny_config(model_type, **text_overrides)
    _, model_class = _CLASSES[model_type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval()


def tokens_per_temporal_patch(patch_grid: int = PATCH_GRID) -> int:
    return (patch_grid // MERGE) ** 2


def qwen_hand_inputs(
    model_type: str,
    frames: int,
    batch: int = 1,
    text_before: int | Sequence[int] = 3,
    text_after: int | Sequence[int] = 4,
    frame_counts: Sequence[int] | None = None,
    seed: int = 0,
    patch_grid: int = PATCH_GRID,
    seconds_per_grid: float = 1.0,
    outer_markers: bool = True,
) -> dict:
    """Hand-built, left-padded Qwen-VL video inputs in the stock layout, deterministic from `seed`.

    Qwen3-VL: `<|vision_start|>` + per temporal patch (2 stand-in timestamp words, `<|vision_start|>`, tokens,
    `<|vision_end|>`) + `<|vision_end|>`, as transformers' processor writes it; outer_markers=False leaves out the
    outer pair (a hand-written prompt).
    """
    from longctx_adapter.testing.tiny import PAD_ID, TEXT_TOKEN_IDS, _per_row

    ids = _ids()
    counts = list(frame_counts) if frame_counts is not None else [frames] * batch
    if len(counts) != batch or any(c % TEMPORAL_PATCH for c in counts):
        raise ValueError(f"frame_counts {counts} must have {batch} entries, each a multiple of {TEMPORAL_PATCH}")
    before = _per_row(text_before, batch, "text_before", ragged=True)
    after = _per_row(text_after, batch, "text_after", ragged=False)
    gen = torch.Generator().manual_seed(seed)
    words = torch.tensor(TEXT_TOKEN_IDS, dtype=torch.long)
    per_block = tokens_per_temporal_patch(patch_grid)

    rows, types = [], []
    for b in range(batch):
        t = counts[b] // TEMPORAL_PATCH
        pre = words[torch.randint(len(words), (before[b],), generator=gen)].tolist()
        post = words[torch.randint(len(words), (after[b],), generator=gen)].tolist()
        if model_type == "qwen3_vl":
            vision, vision_types = [], []
            for _ in range(t):
                stamp = words[torch.randint(len(words), (2,), generator=gen)].tolist()  # "<k.0 seconds>" stand-in
                vision += stamp + [ids["start"]] + [ids["video"]] * per_block + [ids["end"]]
                vision_types += [0] * (len(stamp) + 1) + [2] * per_block + [0]
            if outer_markers:
                vision, vision_types = [ids["start"]] + vision + [ids["end"]], [0] + vision_types + [0]
        else:
            vision = [ids["start"]] + [ids["video"]] * (t * per_block) + [ids["end"]]
            vision_types = [0] + [2] * (t * per_block) + [0]
        rows.append(pre + vision + post)
        types.append([0] * len(pre) + vision_types + [0] * len(post))
    length = max(len(r) for r in rows)
    input_ids = torch.full((batch, length), PAD_ID, dtype=torch.long)
    mm_types = torch.zeros((batch, length), dtype=torch.int32)
    mask = torch.zeros((batch, length), dtype=torch.long)
    for b, (row, typ) in enumerate(zip(rows, types)):
        input_ids[b, length - len(row) :] = torch.tensor(row)
        mm_types[b, length - len(row) :] = torch.tensor(typ, dtype=torch.int32)
        mask[b, length - len(row) :] = 1
    grids = torch.tensor([[c // TEMPORAL_PATCH, patch_grid, patch_grid] for c in counts], dtype=torch.long)
    patch_dim = 3 * TEMPORAL_PATCH * PATCH * PATCH
    pixels = torch.randn((int(grids.prod(-1).sum()), patch_dim), generator=gen)
    out = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "mm_token_type_ids": mm_types,
        "pixel_values_videos": pixels,
        "video_grid_thw": grids,
    }
    if model_type == "qwen2_5_vl":
        out["second_per_grid_ts"] = torch.full((batch,), float(seconds_per_grid))
    return out


# Qwen3-VL's video budget is over all frames (t*h*w): from one temporal patch to QWEN3_VIDEO_FRAMES frames of
# PATCH * PATCH_GRID pixels per side, so 32x32 videos of 2 to 64 frames keep their size (the (t, 8, 8) grid).
QWEN3_VIDEO_FRAMES = 64


def qwen_tiny_processor(model_type: str):
    """The real HF Qwen2-VL / Qwen2.5-VL / Qwen3-VL processor on the tiny tokenizer, sized for the tiny models.

    Qwen2/2.5-VL: a frame of `PATCH * PATCH_GRID` pixels per side (smaller or larger frames are resized to it)
    gives the (8, 8) patch grid of :func:`qwen_hand_inputs`; a prompt needs no vision markers around `<video>`.
    Qwen3-VL: the video processor's pixel budget is shared by all frames (size shortest_edge / longest_edge bound
    t*h*w): `{"shortest_edge": 2 * 32 * 32, "longest_edge": QWEN3_VIDEO_FRAMES * 32 * 32}` keeps 32x32 frames at
    32x32 (the (t, 8, 8) grid) for 2 to 64 frames, and resizes larger or longer videos. Its prompt writes
    `<|vision_start|><video><|vision_end|>` (the chat template does), which the per-frame block rewrite relies on;
    the tiny tokenizer learns those markers as special tokens, at the ids the tiny config uses."""
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    from longctx_adapter.testing.tiny import (
        CHAT_TEMPLATE,
        IMAGE_TOKEN,
        VIDEO_TOKEN,
        VISION_END,
        VISION_START,
        tiny_tokenizer,
    )

    classes = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor, "qwen3_vl": Qwen3VLProcessor}
    if model_type not in classes:
        raise ValueError(f"no tiny Qwen processor for {model_type!r}; known: {sorted(classes)}")
    tok = tiny_tokenizer()
    tok.image_token, tok.video_token = IMAGE_TOKEN, VIDEO_TOKEN
    pixels = (PATCH * PATCH_GRID) ** 2
    sizes = dict(patch_size=PATCH, temporal_patch_size=TEMPORAL_PATCH, merge_size=MERGE)
    image_processor = Qwen2VLImageProcessor(**sizes, min_pixels=pixels, max_pixels=pixels)
    if model_type == "qwen3_vl":
        tok.add_tokens([VISION_START, VISION_END], special_tokens=True)  # already words: they keep their ids
        budget = {"shortest_edge": TEMPORAL_PATCH * pixels, "longest_edge": QWEN3_VIDEO_FRAMES * pixels}
        video_processor = Qwen3VLVideoProcessor(**sizes, size=budget, cap_pixels_per_frame=False)
        template = CHAT_TEMPLATE.replace(VIDEO_TOKEN, VISION_START + VIDEO_TOKEN + VISION_END)
    else:
        video_processor = Qwen2VLVideoProcessor(
            **sizes, min_pixels=pixels, max_pixels=pixels, cap_pixels_per_frame=False
        )
        template = CHAT_TEMPLATE
    return classes[model_type](
        image_processor=image_processor, tokenizer=tok, video_processor=video_processor, chat_template=template
    )
