"""Pooling operators against independent references (naive loops, torch's own pools, LLaVA-OneVision)."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import make_grid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import naive_starts

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.pooling import (
    STAGE_TYPES,
    PooledVideo,
    adaptive_pool3d,
    conv3d_pool,
    count_tokens,
    normalize_pooling,
    normalize_stage,
    pool_video,
    pooled_frame_sizes,
    progressive_pool,
    solve_window,
    temporal_pool,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------------------------------------------------------------
# Naive references: plain Python loops over windows, written from the rules in docs/methods.md.


def naive_conv3d(grid, kernel, stride):
    T, H, W, _ = grid.shape
    axes = [naive_starts(n, k, s) for n, k, s in zip((T, H, W), kernel, stride)]
    out = torch.empty(len(axes[0]), len(axes[1]), len(axes[2]), grid.shape[-1], dtype=torch.float64)
    for i, t0 in enumerate(axes[0]):
        for j, h0 in enumerate(axes[1]):
            for k, w0 in enumerate(axes[2]):
                window = grid[t0 : t0 + kernel[0], h0 : h0 + kernel[1], w0 : w0 + kernel[2]].double()
                out[i, j, k] = window.reshape(-1, grid.shape[-1]).mean(0)
    return out


def naive_temporal(grid, kernel, stride):
    T = grid.shape[0]
    return torch.stack([grid[start : min(start + kernel, T)].double().mean(0) for start in range(0, T, stride)])


def naive_adaptive(grid, output):
    """Adaptive pooling's windows: [floor(i*I/O), ceil((i+1)*I/O)) on each axis."""
    sizes = grid.shape[:3]
    bounds = [[(i * n // o, -(-(i + 1) * n // o)) for i in range(o)] for n, o in zip(sizes, output)]
    out = torch.empty(*output, grid.shape[-1], dtype=torch.float64)
    for i, (t0, t1) in enumerate(bounds[0]):
        for j, (h0, h1) in enumerate(bounds[1]):
            for k, (w0, w1) in enumerate(bounds[2]):
                out[i, j, k] = grid[t0:t1, h0:h1, w0:w1].double().reshape(-1, grid.shape[-1]).mean(0)
    return out


def naive_frame_pool(frame, stride, mode):
    """One (H, W, D) frame: bilinear via F.interpolate on that frame alone, avg/max via explicit blocks."""
    H, W, D = frame.shape
    h, w = math.ceil(H / stride), math.ceil(W / stride)
    if stride == 1:
        return frame
    if mode == "bilinear":
        x = frame.permute(2, 0, 1).contiguous().unsqueeze(0)
        return F.interpolate(x, size=(h, w), mode="bilinear")[0].permute(1, 2, 0)
    out = torch.empty(h, w, D, dtype=frame.dtype)
    for i in range(h):
        for j in range(w):
            block = frame[i * stride : (i + 1) * stride, j * stride : (j + 1) * stride].reshape(-1, D)
            out[i, j] = block.mean(0) if mode == "avg" else block.amax(0)
    return out


def naive_stride(t, group, strides):
    position = t % group
    return strides[position] if position < len(strides) else strides[-1]


# ---------------------------------------------------------------------------------------------------------------------
# Adaptive 3-D pooling (PLLaVA).


@FAST
@given(T=st.integers(1, 6), H=st.integers(1, 7), W=st.integers(1, 7), D=st.integers(1, 5), data=st.data())
def test_adaptive_matches_torch_and_loops(T, H, W, D, data):
    output = [data.draw(st.integers(1, n)) for n in (T, H, W)]
    grid = make_grid(T, H, W, D, seed=T * 100 + H * 10 + W)
    got = adaptive_pool3d(grid, output)
    reference = F.adaptive_avg_pool3d(grid.permute(3, 0, 1, 2).contiguous().unsqueeze(0), output)[0]
    torch.testing.assert_close(got, reference.permute(1, 2, 3, 0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.double(), naive_adaptive(grid, output), rtol=1e-5, atol=1e-5)


def test_adaptive_pllava_default_shape():
    grid = make_grid(16, 24, 24, 4)
    assert adaptive_pool3d(grid, [16, 12, 12]).shape == (16, 12, 12, 4)
    assert count_tokens(16, 24, 24, {"type": "adaptive3d", "output": [16, 12, 12]}) == 16 * 144


# ---------------------------------------------------------------------------------------------------------------------
# Temporal pooling.


@FAST
@given(T=st.integers(1, 9), kernel=st.integers(1, 12), data=st.data())
def test_temporal_matches_window_loops(T, kernel, data):
    stride = data.draw(st.integers(1, min(kernel, T)))
    grid = make_grid(T, 2, 3, 4, seed=T + 31 * kernel)
    got = temporal_pool(grid, kernel, stride)
    assert got.shape == (math.ceil(T / stride), 2, 3, 4)
    torch.testing.assert_close(got.double(), naive_temporal(grid, kernel, stride), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("T", "kernel", "stride"), [(7, 3, 1), (8, 2, 2), (7, 2, 2), (5, 4, 2), (3, 5, 2), (6, 3, 3)])
def test_temporal_weights_cover_every_frame(T, kernel, stride):
    """One-hot frames expose each output's window weights: every frame is used, tails average what exists."""
    grid = torch.eye(T).reshape(T, 1, 1, T)
    weights = temporal_pool(grid, kernel, stride).reshape(-1, T)
    assert weights.shape[0] == math.ceil(T / stride)
    assert bool((weights.sum(0) > 0).all()), "a frame fell outside every window"
    for out, start in enumerate(range(0, T, stride)):
        end = min(start + kernel, T)
        expected = torch.zeros(T)
        expected[start:end] = 1.0 / (end - start)
        torch.testing.assert_close(weights[out], expected)


def test_temporal_stride_one_keeps_count_and_smooths():
    grid = torch.arange(4.0).reshape(4, 1, 1, 1)
    got = temporal_pool(grid, 2, 1).flatten().tolist()
    assert got == [0.5, 1.5, 2.5, 3.0]


# ---------------------------------------------------------------------------------------------------------------------
# conv3d pooling and the arbitrary-scale solver.


@FAST
@given(
    sizes=st.tuples(st.integers(1, 6), st.integers(1, 7), st.integers(1, 7)),
    data=st.data(),
)
def test_conv3d_matches_window_loops(sizes, data):
    kernel = [data.draw(st.integers(1, n)) for n in sizes]
    stride = [data.draw(st.integers(1, k)) for k in kernel]
    grid = make_grid(*sizes, 3, seed=sum(sizes))
    got = conv3d_pool(grid, kernel, stride)
    torch.testing.assert_close(got.double(), naive_conv3d(grid, kernel, stride), rtol=1e-5, atol=1e-5)
    assert (
        pooled_frame_sizes(*sizes, {"type": "conv3d", "kernel": kernel, "stride": stride})
        == [tuple(got.shape[1:3])] * got.shape[0]
    )


def test_conv3d_ppllava_example():
    stage = {"type": "conv3d", "kernel": [2, 3, 3], "stride": [2, 3, 3]}
    assert count_tokens(32, 24, 24, stage) == 1024
    grid = make_grid(32, 24, 24, 2)
    assert pool_video(grid, [stage]).flatten().shape == (1024, 2)
    assert normalize_stage({"type": "conv3d", "kernel": 3}) == {
        "type": "conv3d",
        "kernel": [3, 3, 3],
        "stride": [3, 3, 3],
    }


def test_conv3d_output_only_solves_each_axis():
    stage = normalize_stage({"type": "conv3d", "output": [16, 8, 8]})
    grid = make_grid(32, 27, 24, 2)
    pooled = pool_video(grid, [stage])
    assert pooled.sizes == ((8, 8),) * 16
    assert pooled_frame_sizes(32, 27, 24, [stage]) == [(8, 8)] * 16
    # 27 -> 8: stride floor(27/8) = 3, kernel 27 - 7*3 = 6, so the window of height output 0 is rows 0..5.
    torch.testing.assert_close(pooled.frames[0][0, 0], grid[0:2, 0:6, 0:3].reshape(-1, 2).mean(0))


@pytest.mark.parametrize(
    ("size", "output", "kernel", "stride", "expected"),
    [
        (24, 8, None, None, (3, 3)),
        (32, 16, None, None, (2, 2)),
        (27, 8, None, None, (6, 3)),
        (10, 3, None, None, (4, 3)),
        (5, 1, None, None, (5, 5)),
        (32, 16, None, 2, (2, 2)),
        (10, 4, None, 2, (4, 2)),
        (24, 8, 3, None, (3, 3)),
        (10, 4, 4, None, (4, 2)),
        (7, 1, 7, None, (7, 7)),
        (24, None, 3, None, (3, 3)),
        (24, None, None, 4, (4, 4)),
        (24, None, 5, 2, (5, 2)),
    ],
)
def test_solve_window_examples(size, output, kernel, stride, expected):
    solved = solve_window(size, output, kernel, stride)
    assert solved == expected
    k, s = solved
    if output is not None:
        assert len(naive_starts(size, k, s)) == output


@FAST
@given(size=st.integers(1, 40), data=st.data())
def test_solve_window_output_only_always_hits_output(size, data):
    output = data.draw(st.integers(1, size))
    kernel, stride = solve_window(size, output)
    assert kernel >= stride >= 1 and kernel <= size
    assert len(naive_starts(size, kernel, stride)) == output


# ---------------------------------------------------------------------------------------------------------------------
# Progressive pooling.


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("H", "W"), [(27, 27), (24, 24), (5, 7), (2, 4)])
def test_progressive_stride2_is_onevision_pooling_bit_exact(dtype, H, W):
    grid = make_grid(5, H, W, 16, dtype=dtype)
    pooled = progressive_pool(grid, group=1, strides=[2])
    x = grid.permute(0, 3, 1, 2).contiguous()
    reference = F.interpolate(x, size=[math.ceil(H / 2), math.ceil(W / 2)], mode="bilinear").permute(0, 2, 3, 1)
    assert torch.equal(pooled.flatten(), reference.reshape(-1, 16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [2, 3, 5, 8, 27])
def test_progressive_bilinear_bit_exact_with_contiguous_layout(device, stride):
    """The operator skips OneVision's .contiguous() copy; the bits must not change for any stride."""
    grid = make_grid(4, 27, 27, 32, device=device)
    pooled = progressive_pool(grid, group=1, strides=[stride])
    size = [math.ceil(27 / stride)] * 2
    reference = F.interpolate(grid.permute(0, 3, 1, 2).contiguous(), size=size, mode="bilinear").permute(0, 2, 3, 1)
    assert torch.equal(pooled.flatten(), reference.reshape(-1, 32))


def test_progressive_matches_transformers_onevision_apply_pooling():
    from transformers import LlavaOnevisionConfig, LlavaOnevisionModel

    config = LlavaOnevisionConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "image_size": 27,
            "patch_size": 1,
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        text_config={
            "model_type": "qwen2",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "vocab_size": 64,
        },
    )
    model = LlavaOnevisionModel(config).eval()
    features = make_grid(6, 27, 27, 16)
    expected = model.apply_pooling(features.reshape(6, 27 * 27, 16))
    got = pool_video(features, {"type": "progressive", "group": 1, "strides": [2]})
    assert got.sizes == ((14, 14),) * 6
    assert torch.equal(got.flatten(), expected.reshape(-1, 16))


@FAST
@given(
    T=st.integers(1, 7),
    H=st.integers(1, 9),
    W=st.integers(1, 9),
    group=st.integers(1, 4),
    mode=st.sampled_from(["bilinear", "avg", "max"]),
    data=st.data(),
)
def test_progressive_matches_per_frame_loop(T, H, W, group, mode, data):
    strides = data.draw(st.lists(st.integers(1, min(H, W)), min_size=1, max_size=group))
    grid = make_grid(T, H, W, 3, seed=T + H + W)
    pooled = progressive_pool(grid, group, strides, mode)
    assert len(pooled.frames) == T
    for t, frame in enumerate(pooled.frames):
        expected = naive_frame_pool(grid[t], naive_stride(t, group, strides), mode)
        torch.testing.assert_close(frame, expected, rtol=1e-6, atol=1e-6)


def test_progressive_default_schedule_and_design_token_counts():
    stage = normalize_stage({"type": "progressive"})
    assert stage == {"type": "progressive", "group": 4, "strides": [2, 8], "mode": "bilinear"}
    assert count_tokens(4, 27, 27, [stage]) == 244
    assert count_tokens(256, 27, 27, [stage]) == 15616
    assert count_tokens(256, 27, 27, [{"type": "progressive", "group": 1, "strides": [2]}]) == 50176
    sizes = pooled_frame_sizes(6, 27, 27, [stage])
    assert sizes == [(14, 14), (4, 4), (4, 4), (4, 4), (14, 14), (4, 4)]


def test_progressive_per_position_schedule():
    sizes = pooled_frame_sizes(7, 16, 16, {"type": "progressive", "group": 3, "strides": [1, 2, 4]})
    assert sizes == [(16, 16), (8, 8), (4, 4)] * 2 + [(16, 16)]


def test_progressive_leaves_input_untouched():
    grid = make_grid(5, 6, 6, 4)
    before = grid.clone()
    progressive_pool(grid, 2, [1, 3], "avg")
    assert torch.equal(grid, before)


@FAST
@given(
    T=st.integers(1, 12),
    H=st.integers(1, 30),
    W=st.integers(1, 30),
    group=st.integers(1, 6),
    data=st.data(),
)
def test_progressive_count_tokens_formula(T, H, W, group, data):
    strides = data.draw(st.lists(st.integers(1, min(H, W)), min_size=1, max_size=group))
    stage = {"type": "progressive", "group": group, "strides": strides}
    expected = 0
    for t in range(T):
        s = naive_stride(t, group, strides)
        expected += math.ceil(H / s) * math.ceil(W / s)
    assert count_tokens(T, H, W, [stage]) == expected
    assert len(pooled_frame_sizes(T, H, W, [stage])) == T


# ---------------------------------------------------------------------------------------------------------------------
# pool_video, pooled_frame_sizes, flatten.


def stage_strategy(allow_progressive=True):
    temporal = st.integers(1, 4).flatmap(
        lambda k: st.integers(1, k).map(lambda s: {"type": "temporal", "kernel": k, "stride": s})
    )
    adaptive = st.lists(st.integers(1, 5), min_size=3, max_size=3).map(lambda o: {"type": "adaptive3d", "output": o})
    conv_window = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=3, max_size=3).map(
        lambda ks: {"type": "conv3d", "kernel": [max(k, s) for k, s in ks], "stride": [min(k, s) for k, s in ks]}
    )
    conv_output = st.tuples(
        st.lists(st.integers(1, 5), min_size=3, max_size=3),
        st.sampled_from([None, "kernel", "stride"]),
        st.lists(st.integers(1, 3), min_size=3, max_size=3),
    ).map(lambda x: {"type": "conv3d", "output": x[0], **({x[1]: x[2]} if x[1] else {})})
    options = [temporal, adaptive, conv_window, conv_output]
    if allow_progressive:
        options.append(
            st.integers(1, 4).flatmap(
                lambda g: st.fixed_dictionaries(
                    {
                        "type": st.just("progressive"),
                        "group": st.just(g),
                        "strides": st.lists(st.integers(1, 6), min_size=1, max_size=g),
                        "mode": st.sampled_from(["bilinear", "avg", "max"]),
                    }
                )
            )
        )
    return st.one_of(options)


stage_lists = st.tuples(
    st.lists(stage_strategy(allow_progressive=False), max_size=2),
    st.one_of(st.none(), stage_strategy()),
).map(lambda x: x[0] + ([x[1]] if x[1] is not None else []))


def outcome(fn):
    try:
        return fn()
    except AdapterError as err:
        return ("AdapterError", str(err))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 6), H=st.integers(1, 7), W=st.integers(1, 7), stages=stage_lists)
