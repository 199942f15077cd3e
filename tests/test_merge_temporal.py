"""merge_temporal against a naive loop written from its rule (FrameFusion/HoliTom style temporal merging): the
similarities, the merged set (threshold, budget, ties by position), the runs, exact means, positions (both rules),
shapes without tensors, refusals, batches, dtypes and composition with the pooling stages."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_grid
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_pooling import DEVICES

from longctx_adapter import AdapterConfig, AdapterError
from longctx_adapter.config_text import parse_config
from longctx_adapter.ops.pooling import chunk_plan, count_tokens, normalize_pooling, pool_video, pooled_shape
from longctx_adapter.ops.positions import frame_sources, mrope_positions, pooled_coordinates
from longctx_adapter.ops.stages import stage_from_dict
from longctx_adapter.ops.stages.merge_temporal import temporal_merge_decisions

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------------------------
# The naive reference: loops over frames and places, float64, written from the docstring's rule.


def naive_cosine(a: list[float], b: list[float]) -> float:
    if a == b:
        return 1.0
    dot = sum(x * y for x, y in zip(a, b))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return max(-1.0, min(1.0, dot / norms)) if norms > 0 else 0.0


def naive_merge(grid: torch.Tensor, threshold, target):
    """[(frame, place, members)] of every output token in frame-major order, members as (t, place)."""
    T, H, W, D = grid.shape
    P = H * W
    x = grid.double().reshape(T, P, D).tolist()
    sim = {(t, p): naive_cosine(x[t][p], x[t - 1][p]) for t in range(1, T) for p in range(P)}
    merged = {key for key, s in sim.items() if threshold is not None and s > threshold}
    if target is not None and T * P > target:
        ranked = sorted(sim, key=lambda key: (-sim[key], key[0], key[1]))
        merged |= set(ranked[: T * P - target])
    members: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for p in range(P):
        current = None
        for t in range(T):
            if (t, p) not in merged:
                current = (t, p)
                members[current] = []
            members[current].append((t, p))
    return [(t, p, members[(t, p)]) for t in range(T) for p in range(P) if (t, p) in members]


def naive_frames(grid: torch.Tensor, tokens, place=None) -> list[torch.Tensor]:
    """Per-frame rows of exact means (or, with place='kept', each representative's own token) in float64."""
    T, H, W, D = grid.shape
    x = grid.double().reshape(T, H * W, D)
    rows: list[list[torch.Tensor]] = [[] for _ in range(T)]
    for t, p, members in tokens:
        if place == "kept":
            rows[t].append(x[t, p])
        else:
            rows[t].append(torch.stack([x[m, q] for m, q in members]).sum(0) / len(members))
    return [torch.stack(r) if r else torch.zeros(0, D, dtype=torch.float64) for r in rows]


def stage(threshold=None, ratio=None, max_tokens=None, positions="kept"):
    return {"type": "merge_temporal", "threshold": threshold, "ratio": ratio, "max_tokens": max_tokens,
            "positions": positions}  # fmt: skip


def integer_grid(T, H, W, D, seed, low=-2, high=2, dtype=torch.float64):
    """Small integers: similarities are exact in float64 in both the op and the reference, so ties are real ties."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (T, H, W, D), generator=gen).to(dtype)


# ---------------------------------------------------------------------------------------------------------------------
# The op against the reference.

THRESHOLDS = st.one_of(st.none(), st.sampled_from([-1.0, -0.5, 0.0, 0.5, 0.7071067811865476, 0.99, 1.0, 1.5]))


@FAST
@given(
    T=st.integers(1, 6), H=st.integers(1, 3), W=st.integers(1, 3), D=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 10**6), threshold=THRESHOLDS, budget=st.one_of(st.none(), st.floats(0.0, 1.0)),
    repeats=st.integers(0, 2),
)  # fmt: skip
def test_op_equals_the_naive_loop(T, H, W, D, seed, threshold, budget, repeats):
    grid = integer_grid(T, H, W, D, seed)
    for _ in range(repeats):  # repeated frames and places: exact ties in similarity
        t = seed % T
        grid[(t + 1) % T] = grid[t]
    P = H * W
    target = None if budget is None else P + round(budget * (T * P - P))
    assume(threshold is not None or target is not None)
    pooled = pool_video(grid, stage(threshold, max_tokens=target))
    tokens = naive_merge(grid, threshold, target)
    expected = naive_frames(grid, tokens)
    assert [f.shape[1] for f in pooled.frames] == [e.shape[0] for e in expected]
    for got, want in zip(pooled.frames, expected):
        torch.testing.assert_close(got[0], want.to(got.dtype), rtol=1e-12, atol=1e-12)
    if target is not None:
        assert pooled.num_tokens <= target
        if threshold is None:
            assert pooled.num_tokens == target
    # counts: every input token is in exactly one output token
    (decision,) = pooled.trace
    assert sorted(decision.counts.tolist()) == sorted(len(m) for _, _, m in tokens)
    assert int(decision.counts.sum()) == T * P


@FAST
@given(T=st.integers(2, 6), H=st.integers(1, 3), W=st.integers(1, 3), seed=st.integers(0, 10**6))
def test_identical_frames_leave_exactly_one_frame(T, H, W, seed):
    frame = make_grid(1, H, W, 5, seed=seed)
    grid = frame.expand(T, H, W, 5).clone()
    pooled = pool_video(grid, stage(threshold=0.99))
    assert pooled.sizes == ((1, H * W),) + ((1, 0),) * (T - 1)
    torch.testing.assert_close(pooled.frames[0][0], frame.reshape(H * W, 5), rtol=0, atol=1e-6)
    assert pooled.trace[0].counts.tolist() == [T] * (H * W)
    # the budget form agrees: the most similar tokens are the repeated ones
    assert pool_video(grid, stage(max_tokens=H * W)).sizes == pooled.sizes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("threshold", [1.0, 1.5, 7.0])
def test_threshold_at_or_above_one_is_the_identity_bit_for_bit(dtype, threshold):
    grid = make_grid(5, 3, 4, 6, dtype=dtype, seed=3)
    grid[2] = grid[1]  # identical frames still do not exceed the threshold
    pooled = pool_video(grid, stage(threshold=threshold))
    assert pooled.sizes == ((1, 12),) * 5
    assert torch.equal(pooled.flatten(), grid.reshape(-1, 6))
    assert pooled.flatten().dtype == dtype


def test_budget_merges_the_most_similar_tokens_and_breaks_ties_by_position():
    grid = torch.zeros(3, 1, 2, 2, dtype=torch.float64)
    grid[0, 0, 0] = torch.tensor([1.0, 0.0])
    grid[0, 0, 1] = torch.tensor([0.0, 1.0])
    grid[1] = grid[0]  # both places of frame 1 repeat frame 0 exactly: similarity 1, a tie
    grid[2, 0, 0] = torch.tensor([1.0, 1.0])  # cos 0.707 to frame 1
    grid[2, 0, 1] = torch.tensor([0.0, 1.0])  # repeat: similarity 1
    pooled = pool_video(grid, stage(max_tokens=4))  # 6 tokens, 2 merge: the two earliest of the three ties
    assert pooled.sizes == ((1, 2), (1, 0), (1, 2))
    assert pooled.trace[0].counts.tolist() == [2, 2, 1, 1]
    pooled = pool_video(grid, stage(max_tokens=3))  # 3 merge: all three similarity-1 tokens
    assert pooled.sizes == ((1, 2), (1, 0), (1, 1))
    assert pooled.trace[0].counts.tolist() == [2, 3, 1]
    torch.testing.assert_close(pooled.frames[2][0, 0], grid[2, 0, 0])


def test_threshold_and_budget_together_give_at_most_the_budget():
    grid = make_grid(6, 2, 2, 4, seed=5)
    grid[3] = grid[2]
    grid[4] = grid[2] + 1e-3
    few = pool_video(grid, stage(threshold=0.999)).num_tokens
    assert few == 24 - 8  # frames 3 and 4 merge into frame 2
    assert pool_video(grid, stage(threshold=0.999, max_tokens=20)).num_tokens == few  # the threshold merges more
    assert pool_video(grid, stage(threshold=0.999, max_tokens=10)).num_tokens == 10  # the budget merges more


def test_nan_tokens_never_merge():
    grid = make_grid(3, 1, 2, 3, seed=1)
    grid[1] = grid[0]
    grid[1, 0, 0, 0] = float("nan")
    pooled = pool_video(grid, stage(threshold=-1.0))
    assert pooled.sizes == ((1, 2), (1, 1), (1, 1))  # only the NaN token starts a run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_means_keep_dtype_and_device_and_match_float64(device, dtype):
    grid = make_grid(8, 3, 3, 16, dtype=dtype, seed=2, device=device)
    grid[4:] = grid[3:4]
    pooled = pool_video(grid, stage(threshold=0.999))
    assert all(f.dtype == dtype and f.device.type == device for f in pooled.frames)
    tokens = naive_merge(grid.cpu(), 0.999, None)
    for got, want in zip(pooled.frames, naive_frames(grid.cpu(), tokens)):
        torch.testing.assert_close(got[0].cpu().double(), want, rtol=1e-2, atol=1e-2)


def test_batched_decisions_equal_one_video_at_a_time():
    grids = torch.stack([make_grid(5, 2, 3, 4, seed=s) for s in range(3)])
    grids[1, 2:] = grids[1, 1:2]
    for threshold, target in ((0.5, None), (None, 12), (0.9, 20)):
        batched = temporal_merge_decisions(grids, threshold, target)
        for video, decision in zip(grids, batched):
            (alone,) = temporal_merge_decisions(video[None], threshold, target)
            assert torch.equal(decision.assign, alone.assign) and torch.equal(decision.kept, alone.kept)


# ---------------------------------------------------------------------------------------------------------------------
# Shapes without tensors, refusals, config.


@FAST
@given(T=st.integers(1, 6), H=st.integers(1, 4), W=st.integers(1, 4), data=st.data())
def test_shape_is_an_upper_bound_and_refusals_match_the_op(T, H, W, data):
    kind = data.draw(st.sampled_from(["threshold", "ratio", "max_tokens"]))
    value = {
        "threshold": data.draw(st.floats(-1.0, 1.0)),
        "ratio": data.draw(st.floats(0.01, 1.0)),
        "max_tokens": data.draw(st.integers(1, T * H * W + 3)),
    }[kind]
    spec = {"type": "merge_temporal", kind: value}
    grid = make_grid(T, H, W, 3, seed=T * H * W)
    try:
        shape = pooled_shape(T, H, W, spec)
    except AdapterError as err:
        with pytest.raises(AdapterError) as again:
            pool_video(grid, spec)
        assert str(again.value) == str(err)
        assert kind != "threshold" and "fewer than one frame's" in str(err)
        return
    pooled = pool_video(grid, spec)
    assert not shape.exact and shape.frames == T
    assert pooled.num_tokens <= shape.num_tokens == count_tokens(T, H, W, spec)
    assert len(shape.frame_sizes()) == T and sum(h * w for h, w in shape.frame_sizes()) == shape.num_tokens
    if kind != "threshold":
        assert pooled.num_tokens == shape.num_tokens  # budget only: exactly the budget


def test_budget_below_one_frame_is_refused_naming_the_key():
    with pytest.raises(AdapterError, match=r"merge_temporal 'ratio' 0.1 asks for 6 tokens .* fewer than one frame's 9"):
        count_tokens(7, 3, 3, {"type": "merge_temporal", "ratio": 0.1})
    with pytest.raises(AdapterError, match=r"merge_temporal 'max_tokens' 8 .*conv3d:1,2,2"):
        pool_video(make_grid(7, 3, 3, 2), {"type": "merge_temporal", "max_tokens": 8})


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"threshold": None}, "needs a 'threshold'"),
        ({"threshold": "high"}, "merge_temporal 'threshold' must be a finite number"),
        ({"threshold": float("inf")}, "merge_temporal 'threshold' must be a finite number"),
        ({"ratio": 0.0}, r"merge_temporal 'ratio' must be in \(0, 1\]"),
        ({"ratio": 1.5}, r"merge_temporal 'ratio' must be in \(0, 1\]"),
        ({"ratio": True}, "merge_temporal 'ratio' must be a finite number"),
        ({"ratio": 0.1, "max_tokens": 9}, "one budget"),
        ({"max_tokens": 2.5}, "merge_temporal 'max_tokens' must be a positive integer"),
        ({"positions": "centre"}, "merge_temporal 'positions' 'centre' is not supported"),
    ],
)
def test_bad_values_name_the_key(spec, needle):
    with pytest.raises(AdapterError, match=needle):
        AdapterConfig(pooling={"type": "merge_temporal", **spec})


def test_defaults_and_shorthand():
    assert normalize_pooling({"type": "merge_temporal"}) == (stage(threshold=0.8),)
    assert normalize_pooling({"type": "merge_temporal", "ratio": 0.1}) == (stage(ratio=0.1),)
    assert parse_config("merge_temporal").pooling == (stage(threshold=0.8),)
    assert parse_config("progressive:2,2,1+merge_temporal:0.9/25%").pooling[1] == stage(threshold=0.9, ratio=0.25)
    for bad in ("merge_temporal:", "merge_temporal:0.1/0.2", "merge_temporal:x", "merge_temporal:5%/6%"):
        with pytest.raises(AdapterError, match="merge_temporal:THRESHOLD"):
            parse_config(bad)
    assert stage_from_dict(stage(ratio=1 / 3)).shorthand() is None  # 33.3333% would not parse back exactly


# ---------------------------------------------------------------------------------------------------------------------
# Positions and frame sources: the features' decision replayed on coordinates.


@pytest.mark.parametrize("positions", ["kept", "mean"])
def test_positions_replay_the_decision(positions):
    T, H, W = 6, 2, 3
    grid = make_grid(T, H, W, 4, seed=9)
    grid[2:5] = grid[1:2] + 1e-4 * make_grid(3, H, W, 4, seed=10)
    spec = stage(threshold=0.99, positions=positions)
    pooled = pool_video(grid, spec)
    tokens = naive_merge(grid, 0.99, None)
    t_values = torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    coords = pooled_coordinates(t_values, H, W, spec, trace=pooled.trace)
    assert coords.sizes == pooled.sizes
    expected = []
    for _, _, members in tokens:
        where = [(float(t_values[m]), float(q // W), float(q % W)) for m, q in members]
        if positions == "kept":
            expected.append(where[0])
        else:
            expected.append(tuple(sum(c[i] for c in where) / len(where) for i in range(3)))
    assert coords.flatten().tolist() == [list(e) for e in expected]
    ids = mrope_positions(5.0, t_values, H, W, spec, trace=pooled.trace)
    torch.testing.assert_close(ids, coords.flatten().T + 5.0)
    sources = frame_sources(T, H, W, spec, trace=pooled.trace)  # a frame is its representatives' frame
    assert {m for t, p, members in tokens if t == 1 for m, _ in members} == {1, 2, 3, 4}  # members from 2..4
    assert sources == [(0,), (1,), (), (), (), (5,)]


def test_without_the_trace_positions_are_not_those_of_the_features():
    """Why the call sites must pass trace=: coordinates decide on their own values otherwise."""
    grid = make_grid(4, 2, 2, 3, seed=4)
    grid[1:] = grid[0]
    spec = stage(threshold=0.99)
    pooled = pool_video(grid, spec)
    replayed = pooled_coordinates(torch.arange(4.0), 2, 2, spec, trace=pooled.trace)
    decided = pooled_coordinates(torch.arange(4.0), 2, 2, spec)
    assert replayed.sizes == pooled.sizes != decided.sizes


# ---------------------------------------------------------------------------------------------------------------------
# Composition with the pooling stages, chunked encoding.


def test_pool_then_merge_equals_merging_the_pooled_grid():
    grid = make_grid(8, 4, 4, 5, seed=11)
    grid[3:6] = grid[2:3]
    for first in ({"type": "temporal", "kernel": 2, "stride": 2}, {"type": "conv3d", "kernel": [1, 2, 2]}):
        pooled_grid = torch.stack(pool_video(grid, first).frames)
        both = pool_video(grid, [first, stage(threshold=0.95)])
        alone = pool_video(pooled_grid, stage(threshold=0.95))
        assert both.sizes == alone.sizes
        assert torch.equal(both.flatten(), alone.flatten())


def test_merge_after_progressive_with_one_stride():
    grid = make_grid(6, 7, 7, 3, seed=12)
    grid[1:] = grid[0]
    spatial = {"type": "progressive", "group": 1, "strides": [2], "mode": "bilinear"}
    pooled = pool_video(grid, [spatial, stage(max_tokens=20)])
    assert pooled.num_tokens == 20 and pooled.sizes[0] == (1, 16)
    stock = pool_video(grid, spatial)
    torch.testing.assert_close(pooled.frames[0][0], stock.frames[0].reshape(16, 3))
    assert count_tokens(6, 7, 7, [spatial, stage(max_tokens=20)]) == 20
    # frames of different sizes cannot be compared place by place; merging first leaves nothing to pool
    with pytest.raises(AdapterError, match=r"needs frames of one size.*\(1, 1\), \(4, 4\)"):
        count_tokens(6, 7, 7, [{"type": "progressive", "strides": [2, 7]}, stage(threshold=0.9)])
    with pytest.raises(AdapterError, match=r"needs frames of one size"):
        pool_video(grid, [{"type": "progressive", "strides": [2, 7]}, stage(threshold=0.9)])
    with pytest.raises(AdapterError, match="merge_temporal pooling is stage 1 of 2, but its frames keep sets of"):
        normalize_pooling([stage(threshold=0.9), spatial])
    with pytest.raises(AdapterError, match="cannot follow a stage whose tokens per frame depend on the data"):
        pool_video(grid, [stage(threshold=0.9), {"type": "segment_density"}])


def test_chunked_encoding_is_refused_with_the_reason():
    assert chunk_plan(stage(threshold=0.9), 4)[::2] == (False, "merge_temporal compares the first frame of a chunk "
                                                        "with the last frame of the chunk before it")  # fmt: skip
    assert chunk_plan([{"type": "temporal"}, stage(ratio=0.5)], 4)[2] == "merge_temporal's budget is shared by the " \
        "whole video"  # fmt: skip
