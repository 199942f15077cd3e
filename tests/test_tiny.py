"""The shared tiny-model factory: stock models run on its inputs, counts match, everything is deterministic."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from longctx_adapter.testing.tiny import (
    BOS_ID,
    EOS_ID,
    IMAGE_TOKEN_ID,
    PAD_ID,
    TINY_MODEL_TYPES,
    VIDEO_TOKEN_ID,
    frames_as_images,
    hand_inputs,
    placeholder_token_id,
    processor_inputs,
    stock_video_tokens,
    synthetic_video,
    tiny_config,
    tiny_model,
    tiny_processor,
    tiny_tokenizer,
    tokens_per_frame,
    video_modality,
)

ATTN = ("sdpa", "eager")
FRAMES = 4

# per-frame counts the stock tiny models expect for 64x64 frames (the documented grids)
EXPECTED_PER_FRAME = {"llava": 64, "llava_next": 64 + 16 * 16 + 16, "llava_next_video": 16, "llava_onevision": 16}


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(model_type, attn="sdpa"):
        if (model_type, attn) not in cache:
            cache[model_type, attn] = tiny_model(model_type, attn_implementation=attn)
        return cache[model_type, attn]

    return get


def _pixel_keys(inputs) -> list[str]:
    return [k for k in inputs if k.startswith("pixel_values")]


def _row(inputs, b, frames) -> dict:
    """Row b of a batch without its padding (every row holding ``frames`` frames)."""
    live = inputs["attention_mask"][b].bool()
    out = {
        "input_ids": inputs["input_ids"][b : b + 1, live],
        "attention_mask": inputs["attention_mask"][b : b + 1, live],
    }
    if "pixel_values_videos" in inputs:
        out["pixel_values_videos"] = inputs["pixel_values_videos"][b : b + 1]
    else:
        out["pixel_values"] = inputs["pixel_values"][b * frames : (b + 1) * frames]
        if "image_sizes" in inputs:
            out["image_sizes"] = inputs["image_sizes"][b * frames : (b + 1) * frames]
    return out


def _check_forward(model, inputs):
    with torch.no_grad():
        logits = model(**inputs).logits
    batch, length = inputs["input_ids"].shape
    assert logits.shape == (batch, length, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    return logits


def _check_generate(model, inputs, new_tokens=3):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    length = inputs["input_ids"].shape[1]
    assert out.shape[0] == inputs["input_ids"].shape[0]
    assert length < out.shape[1] <= length + new_tokens
    assert torch.equal(out[:, :length], inputs["input_ids"])
    return out


# ----------------------------------------------------------------------------------------------- counts and grids


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_documented_counts(model_type):
    assert tokens_per_frame(model_type) == EXPECTED_PER_FRAME[model_type]
    extra = 1 if model_type == "llava_onevision" else 0
    assert stock_video_tokens(model_type, FRAMES) == FRAMES * EXPECTED_PER_FRAME[model_type] + extra
    # 256 frames after stock expansion fit the text window
    config = tiny_config(model_type)
    assert config.text_config.max_position_embeddings >= stock_video_tokens(model_type, 256) + 512


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_config_ids_match_tokenizer(model_type):
    tok = tiny_tokenizer()
    config = tiny_config(model_type)
    assert config.image_token_id == tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID
    if not frames_as_images(model_type):
        assert config.video_token_id == tok.convert_tokens_to_ids("<video>") == VIDEO_TOKEN_ID
    assert placeholder_token_id(config, video_modality(model_type)) == (
        IMAGE_TOKEN_ID if frames_as_images(model_type) else VIDEO_TOKEN_ID
    )
    text = config.text_config
    assert text.vocab_size == len(tok)
    assert (text.pad_token_id, text.bos_token_id, text.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert 32 <= text.hidden_size <= 64 and text.num_hidden_layers <= 2
    assert text.model_type == ("qwen2" if model_type == "llava_onevision" else "llama")


def test_text_overrides():
    config = tiny_config("llava_onevision", num_hidden_layers=1, max_position_embeddings=1024)
    assert config.text_config.num_hidden_layers == 1
    assert config.text_config.max_position_embeddings == 1024


def test_unknown_type():
    with pytest.raises(ValueError, match="known"):
        tiny_config("qwen9_vl")


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_placeholders_match_features(model_type, models):
    """Placeholder runs from both input builders equal the number of feature rows the stock model produces."""
    model = models(model_type)
    token = placeholder_token_id(model, video_modality(model_type))
    proc = processor_inputs(model_type, FRAMES)
    hand = hand_inputs(model_type, FRAMES)
    expected = stock_video_tokens(model_type, FRAMES)
    assert int((proc["input_ids"] == token).sum()) == expected
    assert int((hand["input_ids"] == token).sum()) == expected
    for key in _pixel_keys(proc):
        assert hand[key].shape == proc[key].shape
    if "image_sizes" in proc:
        assert torch.equal(hand["image_sizes"], proc["image_sizes"])
    with torch.no_grad():
        if frames_as_images(model_type):
            kwargs = {"image_sizes": proc["image_sizes"]} if "image_sizes" in proc else {}
            feats = model.model.get_image_features(pixel_values=proc["pixel_values"], **kwargs).pooler_output
            assert len(feats) == FRAMES  # one entry per frame (image)
            rows = sum(f.shape[0] for f in feats)
        else:
            feats = model.model.get_video_features(pixel_values_videos=proc["pixel_values_videos"]).pooler_output
            assert feats.shape[0] == 1
            rows = feats.shape[1]
    assert rows == expected


# ----------------------------------------------------------------------------------------------- stock models run


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_stock_forward_and_generate(model_type, attn, models):
    model = models(model_type, attn)
    assert model.config._attn_implementation == attn
    assert not model.training

    proc = processor_inputs(model_type, FRAMES)
    _check_forward(model, proc)
    _check_generate(model, proc)

    hand = hand_inputs(model_type, FRAMES, batch=2)
    mask = hand["attention_mask"]
    assert mask[0, 0] == 0 and mask[1].all()  # row 0 is shorter: left padding
    assert (hand["input_ids"][mask == 0] == PAD_ID).all()
    _check_forward(model, hand)
    _check_generate(model, hand)

    # left padding is real padding: with position_ids from the mask (as generate builds them), the padded row's
    # last logits equal the same row run alone
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    alone = _row(hand, 0, FRAMES)
    with torch.no_grad():
        padded = model(**hand, position_ids=position_ids).logits[0, -1]
        single = model(**alone).logits[0, -1]
    torch.testing.assert_close(padded, single, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_processor_batch_left_padded(model_type, models):
    inputs = processor_inputs(model_type, FRAMES, batch=2)
    mask = inputs["attention_mask"]
    assert mask[0, 0] == 0 and mask[1].all()
    token = placeholder_token_id(models(model_type), video_modality(model_type))
    assert ((inputs["input_ids"] == token).sum(1) == stock_video_tokens(model_type, FRAMES)).all()
    _check_forward(models(model_type), inputs)


@pytest.mark.parametrize("model_type", ["llava", "llava_next"])
def test_frame_counts_differ_for_image_classes(model_type, models):
    model = models(model_type)
    counts = [3, 5]
    for inputs in (
        processor_inputs(model_type, FRAMES, batch=2, frame_counts=counts),
        hand_inputs(model_type, FRAMES, batch=2, frame_counts=counts),
    ):
        per_row = (inputs["input_ids"] == IMAGE_TOKEN_ID).sum(1).tolist()
        assert per_row == [stock_video_tokens(model_type, n) for n in counts]
        assert inputs["pixel_values"].shape[0] == sum(counts)
        assert inputs["attention_mask"][0, 0] == 0
        _check_forward(model, inputs)
    _check_generate(model, inputs)


def test_llava_next_wide_frames(models):
    """Anyres on non-square frames: processor, hand inputs and stock model agree (64x128 -> 1x2 tiles)."""
    model = models("llava_next")
    per_frame = tokens_per_frame("llava_next", 64, 128)
    assert per_frame == 64 + 8 * 16 + 8
    proc = processor_inputs("llava_next", 2, height=64, width=128)
    hand = hand_inputs("llava_next", 2, height=64, width=128)
    for inputs in (proc, hand):
        assert int((inputs["input_ids"] == IMAGE_TOKEN_ID).sum()) == 2 * per_frame
        assert inputs["pixel_values"].shape == (2, 3, 3, 32, 32)
        assert inputs["image_sizes"].tolist() == [[64, 128]] * 2
        _check_forward(model, inputs)


@pytest.mark.parametrize("model_type", ["llava_next_video", "llava_onevision"])
def test_frame_counts_must_match_for_video_classes(model_type):
    with pytest.raises(ValueError, match="same frame count"):
        processor_inputs(model_type, FRAMES, batch=2, frame_counts=[3, 5])
    with pytest.raises(ValueError, match="same frame count"):
        hand_inputs(model_type, FRAMES, batch=2, frame_counts=[3, 5])


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_hand_inputs_exact_layout(model_type):
    inputs = hand_inputs(model_type, 2, batch=2, text_before=[2, 5], text_after=[4, 1], seed=3)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    run = stock_video_tokens(model_type, 2)
    lengths = [2 + run + 4, 5 + run + 1]
    assert ids.shape == (2, max(lengths))
    assert mask.sum(1).tolist() == lengths
    token = IMAGE_TOKEN_ID if frames_as_images(model_type) else VIDEO_TOKEN_ID
    for b, (before, after) in enumerate([(2, 4), (5, 1)]):
        row = ids[b, mask[b].bool()]
        assert (row[before : before + run] == token).all()
        text = torch.cat([row[:before], row[before + run :]])
        assert len(text) == before + after and (text > VIDEO_TOKEN_ID).all()  # plain words, never special
    again = hand_inputs(model_type, 2, batch=2, text_before=[2, 5], text_after=[4, 1], seed=3)
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)


# ----------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_same_seed_same_weights(model_type):
    state = torch.get_rng_state()
    a = tiny_model(model_type, seed=1).state_dict()
    b = tiny_model(model_type, seed=1).state_dict()
    c = tiny_model(model_type, seed=2).state_dict()
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_dtype_is_rounded_float32():
    low = tiny_model("llava_onevision", dtype=torch.bfloat16)
    full = tiny_model("llava_onevision")
    assert low.dtype == torch.bfloat16 and low.config.text_config.dtype == torch.bfloat16
    for (name, p), q in zip(full.named_parameters(), low.parameters()):
        assert torch.equal(p.to(torch.bfloat16), q), name
    inputs = hand_inputs("llava_onevision", 2)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(torch.bfloat16)
    with torch.no_grad():
        assert torch.isfinite(low(**inputs).logits.float()).all()


def test_synthetic_video():
    video = synthetic_video(6, 48, 40, seed=1)
    assert video.shape == (6, 48, 40, 3) and video.dtype == np.uint8
    assert np.array_equal(video, synthetic_video(6, 48, 40, seed=1))
    assert not np.array_equal(video, synthetic_video(6, 48, 40, seed=2))
    assert all(not np.array_equal(video[i], video[i + 1]) for i in range(5))  # it moves
    assert video.std() > 20  # structure, not a flat frame
    # smooth, not noise: neighbouring pixels are much closer than random pairs
    neighbour = np.abs(np.diff(video.astype(np.int16), axis=2)).mean()
    assert neighbour < 0.5 * np.abs(video.astype(np.int16) - video[:, ::-1, ::-1].astype(np.int16)).mean()


# ----------------------------------------------------------------------------------------------- tokenizer, processors


def test_tokenizer_round_trip(tmp_path):
    tok = tiny_tokenizer()
    assert tok.padding_side == "left"
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, 1, BOS_ID, EOS_ID)
    assert 200 <= len(tok) <= 1000
    text = "user <image><image><video> what color is the frame assistant"
    ids = tok(text)["input_ids"]
    assert ids[1:4] == [IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == "user <image> <image> <video> what color is the frame assistant"

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded.padding_side == "left" and loaded.pad_token_id == PAD_ID
    assert loaded.image_token_id == IMAGE_TOKEN_ID and loaded.video_token_id == VIDEO_TOKEN_ID

    clone = pickle.loads(pickle.dumps(tok))
    assert clone(text)["input_ids"] == ids


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_processor_chat_template(model_type):
    """The chat template renders the same prompt format processor_inputs uses."""
    proc = tiny_processor(model_type)
    media = [{"type": "image"}] * 2 if frames_as_images(model_type) else [{"type": "video"}]
    messages = [{"role": "user", "content": [*media, {"type": "text", "text": "what color is the frame"}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True)
    placeholders = "<image><image>" if frames_as_images(model_type) else "<video>"
    assert prompt == f"user {placeholders} what color is the frame assistant"
