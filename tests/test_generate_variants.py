"""Adapted generate beyond plain greedy: dict outputs, beams, several returned sequences, streamers, positional
input_ids, processor batches, image + video in one prompt, and a manual decode loop with `cache`.

The reference is always the stock model fed `inputs_embeds` built by hand (features from the stock submodules,
pooled with the pure op, spliced at shrunken placeholder runs), as in tests/reference.py.
"""

from __future__ import annotations

import pytest
import torch
from reference import placeholder_runs, reference_embeds
from transformers import TextStreamer
from transformers.generation.streamers import BaseStreamer

from longctx_adapter import AdapterConfig, apply_adapter
from longctx_adapter.testing.tiny import (
    IMAGE_TOKEN_ID,
    VIDEO_TOKEN_ID,
    frames_as_images,
    hand_inputs,
    processor_inputs,
    synthetic_video,
    tiny_model,
    tiny_processor,
)

POOLING = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}
# The whole config (not an override of the preset): no RoPE change, so the stock model with pooled embeddings is
# an exact reference. On the 7x7 OneVision grid stride 1 gives more tokens than stock (runs grow), elsewhere fewer.
CONFIG = AdapterConfig(pooling=POOLING)
NEW = 4


@pytest.fixture(scope="module")
def inputs(model_type):
    return hand_inputs(model_type, 2, seed=1)


def reference_generate(model, model_type, inputs, frame_counts, image_features=None, **gen):
    """New tokens of the stock model generating from hand-built embeddings (generate returns only new tokens)."""
    embeds, mask, _ = reference_embeds(model, model_type, inputs, POOLING, frame_counts, image_features)
    out = model.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, **gen)
    return out if isinstance(out, torch.Tensor) else out.sequences


def _frames(inputs, model_type):
    """Frames per row of batch-1 (or equal-count) hand inputs."""
    if frames_as_images(model_type):
        rows = inputs["input_ids"].shape[0]
        assert all(len(placeholder_runs(r.tolist(), IMAGE_TOKEN_ID)) == 1 for r in inputs["input_ids"])  # one video per row
        return [inputs["pixel_values"].shape[0] // rows] * rows
    return [inputs["pixel_values_videos"].shape[1]] * inputs["input_ids"].shape[0]


# --- generate variants on hand-built inputs -----------------------------------------------------------------------


def test_return_dict_in_generate(model_type, model, inputs):
    prompt = inputs["input_ids"].shape[1]
    ref = reference_generate(model, model_type, inputs, _frames(inputs, model_type), max_new_tokens=NEW)
    with apply_adapter(model, CONFIG) as handle:
        out = model.generate(
            **inputs, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True, output_scores=True
        )
        plain = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    assert handle.last_stats and handle.last_stats[0]["tokens_after"] != handle.last_stats[0]["tokens_before"]
    assert torch.equal(out.sequences, plain)
    assert torch.equal(out.sequences[:, :prompt], inputs["input_ids"])
    assert torch.equal(out.sequences[:, prompt:], ref)
    new = out.sequences.shape[1] - prompt
    assert 1 <= new <= NEW
    assert len(out.scores) == new
    for step, scores in enumerate(out.scores):
        assert scores.shape == (1, model.config.text_config.vocab_size)
        assert int(scores.argmax(-1)) == int(out.sequences[0, prompt + step])


def test_max_new_tokens_respected(model_type, model, inputs):
    prompt = inputs["input_ids"].shape[1]
    with apply_adapter(model, CONFIG):
        for n in (1, 3):
            out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            assert out.shape == (1, prompt + n)
            assert torch.equal(out[:, :prompt], inputs["input_ids"])


def test_max_length_counts_the_callers_prompt(model_type, model, inputs):
    if model_type in ("llava", "llava_next"):
        # same failure as LLaVA-NeXT-Video (the prompt shrinks), but by hundreds of tokens: too slow to generate
        pytest.skip("covered by llava_next_video (shrinking prompt) and llava_onevision (growing prompt)")
    prompt = inputs["input_ids"].shape[1]
    with apply_adapter(model, CONFIG):
        by_new = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        by_total = model.generate(**inputs, max_length=prompt + 3, min_length=prompt + 3, do_sample=False)
    assert by_total.shape == (1, prompt + 3)
    assert torch.equal(by_total, by_new)


def test_beam_search_and_num_return_sequences(model_type, model, inputs):
    prompt = inputs["input_ids"].shape[1]
    frames = _frames(inputs, model_type)
    ref_beam = reference_generate(model, model_type, inputs, frames, max_new_tokens=NEW, num_beams=2)
    ref_two = reference_generate(
        model, model_type, inputs, frames, max_new_tokens=NEW, num_beams=2, num_return_sequences=2
    )
    with apply_adapter(model, CONFIG):
        beam = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, num_beams=2)
        two = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, num_beams=2, num_return_sequences=2)
    assert beam.shape[0] == 1 and two.shape[0] == 2
    assert torch.equal(beam[:, :prompt], inputs["input_ids"])
    assert torch.equal(two[:, :prompt], inputs["input_ids"].expand(2, -1))
    assert torch.equal(beam[:, prompt:], ref_beam)
    assert torch.equal(two[:, prompt:], ref_two)


