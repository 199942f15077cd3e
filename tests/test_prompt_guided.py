"""Question-aware compression: prompt-guided pooling (PPLLaVA), frame selection (VLAP-style), keyframe progressive
pooling, the CLIP/SigLIP scorer, question sources, and the adapter path on tiny models."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import hook_state, logits_of, make_grid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import naive_starts

from longctx_adapter import AdapterConfig, AdapterError, apply_adapter, get_adapter
from longctx_adapter.hooks.scorer import Scorer, register_scorer, stretch_positions, unregister_scorer
from longctx_adapter.ops.guided import Guide
from longctx_adapter.ops.pooling import (
    conv3d_pool,
    count_tokens,
    group_anchors,
    normalize_pooling,
    pool_video,
    progressive_pool,
    prompt_guided_pool,
    segment_bounds,
    select_frame_indices,
    weighted_window_pool,
)
from longctx_adapter.ops.positions import pooled_coordinates
from longctx_adapter.testing.tiny import hand_inputs, tiny_model, tiny_tokenizer
from longctx_adapter.testing.tiny_qwen import qwen_hand_inputs, qwen_tiny_model
from longctx_adapter.testing.tiny_scorer import clip_from_vision_tower, tiny_clip, tiny_scorer_tokenizer, tiny_siglip

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PG = {"type": "prompt_guided", "kernel": [1, 2, 2], "stride": [1, 2, 2]}


def make_logits(T, H, W, seed=1, scale=30.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(T, H, W, generator=gen, dtype=torch.float64).float() * scale


# ---------------------------------------------------------------------------------------------------------------------
# Naive references, written from docs/methods.md#prompt-guided and #frame-selection.


def naive_prompt_guided(grid, weights, kernel, stride, temperature):
    """Per window: a = softmax(w_window / temperature); out = sum(a * features) (partial tails: what exists)."""
    T, H, W, D = grid.shape
    axes = [naive_starts(n, k, s) for n, k, s in zip((T, H, W), kernel, stride)]
    out = torch.empty(len(axes[0]), len(axes[1]), len(axes[2]), D, dtype=torch.float64)
    for i, t0 in enumerate(axes[0]):
        for j, h0 in enumerate(axes[1]):
            for k, w0 in enumerate(axes[2]):
                sl = (slice(t0, t0 + kernel[0]), slice(h0, h0 + kernel[1]), slice(w0, w0 + kernel[2]))
                f = grid[sl].reshape(-1, D).double()
                a = torch.softmax(weights[sl].reshape(-1).double() / temperature, dim=0)
                out[i, j, k] = (a[:, None] * f).sum(0)
    return out


def global_softmax(logits):
    return torch.softmax(logits.double().reshape(-1), 0).reshape(logits.shape)


# ---------------------------------------------------------------------------------------------------------------------
# Config and counts.


def test_stage_defaults_and_json_round_trip():
    (pg,) = normalize_pooling({"type": "prompt_guided"})
    assert pg == {
        "type": "prompt_guided",
        "kernel": [2, 3, 3],
        "stride": [2, 3, 3],
        "temperature": 0.01,
        "scorer": None,
    }
    (sel,) = normalize_pooling({"type": "select_frames", "segments": 4})
    assert sel == {
        "type": "select_frames",
        "segments": 4,
        "per_segment": 1,
        "score": "mean",
        "positions": "original",
        "scorer": None,
    }
    (first,) = normalize_pooling({"type": "progressive", "anchor": "first"})
    assert "anchor" not in first  # the stock form stays exactly what it was
    (key,) = normalize_pooling({"type": "progressive", "anchor": "score", "scorer": "clip"})
    assert (key["anchor"], key["score"], key["scorer"]) == ("score", "mean", "clip")
    config = AdapterConfig(pooling=[sel, {"type": "prompt_guided", "output": [2, 4, 4], "scorer": None}, key])
    assert AdapterConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "stage, fragment",
    [
        ({"type": "select_frames"}, "needs 'segments'"),
        ({"type": "select_frames", "segments": 2, "score": "median"}, "'score'"),
        ({"type": "select_frames", "segments": 2, "positions": "shifted"}, "'positions'"),
        ({"type": "prompt_guided", "temperature": 0}, "temperature"),
        ({"type": "prompt_guided", "scorer": 3}, "scorer"),
        ({"type": "progressive", "score": "max"}, "anchor"),
        ({"type": "progressive", "anchor": "middle"}, "anchor"),
    ],
)
def test_bad_stages_are_refused(stage, fragment):
    with pytest.raises(AdapterError, match=fragment):
        normalize_pooling(stage)


def test_one_scorer_per_config():
    with pytest.raises(AdapterError, match="different scorers"):
        normalize_pooling(
            [{"type": "select_frames", "segments": 2, "scorer": "a"}, {"type": "prompt_guided", "scorer": "b"}]
        )


def test_ppllava_defaults_give_1024_tokens():
    stages = normalize_pooling({"type": "prompt_guided", "kernel": [2, 3, 3], "stride": [2, 3, 3]})
    assert count_tokens(32, 24, 24, stages) == 16 * 8 * 8 == 1024
    assert count_tokens(32, 24, 24, [{"type": "prompt_guided", "output": [16, 8, 8]}]) == 1024
    grid = make_grid(32, 24, 24, 4)
    pooled = pool_video(grid, stages, Guide(make_logits(32, 24, 24)))
    assert pooled.sizes == ((8, 8),) * 16 and pooled.flatten().shape == (1024, 4)


def test_selection_counts_and_composition():
    stages = [{"type": "select_frames", "segments": 4, "per_segment": 2}, {"type": "conv3d", "kernel": [2, 2, 2]}]
    assert count_tokens(32, 8, 8, stages) == 4 * 4 * 4
    pooled = pool_video(make_grid(32, 8, 8, 3), stages, Guide(make_logits(32, 8, 8)))
    assert pooled.sizes == ((4, 4),) * 4
    with pytest.raises(AdapterError, match="per_segment"):
        count_tokens(7, 8, 8, [{"type": "select_frames", "segments": 4, "per_segment": 2}])


@FAST
@given(
    T=st.integers(1, 12),
    H=st.integers(3, 7),
    W=st.integers(3, 7),
    segments=st.integers(1, 4),
    per_segment=st.integers(1, 3),
    group=st.integers(2, 4),
    seed=st.integers(0, 100),
)
def test_counts_match_the_pooled_tokens(T, H, W, segments, per_segment, group, seed):
    stages = [
        {"type": "select_frames", "segments": segments, "per_segment": per_segment},
        {"type": "prompt_guided", "kernel": [1, 2, 2]},
        {"type": "progressive", "group": group, "strides": [1, 2], "mode": "avg", "anchor": "score"},
    ]
    if per_segment > T // segments:
        with pytest.raises(AdapterError, match="select_frames '(segments|per_segment)'"):
            count_tokens(T, H, W, stages)
        return
    pooled = pool_video(make_grid(T, H, W, 2, seed=seed), stages, Guide(make_logits(T, H, W, seed=seed)))
    assert pooled.num_tokens == count_tokens(T, H, W, stages)
    assert len(pooled.guided.kept_frames) == segments * per_segment
    assert list(pooled.guided.kept_frames) == sorted(set(pooled.guided.kept_frames))


# ---------------------------------------------------------------------------------------------------------------------
# Prompt-guided pooling against conv3d (uniform) and the naive loop (general).

WINDOWS = [((2, 3, 3), (2, 3, 3)), ((2, 3, 3), (1, 2, 2)), ((3, 2, 4), (2, 2, 3)), ((1, 1, 1), (1, 1, 1))]


@pytest.mark.parametrize("kernel, stride", WINDOWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_uniform_weights_are_conv3d_bit_exactly(kernel, stride, dtype):
    grid = make_grid(5, 7, 8, 6, dtype=dtype)
    expected = conv3d_pool(grid, kernel, stride)
    for value in (0.0, 1 / 280, 0.73):
        weights = torch.full((5, 7, 8), value, dtype=torch.float64)
        assert torch.equal(weighted_window_pool(grid, weights, kernel, stride, 0.01), expected)
    stage = {"type": "prompt_guided", "kernel": list(kernel), "stride": list(stride)}
    uniform = Guide(torch.full((5, 7, 8), 2.5))
    assert torch.equal(pool_video(grid, [stage], uniform).flatten(), pool_video(grid, [stage]).flatten())
    assert torch.equal(pool_video(grid, [stage]).flatten(), pool_video(grid, [{**stage, "type": "conv3d"}]).flatten())


@pytest.mark.parametrize("kernel, stride", WINDOWS)
@pytest.mark.parametrize("temperature", [0.01, 0.002, 1.0])
def test_weighted_pool_matches_naive_loop(kernel, stride, temperature):
    grid = make_grid(5, 7, 8, 3, dtype=torch.float64)
    weights = global_softmax(make_logits(5, 7, 8, scale=8.0))
    ours = weighted_window_pool(grid, weights, kernel, stride, temperature)
    torch.testing.assert_close(
        ours, naive_prompt_guided(grid, weights, kernel, stride, temperature), rtol=1e-9, atol=1e-12
    )
    assert ours.shape[:3] == tuple(len(naive_starts(n, k, s)) for n, k, s in zip((5, 7, 8), kernel, stride))


@FAST
@given(
    T=st.integers(1, 6),
    H=st.integers(1, 6),
    W=st.integers(1, 6),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    extra=st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1)),
    scale=st.sampled_from([0.5, 5.0, 40.0]),
    seed=st.integers(0, 1000),
)
def test_weighted_pool_property(T, H, W, k, extra, scale, seed):
    kernel = [min(a, n) for a, n in zip(k, (T, H, W))]
    stride = [max(1, a - e) for a, e in zip(kernel, extra)]  # stride <= kernel: tiling or overlapping windows
    grid = make_grid(T, H, W, 2, seed=seed, dtype=torch.float64)
    weights = global_softmax(make_logits(T, H, W, seed=seed + 1, scale=scale))
    ours = weighted_window_pool(grid, weights, kernel, stride, 0.01)
    torch.testing.assert_close(ours, naive_prompt_guided(grid, weights, kernel, stride, 0.01), rtol=1e-8, atol=1e-10)


def test_float32_and_bfloat16_features_follow_the_float64_reference():
    grid64 = make_grid(4, 6, 6, 5, dtype=torch.float64)
    weights = global_softmax(make_logits(4, 6, 6, scale=10.0))
    ref = naive_prompt_guided(grid64, weights, (2, 3, 3), (2, 3, 3), 0.01)
    out32 = weighted_window_pool(grid64.float(), weights, (2, 3, 3), (2, 3, 3), 0.01)
    torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=1e-6)
    out16 = weighted_window_pool(grid64.bfloat16(), weights, (2, 3, 3), (2, 3, 3), 0.01)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.double(), ref, rtol=2e-2, atol=2e-2)


def test_overlapping_windows_far_below_the_peak_keep_their_own_softmax():
    """Overlapping windows shift by their own maximum too: a shift by the global peak would underflow every weight
    of the later windows (exp(-1000)) and lose their softmax."""
    grid = make_grid(1, 1, 4, 3, dtype=torch.float64)
    weights = torch.tensor([1.0, 0.0, 0.02, 0.0], dtype=torch.float64).reshape(1, 1, 4)
    out = weighted_window_pool(grid, weights, (1, 1, 2), (1, 1, 1), 1e-3)
    ref = naive_prompt_guided(grid, weights, (1, 1, 2), (1, 1, 1), 1e-3)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(out[0, 0, 0], grid[0, 0, 0])  # the peak takes the whole first window
    assert not torch.allclose(out[0, 0, 1], grid[0, 0, 1:3].mean(0))  # not the plain average


@pytest.mark.parametrize(
    "shape, kernel, stride",
    [((4, 7, 9), (2, 3, 3), (1, 2, 2)), ((5, 6, 6), (3, 2, 4), (2, 2, 3)), ((3, 9, 10), (1, 4, 4), (1, 3, 3))],
)
def test_float32_matches_float64_on_peaked_weights_with_overlapping_windows(shape, kernel, stride):
    """Temperature 0.01 and one dominant token: every window of the float32 pool follows the float64 reference."""
    grid64 = make_grid(*shape, 16, dtype=torch.float64)
    logits = make_logits(*shape, scale=3.0).double()
    logits[1, 2, 3] += 40.0  # one token takes almost all of the global softmax
    weights = global_softmax(logits)
    ref = naive_prompt_guided(grid64, weights, kernel, stride, 0.01)
    out32 = weighted_window_pool(grid64.float(), weights, kernel, stride, 0.01)  # Guide.weights() is float64
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref, rtol=1e-6, atol=1e-6)
    out64 = weighted_window_pool(grid64, weights, kernel, stride, 0.01)
    torch.testing.assert_close(out64, ref, rtol=1e-12, atol=1e-12)


def test_windows_far_below_the_peak_keep_their_own_softmax():
    """Tiling windows subtract their own maximum, so a window much weaker than the global peak is still exact."""
    grid = make_grid(1, 1, 4, 2, dtype=torch.float64)
    weights = torch.tensor([1.0, 0.0, 0.02, 0.0], dtype=torch.float64).reshape(1, 1, 4)
    out = weighted_window_pool(grid, weights, (1, 1, 2), (1, 1, 2), 1e-3)
    torch.testing.assert_close(out, naive_prompt_guided(grid, weights, (1, 1, 2), (1, 1, 2), 1e-3))


def test_prompt_guided_pool_is_conv3d_without_weights():
    grid = make_grid(4, 6, 6, 3)
    assert torch.equal(prompt_guided_pool(grid, None, (2, 3, 3), (2, 3, 3)), conv3d_pool(grid, (2, 3, 3), (2, 3, 3)))


# ---------------------------------------------------------------------------------------------------------------------
# Frame selection and keyframes.


def test_segments_and_planted_selection():
    assert segment_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    scores = torch.zeros(12, dtype=torch.float64)
    scores[[2, 5, 7, 11]] = torch.tensor([3.0, 1.0, 2.0, 5.0], dtype=torch.float64)
    assert select_frame_indices(scores, 12, 3, 1).tolist() == [2, 7, 11]
    assert select_frame_indices(scores, 12, 2, 2).tolist() == [2, 5, 7, 11]  # temporal order, not score order
    assert select_frame_indices(torch.zeros(12), 12, 3, 2).tolist() == [0, 1, 4, 5, 8, 9]  # ties: earlier frame
    assert select_frame_indices(None, 12, 3, 2).tolist() == [1, 3, 5, 7, 9, 11]  # no question: evenly spaced
    with pytest.raises(AdapterError, match="'per_segment' 3 is larger than a segment"):
        select_frame_indices(scores, 12, 5, 3)
    with pytest.raises(AdapterError, match="segments"):
        select_frame_indices(scores, 3, 5, 1)


def planted_guide(T, H, W, frame, seed=0):
    """Logits of a video whose frame `frame` matches the question (cos 1) and the rest do not (cos ~ 0)."""
    logits = make_logits(T, H, W, seed=seed, scale=0.05)
    logits[frame] += 100.0
    return Guide(logits, frame_logits=logits.mean((1, 2)))


@pytest.mark.parametrize("score", ["mean", "max", "global"])
def test_selection_keeps_the_planted_frame_with_its_features(score):
    grid = make_grid(8, 4, 4, 3)
    guide = planted_guide(8, 4, 4, frame=6)
    stage = {"type": "select_frames", "segments": 2, "per_segment": 1, "score": score}
    pooled = pool_video(grid, [stage], guide)
    assert pooled.guided.kept_frames[1] == 6
    assert torch.equal(pooled.frames[1], grid[6])


def test_keyframe_progressive_anchors_on_the_best_frame():
    grid = make_grid(6, 8, 8, 3)
    guide = planted_guide(6, 8, 8, frame=2)
    stage = {"type": "progressive", "group": 3, "strides": [1, 4], "mode": "avg", "anchor": "score"}
    pooled = pool_video(grid, [stage], guide)
    assert pooled.guided.anchors[0] == 2
    assert pooled.sizes[:3] == ((2, 2), (2, 2), (8, 8))
    assert torch.equal(pooled.frames[2], grid[2])
    assert group_anchors(torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5]), 5, 2) == [1, 2, 4]
    # without a question the keyframe is the first one, i.e. the stock progressive pooling
    plain = pool_video(grid, [stage])
    assert [torch.equal(a, b) for a, b in zip(plain.frames, progressive_pool(grid, 3, [1, 4], "avg").frames)] == [
        True
    ] * 6
    assert sum(h * w for h, w in pooled.sizes) == count_tokens(6, 8, 8, [stage])


def test_guide_follows_the_grid_through_uniform_stages():
    grid = make_grid(8, 4, 4, 3)
    guide = planted_guide(8, 4, 4, frame=5)
    stages = [
        {"type": "temporal", "kernel": 2, "stride": 2},
        {"type": "select_frames", "segments": 2, "per_segment": 1},
    ]
    pooled = pool_video(grid, stages, guide)
    merged = grid.reshape(4, 2, 4, 4, 3).mean(1)
    assert torch.allclose(pooled.frames[1], merged[2])  # input frames 4-5 became frame 2, which holds the plant


def test_positions_replay_the_decisions():
    T, H, W = 8, 4, 4
    guide = planted_guide(T, H, W, frame=6)
    t_values = torch.arange(T, dtype=torch.float64) * 2.0
    stage = {"type": "select_frames", "segments": 2, "per_segment": 1}
    kept = pool_video(make_grid(T, H, W, 2), [stage], guide).guided.kept_frames
    assert kept[1] == 6
    for positions, expected in (("original", [2.0 * k for k in kept]), ("repacked", [0.0, 2.0])):
        stage = {**stage, "positions": positions}
        coords = pooled_coordinates(t_values, H, W, [stage], guide)
        assert [float(f[0, 0, 0]) for f in coords.frames] == expected
    # prompt-guided: each token sits at the weighted centre of its window
    coords = pooled_coordinates(t_values, H, W, [PG], guide)
    axes = (t_values, torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64))
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    expected = weighted_window_pool(grid, guide.weights(), (1, 2, 2), (1, 2, 2), 0.01)
    assert torch.equal(coords.flatten(), expected.reshape(-1, 3))


# ---------------------------------------------------------------------------------------------------------------------
# The scorer.


@pytest.fixture(scope="module")
def clip_scorer():
    return Scorer(tiny_clip(seed=3), tiny_scorer_tokenizer())


@pytest.fixture(scope="module")
def siglip_scorer():
    return Scorer(tiny_siglip(seed=4), tiny_scorer_tokenizer())


def test_clip_embeddings_are_hf_clip_embeddings(clip_scorer):
    model, tok = clip_scorer.model, clip_scorer.tokenizer
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ids = torch.tensor([tok("what color is the ball")["input_ids"]])
        text = F.normalize(model.get_text_features(input_ids=ids).pooler_output[0], dim=-1)
        image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        hidden = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        patches = F.normalize(model.visual_projection(model.vision_model.post_layernorm(hidden[:, 1:])), dim=-1)
    torch.testing.assert_close(clip_scorer.text_embedding("what color is the ball"), text)
    patch, frame = clip_scorer.embed_pixels(pixels, clip_scorer.image_mean, clip_scorer.image_std, frames=True)
    torch.testing.assert_close(frame, image)
    torch.testing.assert_close(patch, patches.reshape(3, 8, 8, -1))
    assert clip_scorer.logit_scale == pytest.approx(math.exp(float(model.logit_scale.detach())))


def test_siglip_embeddings_are_hf_siglip_embeddings(siglip_scorer):
    model, tok = siglip_scorer.model, siglip_scorer.tokenizer
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ids = torch.tensor([tok("red ball", padding="max_length", max_length=16)["input_ids"]])
        text = F.normalize(model.get_text_features(input_ids=ids).pooler_output[0], dim=-1)
        image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        states = model.vision_model.post_layernorm(
            model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        )
        one_patch = model.vision_model.head(states[:, 5:6])  # attention over one key is all on that key
    torch.testing.assert_close(siglip_scorer.text_embedding("red ball"), text)
    patch, frame = siglip_scorer.embed_pixels(pixels, siglip_scorer.image_mean, siglip_scorer.image_std, frames=True)
    torch.testing.assert_close(frame, image)
    torch.testing.assert_close(patch.reshape(2, 49, -1)[:, 5], F.normalize(one_patch, dim=-1))


def test_pixels_are_renormalized_and_resized(clip_scorer):
    pixels = torch.rand(2, 3, 48, 40)
    out = clip_scorer.prepare_pixels(pixels, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.shape == (2, 3, 32, 32)
    raw = pixels * 0.5 + 0.5
    mean = torch.tensor(clip_scorer.image_mean)[:, None, None]
    std = torch.tensor(clip_scorer.image_std)[:, None, None]
    expected = F.interpolate((raw - mean) / std, size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(out, expected)
    same = torch.randn(1, 3, 32, 32)
    assert torch.equal(clip_scorer.prepare_pixels(same, clip_scorer.image_mean, clip_scorer.image_std), same)


def test_long_clip_stretch_on_a_copy():
    table = torch.randn(77, 5, dtype=torch.float64)
    out = stretch_positions(table)
    assert out.shape == (248, 5)
    assert torch.equal(out[:20], table[:20])
    assert torch.allclose(out[20::4][:56], table[20:76])
    assert torch.allclose(out[22], (table[20] + table[21]) / 2)
    model = tiny_clip(seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scorer = Scorer(model, tiny_scorer_tokenizer(), long_text=True)
    assert scorer.text_positions == 248 and model.text_model.embeddings.position_embedding.weight.shape[0] == 77
    long_question = " ".join(["what color is the ball"] * 40)  # 200 words: more than 77 positions
    assert scorer.text_embedding(long_question).shape == (16,)
    assert Scorer(model, tiny_scorer_tokenizer()).text_embedding(long_question).shape == (16,)  # truncated at 77
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.text_config.max_position_embeddings == 77


def test_scorer_refusals():
    with pytest.raises(AdapterError, match="differ in size"):
        Scorer(tiny_siglip(text_projection=24), tiny_scorer_tokenizer())
    clip = tiny_clip()
    clip.visual_projection = torch.nn.Linear(32, 12, bias=False)
    with pytest.raises(AdapterError, match="visual_projection: 12"):
        Scorer(clip, tiny_scorer_tokenizer())
    with pytest.raises(AdapterError, match="own tokenizer"):
        Scorer(tiny_clip())
    with pytest.raises(AdapterError, match="CLIPModel or SiglipModel"):
        Scorer(tiny_model("llava"), tiny_scorer_tokenizer())
    with pytest.raises(AdapterError, match="feature_layer"):
        Scorer(tiny_clip(), tiny_scorer_tokenizer(), feature_layer=7)


# ---------------------------------------------------------------------------------------------------------------------
# The adapter on tiny models.

SELECT_PG = [{"type": "select_frames", "segments": 2, "per_segment": 1}, PG]


@pytest.fixture(scope="module")
def next_video():
    return tiny_model("llava_next_video", seed=0)


def test_errors_at_apply_time(next_video):
    with pytest.raises(AdapterError, match="scorer="):
        apply_adapter(next_video, pooling=SELECT_PG)
    with pytest.raises(AdapterError, match="registered scorer name nor a local checkpoint"):
        apply_adapter(next_video, pooling={**PG, "scorer": "no-such-scorer"})
    with pytest.raises(AdapterError, match="kernel 4 is larger"):  # select hands on 2 frames, the window needs 4
        apply_adapter(next_video, pooling=[SELECT_PG[0], {**PG, "kernel": [4, 1, 1], "stride": [4, 1, 1]}],
                      scorer=Scorer(tiny_clip(), tiny_scorer_tokenizer()))  # fmt: skip
    assert get_adapter(next_video) is None


def test_per_segment_larger_than_a_segment_at_call_time(next_video, clip_scorer):
    inputs = hand_inputs("llava_next_video", 4, seed=1)
    with apply_adapter(
        next_video, pooling={"type": "select_frames", "segments": 2, "per_segment": 3}, scorer=clip_scorer
    ):
        with pytest.raises(AdapterError, match="'per_segment' 3 is larger than a segment: 4 frames in 2 segments"):
            next_video(**inputs, question="red")


def test_identity_and_remove(next_video, clip_scorer):
    """Stages that keep every token (all frames, 1x1x1 windows) reproduce the stock model bit for bit."""
    inputs = hand_inputs("llava_next_video", 4, batch=2, seed=1)
    stock = logits_of(next_video, inputs)
    stock_gen = next_video.generate(**inputs, max_new_tokens=3, do_sample=False)
    hooks = hook_state(next_video)
    keep_all = [
        {"type": "select_frames", "segments": 4, "per_segment": 1},
        {"type": "prompt_guided", "kernel": [1, 1, 1], "stride": [1, 1, 1]},
    ]
    handle = apply_adapter(next_video, pooling=keep_all, scorer=clip_scorer)
    assert torch.equal(logits_of(next_video, inputs, question="red ball"), stock)
    assert torch.equal(next_video.generate(**inputs, max_new_tokens=3, do_sample=False, question="red ball"), stock_gen)
    assert handle.last_stats[0]["question"] == "red ball"
    handle.remove()
    assert torch.equal(logits_of(next_video, inputs), stock)
    assert hook_state(next_video) == hooks and get_adapter(next_video) is None


def test_onevision_identity_with_keyframes(clip_scorer):
    model = tiny_model("llava_onevision", seed=0)
    inputs = hand_inputs("llava_onevision", 4, seed=1)
    stock = logits_of(model, inputs)
    siglip = Scorer(tiny_siglip(seed=2), tiny_scorer_tokenizer())
    stages = [
        {"type": "prompt_guided", "kernel": [1, 1, 1], "stride": [1, 1, 1]},
        {"type": "progressive", "group": 1, "strides": [2], "mode": "bilinear", "anchor": "score"},
    ]
    with apply_adapter(model, pooling=stages, scorer=siglip) as handle:
        assert torch.equal(logits_of(model, inputs, question="red"), stock)
        assert handle.last_stats[0]["anchors"] == [0, 1, 2, 3]


def test_no_question_is_conv3d_with_one_warning(next_video, clip_scorer):
    inputs = hand_inputs("llava_next_video", 4, batch=2, seed=1)
    conv = {**PG, "type": "conv3d"}
    with apply_adapter(next_video, pooling=conv):
        expected = logits_of(next_video, inputs)
    with apply_adapter(next_video, pooling=PG, scorer=clip_scorer):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = logits_of(next_video, inputs)
            second = logits_of(next_video, inputs)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert len([w for w in caught if "no question" in str(w.message)]) == 1


def test_question_sources(next_video, clip_scorer):
    inputs = hand_inputs("llava_next_video", 4, batch=2, seed=1)
    tok = tiny_tokenizer()
    with apply_adapter(next_video, pooling=PG, scorer=clip_scorer, tokenizer=tok) as handle:
        from_prompt = logits_of(next_video, inputs)
        texts = [s["question"] for s in handle.last_stats]
        for row, text in enumerate(texts):
            tail = inputs["input_ids"][row, -4:]  # hand_inputs: 4 words after the video
            assert text == tok.decode(tail, skip_special_tokens=True)
        same = logits_of(next_video, inputs, question=texts)
        assert torch.equal(same, from_prompt)
        other = logits_of(next_video, inputs, question="red square")
        assert not torch.equal(other, from_prompt)
        assert [s["question"] for s in handle.last_stats] == ["red square"] * 2
        with pytest.raises(AdapterError, match="one per batch row"):
            next_video(**inputs, question=["only one"])
        # a chat template's end of turn (a special token after the question) ends the question
        turn = dict(inputs)
        end = torch.full((2, 1), tok.eos_token_id)
        header = inputs["input_ids"][:, -2:]  # stand-in for the assistant header's words
        turn["input_ids"] = torch.cat([inputs["input_ids"], end, header], 1)
        turn["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones(2, 3, dtype=torch.long)], 1)
        logits_of(next_video, turn)
        assert [s["question"] for s in handle.last_stats] == texts


def _planted_scorer(scorer, planted: dict):
    """The scorer, with its own vision pass replaced by hand-made patch maps: frame f of a segment gets patches equal
    to the question embedding when planted says so, and orthogonal-ish noise otherwise."""

    def embed_pixels(pixels, mean, std, frames=False):
        n = pixels.shape[0]
        gen = torch.Generator().manual_seed(n)
        patch = F.normalize(torch.randn(n, 8, 8, scorer.embed_dim, generator=gen), dim=-1) * 0.05
        text = scorer.text_embedding("red ball")
        for f in planted.get(n, ()):
            patch[f] = text
        return patch, (patch.mean((1, 2)) if frames else None)

    scorer.embed_pixels = embed_pixels
    return scorer


@pytest.mark.parametrize("model_type", ["llava", "llava_next_video"])
def test_selection_picks_the_planted_frames_end_to_end(model_type):
    model = tiny_model(model_type, seed=0)
    frames = 6
    inputs = hand_inputs(model_type, frames, seed=1)
    scorer = _planted_scorer(Scorer(tiny_clip(seed=7), tiny_scorer_tokenizer()), {frames: (1, 4)})
    stage = {"type": "select_frames", "segments": 2, "per_segment": 1}
    with apply_adapter(model, pooling=stage, scorer=scorer) as handle:
        adapted = logits_of(model, inputs, question="red ball")
        assert handle.last_stats[0]["kept_frames"] == [1, 4]
    # On 1-D RoPE "original" changes nothing in positions: the same as the stock model fed only the kept frames.
    kept = [1, 4]
    if model_type == "llava":
        small = hand_inputs(model_type, len(kept), seed=1)
        small["pixel_values"] = inputs["pixel_values"][kept]
    else:
        small = hand_inputs(model_type, len(kept), seed=1)
        small["pixel_values_videos"] = inputs["pixel_values_videos"][:, kept]
    reference = logits_of(model, small)
    placeholder = model.config.image_token_id if model_type == "llava" else model.config.video_token_id
    caller_text = (inputs["input_ids"][0] != placeholder).nonzero().squeeze(1)
    small_text = (small["input_ids"][0] != placeholder).nonzero().squeeze(1)
    assert torch.equal(inputs["input_ids"][0, caller_text], small["input_ids"][0, small_text])
    torch.testing.assert_close(adapted[0, caller_text], reference[0, small_text], rtol=1e-4, atol=1e-5)


def test_reuses_the_vision_tower_of_the_lmm():
    model = tiny_model("llava_next", seed=0)
    inputs = hand_inputs("llava_next", 4, batch=2, seed=1)
    scorer = Scorer(clip_from_vision_tower(model), tiny_scorer_tokenizer())
    passes = []
    hook = scorer.model.vision_model.register_forward_hook(lambda *a: passes.append(1))
    try:
        with apply_adapter(model, pooling=SELECT_PG, scorer=scorer) as handle:
            assert handle.guidance.reuse
            reused = logits_of(model, inputs, question="red ball")
            assert passes == []  # no second vision pass
            handle.guidance.reuse = False
            own = logits_of(model, inputs, question="red ball")
            assert passes  # the scorer's own pass ran
        assert torch.equal(reused, own)
        assert not model.model.vision_tower._forward_hooks
    finally:
        hook.remove()
    other = Scorer(tiny_clip(seed=9), tiny_scorer_tokenizer())
    with apply_adapter(model, pooling=SELECT_PG, scorer=other) as handle:
        assert not handle.guidance.reuse


def test_registered_name_and_local_path(tmp_path, next_video):
    inputs = hand_inputs("llava_next_video", 4, seed=1)
    model, tok = tiny_clip(seed=11), tiny_scorer_tokenizer()
    register_scorer("tiny-clip", Scorer(model, tok))
    try:
        with apply_adapter(next_video, pooling={**PG, "scorer": "tiny-clip"}):
            by_name = logits_of(next_video, inputs, question="red")
    finally:
        unregister_scorer("tiny-clip")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with apply_adapter(next_video, pooling={**PG, "scorer": str(tmp_path)}) as handle:
        by_path = logits_of(next_video, inputs, question="red")
        assert handle.config.to_dict()["pooling"][0]["scorer"] == str(tmp_path)
    torch.testing.assert_close(by_path, by_name)


def test_chunked_encoding_gives_the_same_result(clip_scorer):
    model = tiny_model("llava_onevision", seed=0)
    inputs = hand_inputs("llava_onevision", 4, seed=1)
    stages = [{"type": "select_frames", "segments": 2, "per_segment": 1}, PG]
    with apply_adapter(model, pooling=stages, scorer=clip_scorer):
        whole = logits_of(model, inputs, question="red")
    with apply_adapter(model, pooling=stages, scorer=clip_scorer, vision_chunk_frames=2):
        chunked = logits_of(model, inputs, question="red")
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Qwen-VL: selection and M-RoPE ids.


class PositionIds:
    def __init__(self, model):
        self.ids = []
        self.hook = model.model.language_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.ids.append(kwargs["position_ids"].clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.hook.remove()


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_selected_frames_keep_or_repack_their_temporal_ids(model_type, clip_scorer):
    model = qwen_tiny_model(model_type, seed=0)
    inputs = qwen_hand_inputs(model_type, 8, seed=1)  # 4 temporal patches of 4x4 merged tokens
    with PositionIds(model) as rec:
        model(**inputs)
    video = inputs["input_ids"][0] == model.config.video_token_id
    start = int(video.nonzero()[0, 0])
    stock_t = rec.ids[0][-3][0, video].reshape(4, 16)[:, 0]  # temporal id of each stock frame
    scorer = _planted_scorer(clip_scorer, {8: (0, 1, 6, 7)})  # pixel frames 0-1 and 6-7 = temporal patches 0, 3
    try:
        for positions in ("original", "repacked"):
            stage = {"type": "select_frames", "segments": 2, "per_segment": 1, "positions": positions}
            with apply_adapter(model, pooling=stage, scorer=scorer) as handle, PositionIds(model) as rec:
                model(**inputs, question="red ball")
                assert handle.last_stats[0]["kept_frames"] == [0, 3]
            ids = rec.ids[0]
            assert ids.shape[-1] == inputs["input_ids"].shape[1] - 32  # 2 of 4 frames of 16 tokens kept
            kept_t = ids[-3][0, start : start + 32].reshape(2, 16)  # row -3: the temporal ids
            assert bool((kept_t == kept_t[:, :1]).all())
            kept_t = kept_t[:, 0]
            expected = stock_t[[0, 3]] if positions == "original" else stock_t[:2]
            assert kept_t.tolist() == expected.tolist()
    finally:
        del clip_scorer.embed_pixels


def test_qwen3_selection_deletes_unselected_blocks_and_takes_keyframes(clip_scorer):
    """Qwen3-VL: one block per frame. Selection keeps the chosen frames' blocks (timestamp text, markers, stock ids)
    and deletes the others; without the processor's outer <|vision_start|>, dropping frame 0 is refused."""
    model = qwen_tiny_model("qwen3_vl", seed=0)
    inputs = qwen_hand_inputs("qwen3_vl", 8, seed=1)  # 4 blocks: 2 timestamp words, <vs>, 16 tokens, <ve>
    config = model.config
    with PositionIds(model) as rec:
        model(**inputs)
    stock = rec.ids[0][:, 0]
    ids = inputs["input_ids"][0]
    video = (ids == config.video_token_id).nonzero().squeeze(1).reshape(4, 16)
    stage = {"type": "select_frames", "segments": 2, "per_segment": 1}
    scorer = _planted_scorer(clip_scorer, {8: (2, 3, 6, 7)})  # pixel frames 2-3 and 6-7 = temporal patches 1, 3
    try:
        with apply_adapter(model, pooling=stage, scorer=scorer) as handle, PositionIds(model) as rec:
            logits = logits_of(model, inputs, question="red ball")
            assert handle.last_stats[0]["kept_frames"] == [1, 3]
        got = rec.ids[0][:, 0]
        # expected: the caller's tokens without blocks 0 and 2 (from each block's timestamp through <|vision_end|>)
        dropped = set()
        for f in (0, 2):
            first, last = int(video[f, 0]), int(video[f, -1])
            dropped |= set(range(first - 3, last + 2))
        kept = [c for c in range(ids.shape[0]) if c not in dropped]
        assert got.shape[-1] == len(kept)
        assert torch.equal(got.long(), stock[:, kept])  # kept blocks: stock ids (unpooled frames)
        assert not logits[0, sorted(dropped)].any() and logits[0, kept].abs().sum(-1).gt(0).all()
        bare = qwen_hand_inputs("qwen3_vl", 8, seed=1, outer_markers=False)
        with apply_adapter(model, pooling=stage, scorer=scorer):
            with pytest.raises(AdapterError, match="keep the first frame"):
                model(**bare, question="red ball")
        scorer = _planted_scorer(clip_scorer, {8: (0, 1, 6, 7)})  # frame 0 kept: fine without outer markers
        with apply_adapter(model, pooling=stage, scorer=scorer) as handle:
            assert torch.isfinite(logits_of(model, bare, question="red ball")).all()
            assert handle.last_stats[0]["kept_frames"] == [0, 3]
    finally:
        del clip_scorer.embed_pixels
    stage = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg", "anchor": "score"}
    with apply_adapter(model, pooling=stage, scorer=clip_scorer) as handle:
        logits = logits_of(model, inputs, question="red")
        assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
        assert len(handle.last_stats[0]["anchors"]) == 2
    # prompt-guided windows over two frames: each pair's first block stays, the second goes (2 of 4 blocks)
    with apply_adapter(model, pooling={**PG, "kernel": [2, 2, 2], "stride": [2, 2, 2]}, scorer=clip_scorer) as handle:
        with PositionIds(model) as rec:
            logits = logits_of(model, inputs, question="red")
        assert handle.last_stats[0]["tokens_after"] == 2 * 4
    block = 2 + 1 + 16 + 1  # timestamp words, <|vision_start|>, tokens, <|vision_end|>
    assert rec.ids[0].shape[-1] == inputs["input_ids"].shape[1] - 2 * block - 2 * (16 - 4)
    assert torch.isfinite(logits).all()
