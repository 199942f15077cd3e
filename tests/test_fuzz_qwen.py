"""Hostile inputs on the Qwen-VL family (see test_fuzz.py for the contract): hypothesis draws the class, frame
counts per row (ragged, left-padded), frame sizes, Qwen3-VL prompts with or without the processor's outer markers,
pooling stage lists and RoPE specs, and breaks the input on purpose (a wrong video_grid_thw, no
mm_token_type_ids). Every call either returns logits in the caller's layout with the token counts of the pure-op
reference, or raises AdapterError; afterwards the model is the stock model again.

Bounded: 120 examples, derandomized (FUZZ_EXAMPLES / FUZZ_SEED to explore).
"""

from __future__ import annotations

import os
from functools import cache

import torch
from hypothesis import event, given, seed
from hypothesis import strategies as st
from test_fuzz import POOLING, ROPE, SEED, _pristine, fuzz_settings

from longctx_adapter import AdapterConfig, AdapterError, apply_adapter
from longctx_adapter.ops.pooling import count_tokens, pooled_frame_sizes
from longctx_adapter.testing.tiny_qwen import QWEN_TINY_TYPES, qwen_hand_inputs, qwen_tiny_model

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
BREAKS = ("none",) * 6 + ("grid", "no_types")


@cache
def _model(model_type):
    return qwen_tiny_model(model_type, seed=0)


@cache
def _probe(model_type):
    inputs = qwen_hand_inputs(model_type, 2, seed=123)
    with torch.no_grad():
        return inputs, _model(model_type)(**inputs).logits


@st.composite
def _merging(draw):
    """Stages that change the frame count (Qwen3-VL then deletes blocks of text), maybe then a progressive one."""
    kind = draw(st.sampled_from(["temporal", "adaptive3d", "conv3d"]))
    if kind == "temporal":
        kernel = draw(st.integers(2, 3))
        stages = [{"type": "temporal", "kernel": kernel, "stride": draw(st.integers(2, kernel))}]
    elif kind == "adaptive3d":
        stages = [{"type": "adaptive3d", "output": [draw(st.integers(1, 3)), 2, 2]}]
    else:
        stages = [{"type": "conv3d", "kernel": [2, draw(st.integers(1, 2)), 2]}]
    if draw(st.booleans()):
        stages.append({"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"})
    return stages


@st.composite
def cases(draw):
    model_type = draw(st.sampled_from([*QWEN_TINY_TYPES, "qwen3_vl"]))  # Qwen3-VL twice: its block layout
    batch = draw(st.integers(1, 2))
    frame_counts = [2 * draw(st.integers(1, 4)) for _ in range(batch)]
    patch_grid = draw(st.sampled_from([4, 8, 12]))
    outer = draw(st.booleans())
    broken = draw(st.sampled_from(BREAKS))
    pooling = draw(st.one_of(POOLING, POOLING, _merging()))
    config = {"pooling": pooling, "rope": draw(st.one_of(st.none(), st.none(), ROPE))}
    return model_type, frame_counts, patch_grid, outer, broken, config, draw(st.booleans())


@fuzz_settings(EXAMPLES)
@seed(SEED)
@given(case=cases())
def test_qwen_hostile_inputs_either_work_or_raise_adapter_error(case):
    model_type, frame_counts, patch_grid, outer, broken, config, generate = case
    model = _model(model_type)
    pristine = _pristine(model)
    inputs = qwen_hand_inputs(
        model_type, frame_counts[0], batch=len(frame_counts), frame_counts=frame_counts, patch_grid=patch_grid,
        seed=7, outer_markers=outer,
    )  # fmt: skip
    if broken == "grid":
        inputs["video_grid_thw"] = inputs["video_grid_thw"] * torch.tensor([[1, 2, 1]])
    elif broken == "no_types":
        del inputs["mm_token_type_ids"]
    try:
        handle = apply_adapter(model, config)
    except AdapterError:
        event("refused by apply_adapter")
    else:
        try:
            _one_call(model, handle, inputs, broken, generate)
        finally:
            handle.remove()
    assert _pristine(model) == pristine, "the adapter left attributes or hooks behind"
    probe_inputs, probe_logits = _probe(model_type)
    with torch.no_grad():
        assert torch.equal(model(**probe_inputs).logits, probe_logits), "the model is not stock after the example"


def _one_call(model, handle, inputs, broken, generate):
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
            out = model.generate(**inputs, max_new_tokens=2, do_sample=False) if generate else None
    except AdapterError:
        event(f"refused by the call ({broken})")
        return
    except Exception:
        # a broken input the adapter passes through untouched (pooling off) may fail in the stock model alike
        assert broken != "none" and not handle.config.pooling, "a well-formed input raised a non-AdapterError"
        event("stock error passed through")
        return
    assert broken == "none" or not handle.config.pooling, f"a broken input ({broken}) was not refused"
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert logits.shape[:2] == ids.shape, "logits are not in the caller's layout"
    assert torch.isfinite(logits[mask.bool()]).all()
    if out is not None:
        assert torch.equal(out[:, : ids.shape[1]], ids), "generate changed the caller's prompt"
    stages = handle.config.pooling
    if stages:
        for stat in handle.last_stats:
            assert stat["tokens_after"] == count_tokens(*stat["grid"], stages), (stat, stages)
            assert stat["frames_after"] == len(pooled_frame_sizes(*stat["grid"], stages))
            if stat["frames_after"] != stat["grid"][0]:
                event(f"ran: {model.config.model_type} with frames merged or dropped")
    event(f"ran: pooling {'on' if stages else 'off'}")
    if handle.config == AdapterConfig():
        handle.remove()
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, logits), "an adapter with every feature off changed logits"
