"""Continuing an adapted generate() from its cache gives what one adapted generate() on the whole text gives."""

from __future__ import annotations

import pytest
import torch

from longctx_adapter import AdapterError, apply_adapter
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