def test_pooled_frame_sizes_agree_with_pool_video(T, H, W, stages):
    """Same sizes, or the same AdapterError, for any grid and stage list (grid-invalid ones included)."""
    grid = make_grid(T, H, W, 2, seed=T * H * W)
    predicted = outcome(lambda: pooled_frame_sizes(T, H, W, stages))
    actual = outcome(lambda: pool_video(grid, stages))
    if isinstance(predicted, tuple):
        assert actual == predicted
        return
    assert not isinstance(actual, tuple), actual
    assert predicted == [tuple(f.shape[:2]) for f in actual.frames]
    assert list(actual.sizes) == predicted
    assert count_tokens(T, H, W, stages) == actual.num_tokens == actual.flatten().shape[0]


def test_empty_stages_leave_frames_unchanged():
    grid = make_grid(3, 4, 5, 6)
    for stages in (None, [], ()):
        pooled = pool_video(grid, stages)
        assert pooled.sizes == ((4, 5),) * 3
        assert torch.equal(pooled.flatten(), grid.reshape(-1, 6))
        assert pooled_frame_sizes(3, 4, 5, stages) == [(4, 5)] * 3


def test_stages_apply_in_order():
    grid = make_grid(8, 6, 6, 3)
    stages = [{"type": "temporal", "kernel": 2, "stride": 2}, {"type": "progressive", "group": 2, "strides": [1, 3]}]
    pooled = pool_video(grid, stages)
    merged = naive_temporal(grid, 2, 2).float()
    assert pooled.sizes == ((6, 6), (2, 2)) * 2
    torch.testing.assert_close(pooled.frames[0], merged[0])
    torch.testing.assert_close(pooled.frames[1], naive_frame_pool(merged[1], 3, "bilinear"), rtol=1e-6, atol=1e-6)