def test_positional_input_ids_and_no_attention_mask(model_type, model, inputs):
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    no_mask = {k: v for k, v in inputs.items() if k != "attention_mask"}
    with apply_adapter(model, CONFIG) as handle:
        keyword = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
        positional = model.generate(inputs["input_ids"], **rest, max_new_tokens=NEW, do_sample=False)
        assert handle.last_stats[0]["pooled"]
        unmasked = model.generate(**no_mask, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(positional, keyword)
    assert torch.equal(unmasked, keyword)


def test_sampling_matches_reference_under_the_same_seed(model_type, model, inputs):
    prompt = inputs["input_ids"].shape[1]
    sample = {"do_sample": True, "top_k": 0, "temperature": 1.5, "max_new_tokens": NEW, "min_new_tokens": NEW}
    embeds, mask, _ = reference_embeds(model, model_type, inputs, POOLING, _frames(inputs, model_type))
    torch.manual_seed(123)
    ref = model.generate(inputs_embeds=embeds, attention_mask=mask, **sample)
    with apply_adapter(model, CONFIG):
        torch.manual_seed(123)
        out = model.generate(**inputs, **sample)
    assert torch.equal(out[:, :prompt], inputs["input_ids"])
    assert torch.equal(out[:, prompt:], ref)


def test_batch2_beams_with_several_returned_sequences(model_type, model, request):
    counts = [2, 3] if frames_as_images(model_type) else [2, 2]
    inputs = hand_inputs(model_type, 2, batch=2, frame_counts=counts, seed=4)
    prompt = inputs["input_ids"].shape[1]
    beams = {"num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 3, "min_new_tokens": 3}
    ref = reference_generate(model, model_type, inputs, counts, **beams)
    with apply_adapter(model, CONFIG):
        out = model.generate(**inputs, do_sample=False, **beams)
    assert out.shape == (4, prompt + 3)
    # rows are (row 0, seq 0), (row 0, seq 1), (row 1, seq 0), (row 1, seq 1), as in stock generate
    assert torch.equal(out[:, :prompt], inputs["input_ids"].repeat_interleave(2, dim=0))
    assert torch.equal(out[:, prompt:], ref)


class Recorder(BaseStreamer):
    """Records what generate streams, skipping the first put (the prompt) like TextStreamer(skip_prompt=True)."""

    def __init__(self):
        self.calls, self.ended, self._prompt_seen = [], False, False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.calls.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


class TextCapture(TextStreamer):
    def __init__(self, tokenizer, **kwargs):
        super().__init__(tokenizer, **kwargs)
        self.text = ""

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.text += text


def test_streamer_receives_only_new_tokens(model_type, model, inputs):
    prompt = inputs["input_ids"].shape[1]
    tokenizer = tiny_processor(model_type).tokenizer
    recorder, text = Recorder(), TextCapture(tokenizer, skip_prompt=True)
    with apply_adapter(model, CONFIG):
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, streamer=recorder)
        again = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, streamer=text)
    assert torch.equal(out, again)
    new = out[0, prompt:].tolist()
    assert recorder.ended and [t for call in recorder.calls for t in call] == new
    assert all(len(call) == 1 for call in recorder.calls)
    assert text.text == tokenizer.decode(new)
    assert "<video>" not in text.text and "<image>" not in text.text


