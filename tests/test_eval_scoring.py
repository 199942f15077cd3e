"""Option scoring (teacher-forced likelihood, stock and adapted), answer matching, and config shorthands."""

from __future__ import annotations

import contextlib

import pytest
import torch
from longctx_adapter.eval.configs import expand_grid, parse_config_text, parse_pooling, parse_rope, split_values
from longctx_adapter.eval.option_scoring import continuation_ids, match_option, option_logprobs, score_options

from longctx_adapter import AdapterConfig, AdapterError, apply_adapter
from longctx_adapter.testing.tiny import processor_inputs, tiny_model, tiny_tokenizer
from longctx_adapter.testing.tiny_qwen import qwen_hand_inputs, qwen_tiny_model

POOLING = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}  # Qwen: merged-token grid
OV_POOLING = {"type": "progressive", "group": 2, "strides": [2, 4], "mode": "avg"}  # OneVision: 7x7 SigLIP grid


def _reference(model, inputs, ids):
    """Full forward on prompt + continuation, every position's logits: the plain definition."""
    call = dict(inputs)
    extra = torch.tensor([ids])
    call["input_ids"] = torch.cat([inputs["input_ids"], extra], 1)
    call["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], 1)
    if "mm_token_type_ids" in inputs:
        call["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra, dtype=torch.int32)],
                                              1)
    with torch.inference_mode():
        logits = model(**call).logits[0].float()
    n = len(ids)
    logp = torch.log_softmax(logits[-n - 1 : -1], -1)
    return float(logp.gather(-1, torch.tensor(ids)[:, None]).sum())


def test_option_logprobs_match_the_definition_stock_and_adapted():
    model = tiny_model("llava_onevision")
    tok = tiny_tokenizer()
    inputs = dict(processor_inputs("llava_onevision", 4, prompt="what color is the square ?"))
    conts = [continuation_ids(tok, " red"), continuation_ids(tok, " light blue")]
    stock = option_logprobs(model, inputs, conts)
    for got, ids in zip(stock, conts):
        assert got["sum"] == pytest.approx(_reference(model, inputs, ids), abs=1e-4)
        assert got["mean"] == pytest.approx(got["sum"] / len(ids))
    rope = {"type": "yarn", "visual_window": 8, "scope": "visual"}
    with apply_adapter(model, pooling=OV_POOLING, rope=rope) as handle:
        adapted = option_logprobs(model, inputs, conts)
        assert handle.last_stats[0]["tokens_after"] < handle.last_stats[0]["tokens_before"]
        for got, ids in zip(adapted, conts):  # logits_to_keep path == full caller-layout logits
            assert got["sum"] == pytest.approx(_reference(model, inputs, ids), abs=1e-4)
    assert [a["sum"] for a in adapted] != pytest.approx([s["sum"] for s in stock])


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_option_logprobs_qwen_hand_inputs(model_type):
    model = qwen_tiny_model(model_type)
    inputs = qwen_hand_inputs(model_type, 8, batch=1, seed=3)
    ids = [[7, 8, 9], [9]]
    configs = [
        {"pooling": POOLING},
        {"pooling": [{"type": "temporal", "kernel": 2, "stride": 2}, POOLING]},  # Qwen3-VL: blocks deleted
        {"pooling": None, "rope": {"type": "yarn", "visual_window": 2, "scope": "visual"}},
    ]
    for config in [None, *configs]:  # None: the stock model (its cached decode ids differ from a full forward)
        with apply_adapter(model, **config) if config else contextlib.nullcontext():
            got = option_logprobs(model, inputs, ids)
            plain = option_logprobs(model, inputs, ids, share_prompt=False)
            for g, p, cont in zip(got, plain, ids):
                assert g["sum"] == pytest.approx(_reference(model, inputs, cont), abs=1e-4), config
                assert g["sum"] == pytest.approx(p["sum"], abs=1e-4) and g["greedy"] == p["greedy"]


def test_shared_prompt_encodes_the_video_once_and_leaves_no_cache_behind():
    model = tiny_model("llava_onevision")
    inputs = dict(processor_inputs("llava_onevision", 4, prompt="what color ?"))
    calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    conts = [[7, 8], [9, 10, 11], [12]]
    try:
        with apply_adapter(model, pooling=OV_POOLING, rope={"type": "yarn", "visual_window": 8, "scope": "all"}):
            shared = option_logprobs(model, inputs, conts)
            assert len(calls) == 1
            plain = option_logprobs(model, inputs, conts, share_prompt=False)
            assert len(calls) == 1 + len(conts)
    finally:
        hook.remove()
    assert [a["sum"] for a in shared] == pytest.approx([b["sum"] for b in plain], abs=1e-4)
    padded = dict(inputs)  # a padded prompt takes the plain path (positions of the cached path assume none)
    padded["input_ids"] = torch.cat([torch.zeros_like(inputs["input_ids"][:, :2]), inputs["input_ids"]], 1)
    padded["attention_mask"] = torch.cat([torch.zeros_like(inputs["attention_mask"][:, :2]), inputs["attention_mask"]], 1)
    with apply_adapter(model, pooling=OV_POOLING, rope={"type": "yarn", "visual_window": 8, "scope": "all"}):
        got = option_logprobs(model, padded, conts)
        assert got == option_logprobs(model, padded, conts, share_prompt=False)


def test_score_options_picks_the_best():
    model = tiny_model("llava")
    tok = tiny_tokenizer()
    inputs = dict(processor_inputs("llava", 2, prompt="what color ?"))
    scored = score_options(model, tok, inputs, ["red", "blue", "green"], target="text")
    assert scored["pred"] == max(range(3), key=scored["scores"].__getitem__)
    letters = score_options(model, tok, inputs, ["red", "blue"], target="letter")
    assert len(letters["scores"]) == 2
    with pytest.raises(AdapterError, match="target"):
        score_options(model, tok, inputs, ["red"], target="word")


@pytest.mark.parametrize(
    "text, expected",
    [("B", 1), ("B.", 1), ("(C) green", 2), ("C) green", 2), ("The answer is D", 3), ("Answer: (A)", 0),
     ("it is blue", 1), ("red or blue", None), ("E", None), ("D yellow", 3), ("a blue one", 1), ("", None)],
)
def test_match_option(text, expected):
    assert match_option(text, ["red", "blue", "green", "yellow"]) == expected


def test_shorthands_and_grid():
    assert parse_pooling("progressive:2,8,4") == [{"type": "progressive", "group": 4, "strides": [2, 8],
                                                   "mode": "bilinear"}]
    assert parse_pooling("progressive:2/2/1")[0]["strides"] == [2]
    assert parse_pooling("none") is None
    assert parse_rope("yarn-visual@6272") == {"type": "yarn", "scope": "visual", "visual_window": 6272}
    assert parse_rope("pi-all", 100) == {"type": "interpolate", "scope": "all", "visual_window": 100}
    assert split_values("none,progressive:2,8,4,temporal:2,2,{\"type\": \"adaptive3d\", \"output\": [1, 2, 2]}") == [
        "none", "progressive:2,8,4", "temporal:2,2", '{"type": "adaptive3d", "output": [1, 2, 2]}']
    cells = expand_grid(["pooling=none,progressive:2,8,4", "rope=none,yarn-all,yarn-visual"], "llava_onevision")
    assert len(cells) == 6 and cells[0].config is None
    assert cells[1].config.rope["visual_window"] == 6272  # from the OneVision preset
    assert cells[-1].label == "pooling=progressive:2,8,4 rope=yarn-visual"
    with pytest.raises(AdapterError, match="--visual-window"):
        expand_grid(["rope=yarn-all"], "llava")  # no preset window for LLaVA-1.5
    assert expand_grid(["rope=yarn-all"], "llava", visual_window=64)[0].config.rope["visual_window"] == 64
    with pytest.raises(AdapterError, match="AXIS"):
        expand_grid(["depth=1,2"], "llava")
    assert parse_config_text("none", "llava") is None
    assert parse_config_text("preset", "llava") == AdapterConfig.preset("llava")
    both = parse_config_text("progressive:2,4,4+yarn-visual@32", "llava")
    assert list(both.pooling[0]["strides"]) == [2, 4] and both.rope["scope"] == "visual"
    assert parse_config_text('{"type": "temporal", "kernel": 2}', "llava").pooling[0]["type"] == "temporal"
