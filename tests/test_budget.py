"""The budget stage: config and shorthand, the ladder rule against a per-frame reference written here, exact counts,
monotonicity in the budget, refusals, and a tiny model that equals the explicit stages the rule picks."""

from __future__ import annotations

import math
import time

import pytest
import torch
from helpers import make_grid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longctx_adapter import AdapterConfig, AdapterError, apply_adapter
from longctx_adapter.config_text import format_config, parse_config
from longctx_adapter.ops.pooling import count_tokens, normalize_stage, pool_video, pooled_frame_sizes
from longctx_adapter.ops.positions import mrope_positions
from longctx_adapter.ops.stages import stage_from_dict

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------------------------
# An independent reference of the documented rule: per-frame sizes from the ceil formula, levels walked in order.


def reference_levels(T, H, W, group=4):
    """(description, per-frame sizes, explicit stage dicts) of every level, mildest first."""
    key, strongest = min(2, H, W), min(H, W)

    def progressive_sizes(frames, other):
        sizes = []
        for t in range(frames):
            stride = key if t % group == 0 else other
            sizes.append((math.ceil(H / stride), math.ceil(W / stride)))
        return sizes

    def progressive_dict(other):
        return {"type": "progressive", "group": group, "strides": [key, other]}

    yield "none", [(H, W)] * T, []
    for other in range(key, strongest + 1):
        yield f"progressive {key},{other}", progressive_sizes(T, other), [progressive_dict(other)]
    for m in range(2, T + 1):
        merged = math.ceil(T / m)
        stages = [{"type": "temporal", "kernel": m, "stride": m}, progressive_dict(strongest)]
        yield f"merge {m}", progressive_sizes(merged, strongest), stages


def reference_choice(T, H, W, budget, group=4):
    for name, sizes, stages in reference_levels(T, H, W, group):
        if sum(h * w for h, w in sizes) <= budget:
            return name, sizes, stages
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Config.


def test_defaults_round_trip_and_shorthand():
    stage = normalize_stage({"type": "budget", "max_tokens": 8192})
    assert stage == {"type": "budget", "max_tokens": 8192, "group": 4, "mode": "bilinear"}
    assert stage_from_dict(stage).shorthand() == "budget:8192,4"
    assert parse_config("budget:8192").to_dict()["pooling"] == [stage]
    assert parse_config("budget:100,2").to_dict()["pooling"][0]["group"] == 2
    assert format_config(AdapterConfig(pooling=stage)) == "budget:8192,4"
    assert stage_from_dict({**stage, "mode": "avg"}).shorthand() is None


@pytest.mark.parametrize(
    ("stage", "match"),
    [
        ({"type": "budget"}, "needs 'max_tokens'"),
        ({"type": "budget", "max_tokens": 0}, "budget 'max_tokens'"),
        ({"type": "budget", "max_tokens": 2.5}, "budget 'max_tokens'"),
        ({"type": "budget", "max_tokens": 9, "group": -1}, "budget 'group'"),
        ({"type": "budget", "max_tokens": 9, "mode": "nearest"}, "budget 'mode'"),
        ({"type": "budget", "max_tokens": 9, "stride": 2}, "allowed keys"),
        ([{"type": "budget", "max_tokens": 9}, {"type": "temporal"}], "move the budget stage to the end"),
    ],
)
def test_bad_configs_name_the_key(stage, match):
    with pytest.raises(AdapterError, match=match):
        AdapterConfig(pooling=stage)


# ---------------------------------------------------------------------------------------------------------------------
# The rule.


@FAST
@given(T=st.integers(1, 40), H=st.integers(1, 9), W=st.integers(1, 9), group=st.integers(1, 5), data=st.data())
def test_counts_match_the_reference_and_fit(T, H, W, group, data):
    budget = data.draw(st.integers(1, T * H * W + 3))
    stage = {"type": "budget", "max_tokens": budget, "group": group}
    expected = reference_choice(T, H, W, budget, group)
    if expected is None:
        with pytest.raises(AdapterError, match="budget max_tokens"):
            count_tokens(T, H, W, stage)
        return
    _, sizes, _ = expected
    assert pooled_frame_sizes(T, H, W, stage) == sizes
    assert count_tokens(T, H, W, stage) == sum(h * w for h, w in sizes) <= budget