# --- processor batch (left padded) ---------------------------------------------------------------------------------


def test_processor_batch2_left_padded_matches_reference(model_type, model):
    counts = [2, 3] if frames_as_images(model_type) else [3, 3]
    inputs = processor_inputs(model_type, 3, batch=2, frame_counts=counts)
    mask = inputs["attention_mask"]
    assert bool((mask[:, 0] == 0).any()) and bool((mask[:, -1] == 1).all())  # left padded
    prompt = inputs["input_ids"].shape[1]
    ref = reference_generate(model, model_type, inputs, counts, max_new_tokens=NEW, min_new_tokens=NEW)
    with apply_adapter(model, CONFIG) as handle:
        out = model.generate(**inputs, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    assert [s["frames"] for s in handle.last_stats] == counts
    assert torch.equal(out[:, :prompt], inputs["input_ids"])
    assert torch.equal(out[:, prompt:], ref)


# --- an image (stock path) and a video (pooled) in one prompt -------------------------------------------------------
# LLaVA-NeXT-Video is the case the brief names; LLaVA-OneVision takes images and videos in one prompt the same way.

MIXED_TYPES = ("llava_next_video", "llava_onevision")
MIXED_FRAMES = 4


@pytest.fixture(scope="module")
def mixed(request):
    model_type = request.param
    model = tiny_model(model_type, seed=0)
    inputs = tiny_processor(model_type)(
        text=["user <image> what is this <video> and this assistant"],
        images=[synthetic_video(1, seed=7)[0]],
        videos=[synthetic_video(MIXED_FRAMES, seed=8)],
        return_tensors="pt",
    )
    ids = inputs["input_ids"][0].tolist()
    (image_run,) = placeholder_runs(ids, IMAGE_TOKEN_ID)
    (video_run,) = placeholder_runs(ids, VIDEO_TOKEN_ID)
    image_output = _stock_image_output(model, inputs)
    image_feats = list(image_output.pooler_output)
    assert sum(f.shape[0] for f in image_feats) == image_run[1] - image_run[0]
    return model_type, model, inputs, image_output, image_feats, video_run


@torch.no_grad()
def _stock_image_output(model, inputs):
    """HF's own image encoder output (what the stock forward scatters at the <image> run)."""
    cfg = model.config
    kwargs = {
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
    }
    if hasattr(cfg, "vision_aspect_ratio"):
        kwargs["vision_aspect_ratio"] = cfg.vision_aspect_ratio
    if inputs.get("batch_num_images") is not None:
        kwargs["batch_num_images"] = inputs["batch_num_images"]
    return model.model.get_image_features(
        pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], return_dict=True, **kwargs
    )


