"""Continuing an adapted generate() from its cache gives what one adapted generate() on the whole text gives."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from longctx_adapter import AdapterError, apply_adapter
from longctx_adapter.hooks import call_path
from longctx_adapter.testing.tiny import hand_inputs, tiny_model
from longctx_adapter.testing.tiny_qwen import QWEN_TINY_TYPES, qwen_hand_inputs, qwen_tiny_model

POOLING = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def _build(model_type):
    if model_type in QWEN_TINY_TYPES:
        # 12 frames: 6 temporal patches > 4 merged rows, where stock 5.x's rope_deltas (largest id + 1) would jump
        # past the text rule that the prompt's text follows
        return qwen_tiny_model(model_type), qwen_hand_inputs(model_type, 12, batch=2, seed=11)
    return tiny_model(model_type), hand_inputs(model_type, 4, batch=2, seed=11)


@pytest.mark.parametrize("model_type", ["llava_onevision", *QWEN_TINY_TYPES])
@pytest.mark.parametrize("scope", ["all", "visual"])
def test_continue_from_cache_equals_single_generate(model_type, scope):
    _check_continuation(model_type, scope, POOLING)


def test_qwen3_merged_frames_continue_from_cache():
    """Merging frames deletes Qwen3-VL blocks of text: the cache still lines up with the caller's sequences."""
    _check_continuation("qwen3_vl", "visual", [{"type": "temporal", "kernel": 2, "stride": 2}, POOLING])