@pytest.mark.parametrize(("T", "H", "W"), [(16, 6, 5), (9, 4, 4), (1, 7, 7), (5, 1, 3)])
def test_tokens_never_fall_as_the_budget_grows(T, H, W):
    counts = []
    for budget in range(1, T * H * W + 2):
        try:
            counts.append(count_tokens(T, H, W, {"type": "budget", "max_tokens": budget}))
        except AdapterError:
            assert not counts, "a refusal after a fitting budget"
            continue
        assert counts[-1] <= budget
    assert counts == sorted(counts) and counts[-1] == T * H * W
    assert len(set(counts)) >= 2  # some budget pooled


@pytest.mark.parametrize("budget", [10_000, 500, 200, 120, 49, 30, 16])
def test_pooled_tensors_equal_the_stages_the_rule_names(budget):
    grid = make_grid(12, 7, 7, 3)
    name, sizes, stages = reference_choice(12, 7, 7, budget)
    pooled = pool_video(grid, {"type": "budget", "max_tokens": budget})
    explicit = pool_video(grid, stages)
    assert pooled.sizes == explicit.sizes == tuple(sizes), name
    assert torch.equal(pooled.flatten(), explicit.flatten()), name


def test_positions_follow_the_stages_the_rule_names():
    t = torch.arange(12.0)
    for budget in (500, 120, 30):
        for mode in ("bilinear", "max"):
            _, _, stages = reference_choice(12, 7, 7, budget)
            stages = [{**s, "mode": mode} if s["type"] == "progressive" else s for s in stages]
            budgeted = mrope_positions(3.0, t, 7, 7, {"type": "budget", "max_tokens": budget, "mode": mode})
            torch.testing.assert_close(budgeted, mrope_positions(3.0, t, 7, 7, stages), rtol=0, atol=0)


def test_a_video_that_fits_is_left_bit_exact():
    grid = make_grid(4, 3, 5, 2, dtype=torch.bfloat16)
    pooled = pool_video(grid, {"type": "budget", "max_tokens": 60})
    assert torch.equal(pooled.flatten(), grid.reshape(-1, 2))


def test_too_small_a_budget_names_the_floor_everywhere():
    stage = {"type": "budget", "max_tokens": 15}  # one 7x7 frame at stride 2 keeps 16 tokens
    for call in (lambda: count_tokens(8, 7, 7, stage), lambda: pool_video(make_grid(8, 7, 7, 2), stage)):
        with pytest.raises(AdapterError, match="below the 16 tokens of one frame.*at least 16"):
            call()


def test_the_choice_is_arithmetic_at_any_length():
    start = time.perf_counter()
    tokens = count_tokens(1_000_000, 27, 27, {"type": "budget", "max_tokens": 12_000})
    assert time.perf_counter() - start < 2.0
    assert tokens <= 12_000


# ---------------------------------------------------------------------------------------------------------------------
# On a tiny model.


def test_tiny_model_equals_the_explicit_stages():
    from longctx_adapter.testing.tiny import hand_inputs, tiny_model

    model, inputs = tiny_model("llava_next_video"), hand_inputs("llava_next_video", frames=4)
    with torch.inference_mode():
        stock = model(**inputs).logits
    results = {}
    for budget in (64, 10, 5):  # 4x4x4 grid: fits / progressive 2,4 / pairs of frames merged
        _, _, stages = reference_choice(4, 4, 4, budget)
        for name, pooling in (("budget", {"type": "budget", "max_tokens": budget}), ("explicit", stages or None)):
            with apply_adapter(model, AdapterConfig(pooling=pooling)) as handle, torch.inference_mode():
                logits, stats = model(**inputs).logits, handle.last_stats
                results[name, budget] = (logits, stats[0]["tokens_after"] if stats else 64)
        torch.testing.assert_close(results["budget", budget][0], results["explicit", budget][0], rtol=0, atol=0)
        assert results["budget", budget][1] == results["explicit", budget][1] <= budget
    assert torch.equal(results["budget", 64][0], stock)
    assert [results["budget", b][1] for b in (64, 10, 5)] == [64, 7, 5]
    with pytest.raises(AdapterError, match="budget max_tokens 3 is below the 4 tokens"):
        apply_adapter(model, {"pooling": {"type": "budget", "max_tokens": 3}})
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits, stock)
