"""segment_density against naive loops written from its rule (FastVID style: segments at frame-similarity drops,
density-selected tokens per anchor frame, every other token merged into its nearest kept token): each step, the
whole op, exact budgets, positions (both rules), shapes, refusals, dtypes and composition."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from helpers import make_grid
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_merge_temporal import integer_grid, naive_cosine
from test_pooling import DEVICES

from longctx_adapter import AdapterConfig, AdapterError
from longctx_adapter.config_text import parse_config
from longctx_adapter.ops.pooling import chunk_plan, count_tokens, normalize_pooling, pool_video, pooled_shape
from longctx_adapter.ops.positions import frame_sources, pooled_coordinates
from longctx_adapter.ops.stages.segment_density import (
    density_merge_decision,
    density_merge_decisions,
    density_scores,
    segment_budgets,
    segment_cuts,
)

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def stage(ratio=None, max_tokens=None, segments=8, cut_similarity=0.9, anchor_step=4, neighbors=4, positions="kept"):
    return {"type": "segment_density", "ratio": ratio, "max_tokens": max_tokens, "segments": segments,
            "cut_similarity": cut_similarity, "anchor_step": anchor_step, "neighbors": neighbors,
            "positions": positions}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Naive references, step by step (float64, plain loops).


def naive_cuts(transitions: list[float], segments: int, cut: float, most: int) -> list[int]:
    ranked = sorted(range(len(transitions)), key=lambda i: (transitions[i], i))
    wanted = set(ranked[: segments - 1]) | {i for i, s in enumerate(transitions) if s < cut}
    return sorted([i for i in ranked if i in wanted][:most])


def naive_budgets(lengths: list[int], budget: int) -> list[int]:
    total = sum(lengths)
    exact = [Fraction(budget * n, total) for n in lengths]  # exact quotas; the op works in integers
    shares = [math.floor(q) for q in exact]
    order = sorted(range(len(lengths)), key=lambda s: (-(exact[s] - shares[s]), s))
    for s in order[: budget - sum(shares)]:
        shares[s] += 1
    for s in range(len(lengths)):
        if shares[s] == 0:
            donor = sorted(range(len(lengths)), key=lambda d: (-shares[d], d))[0]
            shares[donor] -= 1
            shares[s] = 1
    return shares


def naive_density(frame: list[list[float]], k: int) -> tuple[list[float], list[float]]:
    """(spread, score) of each token of one frame: spread = mean of the k smallest d^2 (itself included)."""
    P, D = len(frame), len(frame[0])
    d2 = [[sum((a - b) ** 2 for a, b in zip(frame[i], frame[j])) / D for j in range(P)] for i in range(P)]
    spread = [sum(sorted(row)[: min(k, P)]) / min(k, P) for row in d2]
    farthest = max(math.sqrt(v) for row in d2 for v in row)
    scores = []
    for i in range(P):
        denser = [j for j in range(P) if spread[j] < spread[i] or (spread[j] == spread[i] and j < i)]
        delta = min((math.sqrt(d2[i][j]) for j in denser), default=farthest)
        scores.append(math.exp(-spread[i]) * delta)
    return spread, scores


def top(values: list[float], count: int) -> list[int]:
    return sorted(sorted(range(len(values)), key=lambda i: (-values[i], i))[:count])


def clear_cut(values: list[float], count: int, gap: float = 1e-9) -> bool:
    """The top `count` of `values` is the same under any rounding below `gap` (exact ties are fine)."""
    if count <= 0 or count >= len(values):
        return True
    ranked = sorted(values, reverse=True)
    a, b = ranked[count - 1], ranked[count]
    if a == b:
        return _no_near(values, a, gap)
    return a - b > gap * max(1.0, abs(a))


def _no_near(values, value, gap) -> bool:
    return all(v == value or abs(v - value) > gap * max(1.0, abs(value)) for v in values)


def naive_segment_density(grid, budget, segments, cut, step, k):
    """[(frame, place, members)] in frame-major order, or None when a near-tie makes the answer rounding-dependent."""
    T, H, W, D = grid.shape
    P = H * W
    x = grid.double().reshape(T, P, D).tolist()
    if budget >= T * P:
        return [(t, p, [(t, p)]) for t in range(T) for p in range(P)]
    means = [[sum(x[t][p][d] for p in range(P)) / P for d in range(D)] for t in range(T)]
    transitions = [naive_cosine(means[t + 1], means[t]) for t in range(T - 1)]
    if not all(_no_near(transitions, s, 1e-9) for s in transitions) or not all(
        abs(s - cut) > 1e-9 for s in transitions
    ):
        return None
    cuts = naive_cuts(transitions, segments, cut, budget - 1)
    bounds = list(zip([0] + [c + 1 for c in cuts], [c + 1 for c in cuts] + [T]))
    shares = naive_budgets([b - a for a, b in bounds], budget)
    kept = []
    for (a, b), share in zip(bounds, shares):
        length = b - a
        count = min(max(math.ceil(length / step), math.ceil(share / P)), share, length)
        seg_kept = []
        for j in range(count):
            frame = a + j * length // count
            take = share // count + (1 if j < share % count else 0)
            _, scores = naive_density(x[frame], k)
            if not clear_cut(scores, take):
                return None
            seg_kept += [(frame, p) for p in top(scores, take)]
        kept.append(seg_kept)
    members = {rep: [] for seg in kept for rep in seg}
    for (a, b), seg in zip(bounds, kept):
        for t in range(a, b):
            for p in range(P):
                if (t, p) in members:
                    members[(t, p)].append((t, p))
                    continue
                sims = [naive_cosine(x[t][p], x[f][q]) if x[t][p] != x[f][q] else _plain_cos(x[t][p]) for f, q in seg]
                best = max(sims)
                if any(0 < best - s <= 1e-9 for s in sims):
                    return None
                members[seg[sims.index(best)]].append((t, p))
    return [(t, p, members[(t, p)]) for (t, p) in sorted(members)]


def _plain_cos(a: list[float]) -> float:
    """cos of a token with itself as dot / (norm * norm), as the op computes it for an equal kept token."""
    norm = math.sqrt(sum(v * v for v in a))
    return sum(v * v for v in a) / (norm * norm) if norm > 0 else 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Steps against the references.


@FAST
@given(
    transitions=st.lists(st.sampled_from([-0.5, 0.2, 0.8, 0.9, 0.95, 1.0]), max_size=12),
    segments=st.integers(1, 6), cut=st.sampled_from([0.5, 0.9, 0.95]), most=st.integers(0, 14),
)  # fmt: skip
def test_segment_cuts_equal_the_naive_rule(transitions, segments, cut, most):
    values = torch.tensor(transitions, dtype=torch.float64)
    assert segment_cuts(values, segments, cut, most) == naive_cuts(transitions, segments, cut, most)


@FAST
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=8), data=st.data())
def test_segment_budgets_equal_the_naive_rule(lengths, data):
    budget = data.draw(st.integers(len(lengths), sum(lengths) * 4))
    shares = segment_budgets(lengths, budget)
    assert shares == naive_budgets(lengths, budget)
    assert sum(shares) == budget and min(shares) >= 1


@FAST
@given(P=st.integers(1, 7), D=st.sampled_from([1, 2, 4]), k=st.integers(1, 8), seed=st.integers(0, 10**6))
def test_density_scores_equal_the_naive_loop(P, D, k, seed):
    frame = integer_grid(1, 1, P, D, seed, low=-3, high=3)[0, 0]
    frame[-1] = frame[0]  # a duplicate: density ties broken by position
    got = density_scores(frame[None], k)[0].tolist()
    _, want = naive_density(frame.tolist(), k)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-300)
    if P > 1:
        assert got[-1] == 0.0  # the later duplicate is at distance 0 from a token at least as dense


# ---------------------------------------------------------------------------------------------------------------------
# The whole op.


@FAST
@given(
    T=st.integers(1, 7), H=st.integers(1, 3), W=st.integers(1, 3), D=st.sampled_from([1, 2, 4]),
    seed=st.integers(0, 10**6), share=st.floats(0.0, 1.0), segments=st.integers(1, 4),
    cut=st.sampled_from([-2.0, 0.5, 0.9]), step=st.integers(1, 3), k=st.integers(1, 5), repeat=st.booleans(),
)  # fmt: skip
def test_op_equals_the_naive_loop(T, H, W, D, seed, share, segments, cut, step, k, repeat):
    grid = integer_grid(T, H, W, D, seed, low=-3, high=3)
    if repeat and T > 1:
        grid[1] = grid[0]
    P = H * W
    budget = 1 + round(share * (T * P - 1))
    tokens = naive_segment_density(grid, budget, segments, cut, step, k)
    assume(tokens is not None)
    spec = stage(max_tokens=budget, segments=segments, cut_similarity=cut, anchor_step=step, neighbors=k)
    pooled = pool_video(grid, spec)
    assert pooled.num_tokens == budget == count_tokens(T, H, W, spec)
    sizes = [0] * T
    for t, _, _ in tokens:
        sizes[t] += 1
    assert [f.shape[1] for f in pooled.frames] == sizes
    want = torch.stack([torch.stack([grid[m].reshape(P, D)[q] for m, q in members]).mean(0) for _, _, members in tokens])
    torch.testing.assert_close(pooled.flatten(), want, rtol=1e-12, atol=1e-12)
    assert pooled.trace[0].counts.tolist() == [len(members) for _, _, members in tokens]


def test_segments_follow_scene_changes_and_share_the_budget():
    torch.manual_seed(0)
    scenes = [make_grid(1, 3, 3, 8, seed=s) for s in range(3)]
    lengths = [4, 8, 4]
    grid = torch.cat([scene.expand(n, 3, 3, 8) for scene, n in zip(scenes, lengths)]) + 1e-3 * make_grid(
        16, 3, 3, 8, seed=9
    )
    pooled = pool_video(grid, stage(max_tokens=16, segments=1, cut_similarity=0.9))
    (decision,) = pooled.trace
    assert decision.segments == ((0, 4), (4, 12), (12, 16))
    assert decision.anchors == (0, 4, 8, 12)  # every 4th frame of each segment
    assert [sum(pooled.sizes[t][1] for t in range(a, b)) for a, b in decision.segments] == [4, 8, 4]
    # every token merges inside its own segment
    kept_frame = decision.kept // 9
    for t in range(16):
        joined = kept_frame[decision.assign[t * 9 : (t + 1) * 9]]
        segment = next(s for s in decision.segments if s[0] <= t < s[1])
        assert all(segment[0] <= int(f) < segment[1] for f in joined)


def test_identical_frames_make_one_segment_of_exact_copies():
    frame = make_grid(1, 2, 3, 5, seed=4)
    grid = frame.expand(6, 2, 3, 5).clone()
    pooled = pool_video(grid, stage(max_tokens=4, segments=1))
    (decision,) = pooled.trace
    assert decision.segments == ((0, 6),) and decision.anchors == (0, 3)  # ceil(6 / 4) anchors share 4 tokens
    assert pooled.sizes == ((1, 2), (1, 0), (1, 0), (1, 2), (1, 0), (1, 0))
    # both anchors keep the same two places (equal density); a token equal to several kept ones joins the earliest
    assert (decision.kept % 6).tolist()[:2] == (decision.kept % 6).tolist()[2:]
    assert decision.counts.tolist()[2:] == [1, 1] and sum(decision.counts.tolist()[:2]) == 34


def test_full_budget_is_the_identity_bit_for_bit():
    grid = make_grid(5, 2, 2, 4, dtype=torch.bfloat16, seed=1)
    pooled = pool_video(grid, stage(ratio=1.0))
    assert pooled.sizes == ((1, 4),) * 5 and torch.equal(pooled.flatten(), grid.reshape(-1, 4))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_and_device_kept_and_budget_exact(device, dtype):
    grid = make_grid(12, 4, 4, 16, dtype=dtype, seed=6, device=device)
    pooled = pool_video(grid, stage(ratio=0.1))
    assert pooled.num_tokens == round(0.1 * 192)
    assert all(f.dtype == dtype and f.device.type == device for f in pooled.frames)
    means = pool_video(grid.double(), stage(ratio=0.1))
    if means.sizes == pooled.sizes:  # same decision: the means agree to the dtype's precision
        torch.testing.assert_close(pooled.flatten().double(), means.flatten(), rtol=2e-2, atol=2e-2)


def test_deterministic_across_runs():
    grid = make_grid(16, 3, 3, 8, seed=2)
    first, second = pool_video(grid, stage(ratio=0.2)), pool_video(grid.clone(), stage(ratio=0.2))
    assert torch.equal(first.trace[0].assign, second.trace[0].assign)
    assert torch.equal(first.flatten(), second.flatten())


# ---------------------------------------------------------------------------------------------------------------------
# Shapes, config, positions, composition, chunking.


@FAST
@given(T=st.integers(1, 6), H=st.integers(1, 4), W=st.integers(1, 4), share=st.floats(0.001, 1.0))
def test_shape_is_the_exact_count_with_an_inexact_layout(T, H, W, share):
    spec = stage(ratio=share)
    shape = pooled_shape(T, H, W, spec)
    pooled = pool_video(make_grid(T, H, W, 3, seed=T + H + W), spec)
    assert not shape.exact and shape.frames == T == len(pooled.sizes)
    assert pooled.num_tokens == shape.num_tokens == max(1, min(T * H * W, round(share * T * H * W)))


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"ratio": None}, "needs a budget"),
        ({"ratio": 0}, r"segment_density 'ratio' must be in \(0, 1\]"),
        ({"max_tokens": 0, "ratio": None}, "segment_density 'max_tokens' must be a positive integer"),
        ({"ratio": 0.2, "max_tokens": 4}, "one budget"),
        ({"cut_similarity": "x"}, "segment_density 'cut_similarity' must be a finite number"),
        ({"positions": "center"}, "segment_density 'positions'"),
    ],
)
def test_bad_values_name_the_key(spec, needle):
    with pytest.raises(AdapterError, match=needle):
        AdapterConfig(pooling={"type": "segment_density", **spec})


def test_defaults_and_shorthand():
    assert normalize_pooling({"type": "segment_density"}) == (stage(ratio=0.25),)
    assert normalize_pooling({"type": "segment_density", "max_tokens": 9}) == (stage(max_tokens=9),)
    assert parse_config("segment_density:10%").pooling == (stage(ratio=0.1),)
    with pytest.raises(AdapterError, match="segment_density:P%"):
        parse_config("segment_density:0.1")


@pytest.mark.parametrize("positions", ["kept", "mean"])
def test_positions_replay_the_decision(positions):
    T, H, W = 8, 2, 2
    grid = make_grid(T, H, W, 6, seed=13)
    spec = stage(max_tokens=6, segments=2, positions=positions)
    pooled = pool_video(grid, spec)
    (decision,) = pooled.trace
    t_values = torch.arange(T, dtype=torch.float64) * 3
    coords = pooled_coordinates(t_values, H, W, spec, trace=pooled.trace).flatten()
    place = torch.stack(
        torch.meshgrid(t_values, torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                       indexing="ij"), -1).reshape(-1, 3)  # fmt: skip
    for j, rep in enumerate(decision.kept.tolist()):
        if positions == "kept":
            assert coords[j].tolist() == place[rep].tolist()
        else:
            torch.testing.assert_close(coords[j], place[decision.assign == j].mean(0))
    # a frame is its representatives' frame under both rules (Qwen3-VL's block rule: merged-in members never move
    # a frame to an earlier block); the members do come from other frames here, so the rule is exercised
    members_elsewhere = (decision.assign.new_tensor(range(T * H * W)) // (H * W)) != (decision.kept // (H * W))[
        decision.assign]  # fmt: skip
    assert members_elsewhere.any()
    sources = frame_sources(T, H, W, spec, trace=pooled.trace)
    assert sources == [(t,) if n else () for t, n in enumerate(decision.frame_counts)]


@pytest.mark.parametrize("positions", ["kept", "mean"])
def test_after_a_temporal_stage_frames_are_their_representatives_windows(positions):
    """Pool then merge: output frame j draws on temporal window j when it keeps a token, on nothing otherwise,
    even where it took members from earlier windows (what an earliest-member rule would get wrong)."""
    T, H, W = 16, 2, 2
    base = make_grid(1, H, W, 6, seed=21)
    grid = base + 0.3 * make_grid(T, H, W, 6, seed=22)
    spec = [{"type": "temporal"}, stage(ratio=0.4, segments=1, cut_similarity=-1.0, anchor_step=2, positions=positions)]
    pooled = pool_video(grid, spec)
    decision = pooled.trace[-1]
    places = H * W
    own = torch.arange(decision.assign.numel()) // places
    kept_frames = torch.tensor([f for f, n in enumerate(decision.frame_counts) if n])
    assert ((own < (decision.kept // places)[decision.assign]) & torch.isin(own, kept_frames)).any()
    sources = frame_sources(T, H, W, spec, trace=pooled.trace)
    assert sources == [(2 * j, 2 * j + 1) if n else () for j, n in enumerate(decision.frame_counts)]


def test_composition_and_chunking():
    grid = make_grid(8, 7, 7, 4, seed=3)
    spatial = {"type": "progressive", "group": 1, "strides": [2], "mode": "bilinear"}
    pooled = pool_video(grid, [spatial, stage(max_tokens=13)])
    assert pooled.num_tokens == 13 == count_tokens(8, 7, 7, [spatial, stage(max_tokens=13)])
    after_temporal = pool_video(grid, [{"type": "temporal"}, stage(ratio=0.25)])
    assert len(after_temporal.sizes) == 4 and after_temporal.num_tokens == round(0.25 * 4 * 49)
    with pytest.raises(AdapterError, match="segment_density pooling is stage 1 of 2"):
        normalize_pooling([stage(ratio=0.5), {"type": "temporal"}])
    local, _, reason = chunk_plan(stage(ratio=0.5), 4)
    assert not local and reason == "segment_density cuts segments and shares its budget over the whole video"


def test_batched_decisions_equal_one_video_at_a_time():
    grids = torch.stack([make_grid(9, 3, 3, 6, seed=s) for s in range(3)])
    grids[1, 3:] = grids[1, 2:3]
    for budget in (5, 20, 81):
        batched = density_merge_decisions(grids, budget, segments=3, anchor_step=2)
        for video, decision in zip(grids, batched):
            alone = density_merge_decision(video, budget, segments=3, anchor_step=2)
            assert torch.equal(decision.assign, alone.assign) and torch.equal(decision.kept, alone.kept)
            assert decision.segments == alone.segments and decision.anchors == alone.anchors