def test_flatten_is_frame_major_and_row_major():
    T, H, W = 4, 4, 6
    grid = torch.arange(T * H * W, dtype=torch.float32).reshape(T, H, W, 1).expand(T, H, W, 2)
    # Stride 1 frames keep their tokens, so their ids must appear in (t, h, w) order; stride-2 max frames keep the
    # id of each 2x2 block's bottom-right token.
    pooled = progressive_pool(grid, 2, [1, 2], "max")
    ids = pooled.flatten()[:, 0].long().tolist()
    expected = []
    for t in range(T):
        if t % 2 == 0:
            expected += [t * H * W + h * W + w for h in range(H) for w in range(W)]
        else:
            expected += [t * H * W + h * W + w for h in range(1, H, 2) for w in range(1, W, 2)]
    assert ids == expected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "stages",
    [
        [{"type": "progressive", "group": 2, "strides": [2, 3], "mode": "bilinear"}],
        [{"type": "progressive", "group": 2, "strides": [1, 3], "mode": "avg"}],
        [{"type": "progressive", "group": 2, "strides": [2, 3], "mode": "max"}],
        [{"type": "temporal", "kernel": 3, "stride": 2}],
        [{"type": "adaptive3d", "output": [2, 3, 2]}],
        [{"type": "conv3d", "kernel": [2, 3, 2], "stride": [1, 2, 2]}],
        [{"type": "conv3d", "output": [2, 2, 2]}],
    ],
)
def test_dtype_and_device_kept(device, dtype, stages):
    grid = make_grid(5, 7, 6, 4, dtype=dtype, device=device)
    pooled = pool_video(grid, stages)
    flat = pooled.flatten()
    assert flat.dtype == dtype and flat.device == grid.device
    assert all(f.dtype == dtype and f.device == grid.device for f in pooled.frames)
    reference = pool_video(grid.float(), stages).flatten()
    torch.testing.assert_close(flat.float(), reference, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------------------------------------
# Validation.


def test_normalize_pooling_forms():
    assert normalize_pooling(None) == ()
    assert normalize_pooling([]) == ()
    assert normalize_pooling({"type": "temporal"}) == ({"type": "temporal", "kernel": 2, "stride": 2},)
    stages = normalize_pooling([{"type": "conv3d", "output": [4, 4, 4], "stride": 2}, {"type": "progressive"}])
    assert stages[0] == {"type": "conv3d", "output": [4, 4, 4], "stride": [2, 2, 2]}
    assert normalize_pooling(stages) == stages
    assert normalize_stage({"type": "temporal", "stride": 3}) == {"type": "temporal", "kernel": 3, "stride": 3}
    assert normalize_stage({"type": "progressive", "strides": (1, 2, 4)})["strides"] == [1, 2, 4]


def test_normalize_stage_returns_a_new_dict():
    stage = {"type": "progressive", "strides": [2, 8]}
    normalized = normalize_stage(stage)
    normalized["strides"].append(4)
    assert stage == {"type": "progressive", "strides": [2, 8]}


@pytest.mark.parametrize(
    ("stage", "needle"),
    [
        ({"type": "progressive", "stride": 2}, "'stride'"),
        ({"type": "temporal", "window": 2}, "'window'"),
        ({"type": "pyramid"}, "'pyramid'"),
        ({"group": 4}, "None"),
        ({"type": "progressive", "group": 0}, "0"),
        ({"type": "progressive", "group": -2}, "-2"),
        ({"type": "progressive", "strides": []}, "empty"),
        ({"type": "progressive", "strides": [2, 0]}, "0"),
        ({"type": "progressive", "strides": [2, 2.5]}, "2.5"),
        ({"type": "progressive", "strides": [True]}, "True"),
        ({"type": "progressive", "strides": 2}, "2"),
        ({"type": "progressive", "group": 2, "strides": [2, 4, 8]}, "[2, 4, 8]"),
        ({"type": "progressive", "mode": "nearest"}, "'nearest'"),
        ({"type": "temporal", "kernel": 1, "stride": 2}, "kernel 1"),
        ({"type": "temporal", "kernel": 0}, "0"),
        ({"type": "adaptive3d"}, "output"),
        ({"type": "adaptive3d", "output": [4, 4]}, "[4, 4]"),
        ({"type": "adaptive3d", "output": [4, 0, 4]}, "0"),
        ({"type": "conv3d", "output": [4, 4, 4], "kernel": 2, "stride": 2}, "output"),
        ({"type": "conv3d", "kernel": [2, 3, 3], "stride": [2, 4, 3]}, "kernel 3"),
        ({"type": "conv3d", "kernel": [2, 3]}, "[2, 3]"),
        ("temporal", "'temporal'"),
    ],
)
def test_invalid_stages_raise(stage, needle):
    with pytest.raises(AdapterError, match=re.escape(needle)):
        normalize_stage(stage)
    with pytest.raises(AdapterError, match=re.escape(needle)):
        normalize_pooling([stage])


def test_unknown_key_and_type_messages_list_the_choices():
    with pytest.raises(AdapterError, match="allowed keys") as err:
        normalize_stage({"type": "temporal", "size": 2})
    assert "'kernel'" in str(err.value) and "'stride'" in str(err.value)
    with pytest.raises(AdapterError) as err:
        normalize_stage({"type": "spatial"})
    assert all(kind in str(err.value) for kind in STAGE_TYPES)


def test_progressive_must_be_last():
    with pytest.raises(AdapterError, match="progressive"):
        normalize_pooling([{"type": "progressive"}, {"type": "temporal"}])
    with pytest.raises(AdapterError, match="last|end"):
        pool_video(make_grid(4, 4, 4, 2), [{"type": "progressive"}, {"type": "temporal"}])
    with pytest.raises(AdapterError):
        normalize_pooling("progressive")


@pytest.mark.parametrize(
    ("shape", "stages", "needle"),
    [
        ((4, 8, 8), {"type": "progressive", "strides": [2, 9]}, "stride 9"),
        ((4, 8, 5), {"type": "progressive", "group": 1, "strides": [6]}, "stride 6"),
        ((3, 8, 8), {"type": "temporal", "kernel": 4, "stride": 4}, "stride 4"),
        ((4, 8, 8), {"type": "adaptive3d", "output": [4, 9, 8]}, "[4, 9, 8]"),
        ((4, 8, 8), {"type": "adaptive3d", "output": [5, 4, 4]}, "[5, 4, 4]"),
        ((4, 8, 8), {"type": "conv3d", "kernel": [5, 2, 2]}, "kernel 5"),
        ((4, 8, 8), {"type": "conv3d", "kernel": [1, 9, 9], "stride": [1, 2, 2]}, "kernel 9"),
        ((4, 8, 8), {"type": "conv3d", "output": [5, 4, 4]}, "output 5"),
        ((4, 10, 8), {"type": "conv3d", "output": [4, 4, 4], "kernel": [1, 3, 2]}, "requested output 4"),
        ((4, 8, 8), {"type": "conv3d", "output": [2, 3, 2], "stride": [2, 3, 2]}, "stride 3"),
        ((4, 10, 8), {"type": "conv3d", "output": [2, 3, 2], "kernel": [2, 2, 4]}, "kernel 2"),
    ],
)
def test_grid_dependent_errors_match_in_both_paths(shape, stages, needle):
    normalize_pooling(stages)  # valid on its own: only the grid makes it wrong
    with pytest.raises(AdapterError, match=re.escape(needle)) as sized:
        pooled_frame_sizes(*shape, stages)
    with pytest.raises(AdapterError, match=re.escape(needle)) as pooled:
        pool_video(make_grid(*shape, 2), stages)
    assert str(sized.value) == str(pooled.value)
    assert "x".join(map(str, shape)) in str(sized.value), "the message should name the grid"


def test_grid_errors_name_the_grid_the_stage_sees():
    stages = [{"type": "temporal", "kernel": 4, "stride": 4}, {"type": "temporal", "stride": 2}]
    with pytest.raises(AdapterError, match=re.escape("1x8x8")):
        pooled_frame_sizes(4, 8, 8, stages)
    with pytest.raises(AdapterError, match=re.escape("1x8x8")):
        pool_video(make_grid(4, 8, 8, 2), stages)


def test_temporal_kernel_longer_than_video_is_allowed():
    grid = make_grid(3, 2, 2, 2)
    got = temporal_pool(grid, 5, 2)
    torch.testing.assert_close(got[0], grid.mean(0))
    torch.testing.assert_close(got[1], grid[2])
    assert pooled_frame_sizes(3, 2, 2, {"type": "temporal", "kernel": 5, "stride": 2}) == [(2, 2)] * 2


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: solve_window(8, output=3, kernel=2, stride=2), "at most one"),
        (lambda: solve_window(8, output=9), "output 9"),
        (lambda: solve_window(8), "give an output size"),
        (lambda: solve_window(8, kernel=9), "kernel 9"),
        (lambda: solve_window(8, kernel=2, stride=3), "kernel 2"),
        (lambda: solve_window(8, output=3, stride=3), "stride 3"),
        (lambda: solve_window(10, output=4, kernel=3), "requested output 4"),
        (lambda: solve_window(8, output=5, kernel=6), "kernel 6"),
        (lambda: solve_window(0, output=1), "0"),
        (lambda: progressive_pool(make_grid(2, 4, 4, 2), 2, [5]), "stride 5"),
        (lambda: temporal_pool(make_grid(2, 4, 4, 2), 1, 2), "kernel 1"),
        (lambda: conv3d_pool(make_grid(2, 4, 4, 2), [3, 1, 1], [1, 1, 1]), "kernel 3"),
        (lambda: adaptive_pool3d(make_grid(2, 4, 4, 2), [2, 5, 4]), "[2, 5, 4]"),
        (lambda: pool_video(torch.zeros(4, 4, 2), []), "(4, 4, 2)"),
        (lambda: pool_video(torch.zeros(0, 4, 4, 2), []), "(0, 4, 4)"),
        (lambda: pooled_frame_sizes(2, 0, 4, []), "(2, 0, 4)"),
        (lambda: PooledVideo(()).flatten(), "no frames"),
    ],
)
def test_operator_errors(call, needle):
    with pytest.raises(AdapterError, match=re.escape(needle)):
        call()


def test_adapter_error_is_a_value_error():
    with pytest.raises(ValueError):
        normalize_stage({"type": "nope"})