def _check_mixed_logits(logits, ref_logits, video_run, shrink):
    prompt = logits.shape[1]
    after_video = torch.arange(video_run[1], prompt)  # these sit `shrink` columns earlier in the reference layout
    torch.testing.assert_close(logits[0, after_video], ref_logits[0, after_video - shrink], rtol=1e-5, atol=1e-5)
    before_video = torch.arange(0, video_run[0])  # text and the whole image run: positions unchanged
    torch.testing.assert_close(logits[0, before_video], ref_logits[0, before_video], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixed", MIXED_TYPES, indirect=True)
def test_image_and_video_generate_matches_reference(mixed):
    model_type, model, inputs, _, image_feats, _ = mixed
    prompt = inputs["input_ids"].shape[1]
    ref_tokens = reference_generate(model, model_type, inputs, [MIXED_FRAMES], image_feats, max_new_tokens=NEW)
    with apply_adapter(model, CONFIG) as handle:
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
        stats = handle.last_stats
    # one pooled video; the image keeps its stock anyres tokens
    assert len(stats) == 1 and stats[0]["frames"] == MIXED_FRAMES and stats[0]["pooled"]
    assert stats[0]["tokens_after"] != stats[0]["tokens_before"]
    assert torch.equal(out[:, :prompt], inputs["input_ids"])
    assert torch.equal(out[:, prompt:], ref_tokens)


@pytest.mark.parametrize("mixed", MIXED_TYPES, indirect=True)
def test_image_and_video_forward_with_precomputed_image_features(mixed):
    """Workaround for the bug below: pass the image as mm_encoder_outputs["image"] instead of pixel_values."""
    model_type, model, inputs, image_output, image_feats, video_run = mixed
    embeds, mask, _ = reference_embeds(model, model_type, inputs, POOLING, [MIXED_FRAMES], image_feats)
    with torch.no_grad():
        ref_logits = model(inputs_embeds=embeds, attention_mask=mask).logits
    call = {k: v for k, v in inputs.items() if k not in ("pixel_values", "image_sizes", "batch_num_images")}
    with apply_adapter(model, CONFIG) as handle, torch.no_grad():
        logits = model(**call, mm_encoder_outputs={"image": image_output}).logits
        stats = handle.last_stats
    shrink = stats[0]["tokens_before"] - stats[0]["tokens_after"]
    assert embeds.shape[1] == inputs["input_ids"].shape[1] - shrink
    _check_mixed_logits(logits, ref_logits, video_run, shrink)


@pytest.mark.parametrize("mixed", MIXED_TYPES, indirect=True)
def test_image_and_video_forward_matches_reference(mixed):
    model_type, model, inputs, _, image_feats, video_run = mixed
    embeds, mask, _ = reference_embeds(model, model_type, inputs, POOLING, [MIXED_FRAMES], image_feats)
    with torch.no_grad():
        ref_logits = model(inputs_embeds=embeds, attention_mask=mask).logits
    with apply_adapter(model, CONFIG) as handle, torch.no_grad():
        logits = model(**inputs).logits
        stats = handle.last_stats
    assert len(stats) == 1 and stats[0]["frames"] == MIXED_FRAMES
    assert logits.shape[:2] == inputs["input_ids"].shape
    _check_mixed_logits(logits, ref_logits, video_run, stats[0]["tokens_before"] - stats[0]["tokens_after"])


# --- forward with cache: a manual decode loop --------------------------------------------------------------------


def test_manual_decode_loop_with_cache_equals_generate(model_type, model, inputs):
    steps = 2
    with apply_adapter(model, CONFIG) as handle, torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=steps + 1, min_new_tokens=steps + 1, do_sample=False)
        out = model(**inputs, use_cache=True)
        assert out.logits.shape[:2] == inputs["input_ids"].shape  # caller layout
        mask = handle.last_attention_mask
        assert mask is not None and mask.shape[1] != inputs["input_ids"].shape[1]  # the pooled layout
        tokens = [out.logits[:, -1].argmax(-1)]
        cache = out.cache
        assert cache.get_seq_length() == mask.shape[1]
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step = model(input_ids=tokens[-1][:, None], cache=cache, attention_mask=mask, use_cache=True)
            cache = step.cache
            tokens.append(step.logits[:, -1].argmax(-1))
    prompt = inputs["input_ids"].shape[1]
    assert torch.equal(torch.stack(tokens, dim=1), expected[:, prompt:])
