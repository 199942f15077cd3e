"""apply_adapter on the four LLaVA-family classes: identity, round trip, hand-built references, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import hook_state, logits_of
from reference import reference_forward

from longctx_adapter import AdapterConfig, AdapterError, apply_adapter, get_adapter, remove_adapter
from longctx_adapter.ops.pooling import count_tokens, normalize_pooling
from longctx_adapter.testing.tiny import (
    frames_as_images,
    hand_inputs,
    placeholder_token_id,
    processor_inputs,
    tiny_model,
)

PROGRESSIVE = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}
POOLINGS = {
    "progressive": PROGRESSIVE,
    "progressive_bilinear": {"type": "progressive", "group": 3, "strides": [1, 2, 4], "mode": "bilinear"},
    "temporal+adaptive": [{"type": "temporal", "kernel": 2, "stride": 2}, {"type": "adaptive3d", "output": [2, 3, 3]}],
    "conv3d": {"type": "conv3d", "kernel": [2, 3, 3], "stride": [2, 3, 3]},
}


def _no_hooks(model, before) -> bool:
    return hook_state(model) == before


def _inputs(model_type, batch, frames=4):
    counts = [frames, frames + 2] if batch == 2 and frames_as_images(model_type) else None
    return hand_inputs(model_type, frames, batch=batch, frame_counts=counts, seed=1), counts or [frames] * batch


# --- identity and round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch", [1, 2])
def test_pooling_none_is_bit_exact_in_forward_and_generate(model_type, attn, batch):
    model = tiny_model(model_type, seed=0, attn_implementation=attn)
    inputs, _ = _inputs(model_type, batch)
    stock = logits_of(model, inputs)
    stock_gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    hooks = hook_state(model)
    with apply_adapter(model, pooling=None):
        assert torch.equal(logits_of(model, inputs), stock)
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), stock_gen)
    assert _no_hooks(model, hooks)


def test_processor_inputs_identity_and_remove(model_type, model):
    inputs = processor_inputs(model_type, frames=4)
    stock = logits_of(model, inputs)
    hooks = hook_state(model)
    handle = apply_adapter(model, pooling=PROGRESSIVE)
    pooled = logits_of(model, inputs)
    assert pooled.shape == stock.shape
    assert not torch.equal(pooled, stock)  # pooling really changed what the LM saw
    handle.remove()
    assert torch.equal(logits_of(model, inputs), stock)
    assert _no_hooks(model, hooks)
    assert get_adapter(model) is None


def test_stock_resolution_through_the_adapter_path_is_bit_exact(model_type, model):
    """A pooling that reproduces the stock tokens exercises encode -> pool -> rewrite -> stock forward."""
    if model_type == "llava_next":
        pytest.skip("LLaVA-NeXT pools the base tile: its stock anyres tokens have no pooling equivalent")
    stride = 2 if model_type == "llava_onevision" else 1  # OneVision's stock tokens are its own bilinear 2x
    identity = {"type": "progressive", "group": 1, "strides": [stride], "mode": "bilinear"}
    for batch in (1, 2):
        inputs = hand_inputs(model_type, 4, batch=batch, seed=1)
        stock = logits_of(model, inputs)
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        with apply_adapter(model, pooling=identity) as handle:
            assert torch.equal(logits_of(model, inputs), stock)
            assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), gen)
            assert all(s["tokens_before"] == s["tokens_after"] for s in handle.last_stats)


# --- hand-built references ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(POOLINGS))
@pytest.mark.parametrize("batch", [1, 2])
def test_adapted_forward_equals_hand_built_reference(model_type, model, name, batch):
    inputs, counts = _inputs(model_type, batch, frames=4)
    pooling = POOLINGS[name]
    ref_logits, maps = reference_forward(model, model_type, inputs, pooling, counts)
    with apply_adapter(model, pooling=pooling):
        logits = logits_of(model, inputs)
    assert logits.shape[:2] == inputs["input_ids"].shape
    for b, mapping in enumerate(maps):
        caller = torch.tensor([c for c, _ in mapping])
        ref = torch.tensor([r for _, r in mapping])
        if batch == 1:
            assert torch.equal(logits[b, caller], ref_logits[b, ref])
        else:
            torch.testing.assert_close(logits[b, caller], ref_logits[b, ref], rtol=1e-5, atol=1e-5)


def test_generate_returns_caller_prompt_and_reference_tokens(model_type, model):
    inputs, counts = _inputs(model_type, 1, frames=4)
    with apply_adapter(model, pooling=PROGRESSIVE) as handle:
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        stats = handle.last_stats
    prompt = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :prompt], inputs["input_ids"])
    # Greedy continuation from the reference logits at the last prompt position gives the first new token.
    ref_logits, maps = reference_forward(model, model_type, inputs, PROGRESSIVE, counts)
    assert int(out[0, prompt]) == int(ref_logits[0, maps[0][-1][1]].argmax())
    expected = count_tokens(*stats[0]["grid"], normalize_pooling(PROGRESSIVE)) + (model_type == "llava_onevision")
    assert len(stats) == 1 and stats[0]["pooled"] and stats[0]["tokens_after"] == expected


def test_labels_and_logits_to_keep_follow_the_rewrite(model_type, model):
    inputs, _ = _inputs(model_type, 2, frames=4)
    token = placeholder_token_id(model, "image" if frames_as_images(model_type) else "video")
    labels = inputs["input_ids"].masked_fill((inputs["input_ids"] == token) | (inputs["attention_mask"] == 0), -100)
    with apply_adapter(model, pooling=PROGRESSIVE):
        full = model(**inputs, labels=labels)
        last = model(**inputs, logits_to_keep=3).logits
    assert torch.isfinite(full.loss)
    torch.testing.assert_close(last, full.logits[:, -3:], rtol=1e-5, atol=1e-5)
    # The loss is the mean next-token loss over the caller's text labels, recomputed from caller-layout logits.
    shift_logits, shift_labels = full.logits[:, :-1], labels[:, 1:]
    manual = torch.nn.functional.cross_entropy(shift_logits.flatten(0, 1), shift_labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(full.loss, manual, rtol=1e-5, atol=1e-5)


def test_two_models_do_not_interfere(model_type):
    a, b = tiny_model(model_type, seed=0), tiny_model(model_type, seed=0)
    inputs, _ = _inputs(model_type, 1)
    stock = logits_of(b, inputs)
    with apply_adapter(a, pooling=PROGRESSIVE):
        assert not torch.equal(logits_of(a, inputs), stock)
        assert torch.equal(logits_of(b, inputs), stock)
        assert get_adapter(b) is None


# --- refusals -----------------------------------------------------------------------------------------------


def _state(model):
    return dict(model.__dict__), hook_state(model)


@pytest.mark.parametrize(
    "pooling, words",
    [
        ({"type": "progressive", "group": 4, "strides": [2, 64]}, "64"),
        ({"type": "progressive", "group": 0, "strides": [2]}, "group"),
        ({"type": "adaptive3d", "output": [2, 0, 3]}, "output"),
        ({"type": "median"}, "median"),
        ({"type": "progressive", "strdes": [2, 8]}, "strdes"),
        ({"type": "conv3d", "kernel": [2, 99, 3], "stride": [2, 99, 3]}, "99"),
    ],
)
def test_bad_config_raises_and_leaves_model_unchanged(model_type, model, pooling, words):
    inputs, _ = _inputs(model_type, 1)
    stock = logits_of(model, inputs)
    before = _state(model)
    with pytest.raises(AdapterError, match=words):
        apply_adapter(model, pooling=pooling)
    assert _state(model) == before
    assert torch.equal(logits_of(model, inputs), stock)


def test_apply_twice_and_unsupported_model(model_type, model):
    with apply_adapter(model, pooling=PROGRESSIVE):
        before = _state(model)
        with pytest.raises(AdapterError, match="already"):
            apply_adapter(model)
        assert _state(model) == before
    from transformers import LlamaConfig, LlamaForCausalLM

    text_model = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(AdapterError, match="llava_onevision"):
        apply_adapter(text_model)
    assert "forward" not in text_model.__dict__


def test_call_time_refusal_leaves_model_usable(model_type, model):
    inputs, _ = _inputs(model_type, 1, frames=2)
    # three frames of temporal stride needs >= 3 frames; this call has 2
    with apply_adapter(model, pooling={"type": "temporal", "kernel": 3, "stride": 3}):
        with pytest.raises(AdapterError, match="stride"):
            model(**inputs)
        with pytest.raises(AdapterError, match="position_ids"):
            model(**inputs, position_ids=torch.arange(inputs["input_ids"].shape[1])[None])
    assert torch.equal(logits_of(model, inputs), logits_of(tiny_model(model_type, seed=0), inputs))


def test_remove_adapter_function_and_context_manager(model):
    hooks = hook_state(model)
    handle = apply_adapter(model, pooling=PROGRESSIVE)
    remove_adapter(model)
    assert handle._removed and _no_hooks(model, hooks)
    remove_adapter(model)  # no-op
    handle.remove()  # idempotent


def test_preset_is_used_when_no_config(model_type, model):
    preset = AdapterConfig.preset(model_type)
    assert preset.pooling[0]["type"] == "progressive" and preset.pooling[0]["group"] == 4
    if model_type == "llava_onevision":
        # The preset targets the real 27x27 grid; the tiny 7x7 grid cannot take stride 8: refused, not clamped.
        with pytest.raises(AdapterError, match="7x7"):
            apply_adapter(model)
        assert get_adapter(model) is None
        return
    with apply_adapter(model) as handle:
        assert handle.config == preset