def _check_continuation(model_type, scope, pooling):
    model, inputs = _build(model_type)
    rope = {"type": "yarn", "visual_window": 4, "scope": scope}
    with apply_adapter(model, pooling=pooling, rope=rope):
        first = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
        assert torch.equal(first.sequences[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
        more = torch.tensor([[7, 8, 9]] * 2)
        whole = dict(inputs)
        whole["input_ids"] = torch.cat([first.sequences, more], dim=1)
        grow = whole["input_ids"].shape[1] - inputs["input_ids"].shape[1]
        whole["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones(2, grow, dtype=torch.long)], 1)
        if "mm_token_type_ids" in inputs:
            types = inputs["mm_token_type_ids"]
            whole["mm_token_type_ids"] = torch.cat([types, types.new_zeros(2, grow)], dim=1)
        text_only = {k: v for k, v in whole.items() if k not in VIDEO_KEYS}
        continued = model.generate(**text_only, cache=first.cache, max_new_tokens=4, do_sample=False)
        single = model.generate(**whole, max_new_tokens=4, do_sample=False)
    assert torch.equal(continued, single)


def test_continuation_with_wrong_prefix_or_new_pixels_is_refused():
    model, inputs = _build("llava_onevision")
    with apply_adapter(model, pooling=POOLING):
        first = model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
        wrong = first.sequences.clone()
        wrong[:, 0] = 7
        with pytest.raises(AdapterError, match="start with"):
            model.generate(input_ids=wrong, cache=first.cache, max_new_tokens=2)
        with pytest.raises(AdapterError, match="new pixels"):
            model.generate(
                input_ids=first.sequences,
                pixel_values_videos=inputs["pixel_values_videos"],
                cache=first.cache,
                max_new_tokens=2,
            )


def _expanded(model_type, inputs, rows):
    """Each row of the inputs repeated `rows` times in place, as num_return_sequences expands a batch (Qwen's flat
    patch tensor repeats per video)."""
    out = {}
    for key, value in inputs.items():
        if key == "pixel_values_videos" and model_type in QWEN_TINY_TYPES:
            blocks = torch.split(value, inputs["video_grid_thw"].prod(-1).tolist())
            out[key] = torch.cat([block for block in blocks for _ in range(rows)])
        else:
            out[key] = value.repeat_interleave(rows, dim=0)
    return out


@pytest.mark.parametrize("model_type", ["llava_onevision", "qwen2_vl"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("search", ["sample", "beams"])
def test_dict_output_with_several_returned_sequences(model_type, batch, search):
    """return_dict_in_generate with num_return_sequences expands the batch after the rewrite: the continuation
    record must follow, and the output equals the tensor output of the same call."""
    if model_type in QWEN_TINY_TYPES:
        model, inputs = qwen_tiny_model(model_type), qwen_hand_inputs(model_type, 4, batch=batch, seed=11)
    else:
        model, inputs = tiny_model(model_type), hand_inputs(model_type, 2, batch=batch, seed=11)
    gen = {"max_new_tokens": 3, "min_new_tokens": 3, "num_return_sequences": 2}
    gen.update({"do_sample": True, "top_k": 0} if search == "sample" else {"do_sample": False, "num_beams": 2})
    prompt = inputs["input_ids"].shape[1]
    with apply_adapter(model, pooling=POOLING), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the bookkeeping must not give up on this shape
        torch.manual_seed(5)
        out = model.generate(**inputs, return_dict_in_generate=True, **gen)
        torch.manual_seed(5)
        plain = model.generate(**inputs, **gen)
        assert torch.equal(out.sequences, plain)
        assert torch.equal(out.sequences[:, :prompt], inputs["input_ids"].repeat_interleave(2, dim=0))
        if search == "beams" or (batch > 1 and model_type in QWEN_TINY_TYPES):
            # beams: the cache holds the last beams, not the returned hypotheses (stock too). Qwen, batch > 1:
            # stock generate keeps rope_deltas of the unexpanded batch, which cannot continue the expanded one
            return
        # sampled rows continue from their own cache rows like one greedy generate over the whole text
        rows = 2 * batch
        more = torch.tensor([[7, 8]] * rows)
        whole = _expanded(model_type, inputs, 2)
        whole["input_ids"] = torch.cat([out.sequences, more], dim=1)
        grow = whole["input_ids"].shape[1] - prompt
        whole["attention_mask"] = torch.cat([whole["attention_mask"], torch.ones(rows, grow, dtype=torch.long)], 1)
        if "mm_token_type_ids" in whole:
            whole["mm_token_type_ids"] = torch.cat([whole["mm_token_type_ids"], torch.zeros(rows, grow).long()], 1)
        text_only = {k: v for k, v in whole.items() if k not in VIDEO_KEYS}
        continued = model.generate(**text_only, cache=out.cache, max_new_tokens=3, do_sample=False)
        single = model.generate(**whole, max_new_tokens=3, do_sample=False)
    assert torch.equal(continued, single)


def test_continuation_bookkeeping_never_fails_a_finished_generate(monkeypatch):
    """An unexpected shape or an error while recording the continuation warns and keeps the output."""
    model, inputs = tiny_model("llava_onevision"), hand_inputs("llava_onevision", 2, seed=11)
    with apply_adapter(model, pooling=POOLING) as handle:
        expected = model.generate(**inputs, max_new_tokens=2, do_sample=False)

        def broken(*args, **kwargs):
            raise RuntimeError("Sizes of tensors must match")

        monkeypatch.setattr(call_path, "Continuation", broken)
        with pytest.warns(RuntimeWarning, match="cannot be continued"):
            out = model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
        assert torch.equal(out.sequences, expected)
        assert out.cache not in handle.continuations
        monkeypatch.undo()

        prepared = SimpleNamespace(
            rewritten=SimpleNamespace(input_ids=torch.zeros(2, 5, dtype=torch.long)),
            call={},
            caller_input_ids=torch.zeros(2, 7, dtype=torch.long),
        )
        odd = SimpleNamespace(sequences=torch.zeros(3, 8, dtype=torch.long), cache=out.cache)
        with pytest.warns(RuntimeWarning, match=r"\(3, 8\) sequences for a prompt of \(2, 5\)"):
            call_path._remember_continuation(handle, odd, prepared, None)
        assert out.cache not in handle.continuations
