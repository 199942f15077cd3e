"""longctx_adapter.ops.rope against HF 5.x's own RoPE init functions and rotary modules, and the paper's YaRN formula."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, Qwen2Config, StableLmConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding
from transformers.models.stablelm.modeling_stablelm import StableLmRotaryEmbedding

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.rope import (
    default_inv_freq,
    interpolate_positions,
    inv_freq_for,
    linear_inv_freq,
    ntk_inv_freq,
    rope_cos_sin,
    scale_factor,
    yarn_inv_freq,
    yarn_inv_freq_paper,
)

# (head_dim, rope_theta): Qwen2-7B-like, Llama-2-like, and a tiny head.
HEADS = [(128, 1e6), (128, 1e4), (16, 1e4)]
ROTARIES = [(Qwen2RotaryEmbedding, Qwen2Config), (LlamaRotaryEmbedding, LlamaConfig)]


def _qwen2(head_dim, base, rope_parameters=None, max_pos=32768, config_cls=Qwen2Config, **kw):
    """A fresh config per call: HF init functions mutate the config (standardize_rope_params)."""
    params = {"rope_type": "default", "rope_theta": base, **(rope_parameters or {})}
    return config_cls(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters=params,
        **kw,
    )


def _hf_yarn(head_dim, base, factor, window, alpha, beta, attention_factor=None, truncate=True, prf=None):
    params = {
        "rope_type": "yarn",
        "factor": factor,
        # Read straight from rope_parameters in 5.24 (standardize_rope_params only setdefault()s it from
        # max_position_embeddings, or overrides it from a top-level config.original_max_position_embeddings,
        # which Qwen2Config does not have).
        "original_max_position_embeddings": window,
        "beta_fast": beta,
        "beta_slow": alpha,
        "truncate": truncate,
    }
    if attention_factor is not None:
        params["attention_factor"] = attention_factor
    if prf is not None:
        params["partial_rotary_factor"] = prf
    # max_position_embeddings = factor * window keeps HF's "implicit factor" check quiet where it is integral.
    config = _qwen2(head_dim, base, params, max_pos=max(int(round(factor * window)), 1))
    assert not hasattr(config, "original_max_position_embeddings")
    return ROPE_INIT_FUNCTIONS["yarn"](config)


# --- default -----------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim,base", HEADS)
@pytest.mark.parametrize("cls,config_cls", ROTARIES)
def test_default_inv_freq_bit_identical_to_hf(head_dim, base, cls, config_cls):
    hf, scaling = cls.compute_default_rope_parameters(_qwen2(head_dim, base, config_cls=config_cls))
    ours = default_inv_freq(head_dim, base)
    assert ours.dtype == torch.float32 and scaling == 1.0
    assert torch.equal(ours, hf)
    assert torch.equal(ours, cls(_qwen2(head_dim, base, config_cls=config_cls)).inv_freq)


@pytest.mark.parametrize("prf", [0.25, 0.5, 1.0])
def test_default_inv_freq_partial_rotary_matches_stablelm(prf):
    config = StableLmConfig(hidden_size=256, num_attention_heads=4, partial_rotary_factor=prf, rope_theta=1e4)
    hf, _ = StableLmRotaryEmbedding.compute_default_rope_parameters(config)
    assert torch.equal(default_inv_freq(64, 1e4, partial_rotary_factor=prf), hf)


# --- YaRN vs HF ------------------------------------------------------------------------------------

YARN_CASES = [
    # (window, factor, alpha, beta): the paper's OneVision window, smaller windows, a temporal M-RoPE window (16:
    # below 2*pi*beta, so HF clamps its ramp start to 0), non-integer factors and a non-default ramp.
    (6272, 8.0, 1.0, 32.0),
    (6272, 2.5, 1.0, 32.0),
    (1024, 4.0, 1.0, 32.0),
    (4096, 3.7, 2.0, 16.0),
    (16, 8.0, 1.0, 32.0),
    (100, 1.5, 1.0, 32.0),
]


@pytest.mark.parametrize("head_dim,base", HEADS)
@pytest.mark.parametrize("window,factor,alpha,beta", YARN_CASES)
@pytest.mark.parametrize("truncate", [True, False])
def test_yarn_bit_identical_to_hf(head_dim, base, window, factor, alpha, beta, truncate):
    hf, hf_scaling = _hf_yarn(head_dim, base, factor, window, alpha, beta, truncate=truncate)
    ours, scaling = yarn_inv_freq(head_dim, base, factor, window, alpha=alpha, beta=beta, truncate=truncate)
    assert torch.equal(ours, hf)
    assert scaling == hf_scaling == pytest.approx(0.1 * math.log(factor) + 1.0)


@pytest.mark.parametrize("attention_factor", [0.7, 1.0, 1.3])
def test_yarn_explicit_attention_factor(attention_factor):
    hf, hf_scaling = _hf_yarn(128, 1e6, 8.0, 6272, 1.0, 32.0, attention_factor=attention_factor)
    ours, scaling = yarn_inv_freq(128, 1e6, 8.0, 6272, attention_factor=attention_factor)
    assert torch.equal(ours, hf)
    assert scaling == hf_scaling == attention_factor


def test_yarn_partial_rotary_matches_hf():
    hf, _ = _hf_yarn(128, 1e4, 4.0, 2048, 1.0, 32.0, prf=0.5)
    ours, _ = yarn_inv_freq(128, 1e4, 4.0, 2048, partial_rotary_factor=0.5)
    assert ours.shape == (32,)
    assert torch.equal(ours, hf)


def test_yarn_keeps_high_and_interpolates_low_frequencies():
    theta = default_inv_freq(128, 1e6)
    ours, _ = yarn_inv_freq(128, 1e6, 8.0, 6272)
    assert torch.equal(ours[:10], theta[:10])  # many rotations inside the window: untouched
    torch.testing.assert_close(ours[-10:], theta[-10:] / 8.0, rtol=1e-6, atol=0)
    assert torch.all(ours <= theta) and torch.all(ours >= theta / 8.0 * (1 - 1e-6))


@pytest.mark.parametrize("factor", [1.0, 0.5, 1])
def test_factor_at_most_one_is_identity(factor):
    theta = default_inv_freq(128, 1e6)
    for fn in (yarn_inv_freq, yarn_inv_freq_paper):
        inv, scaling = fn(128, 1e6, factor, 6272, attention_factor=1.7)
        assert torch.equal(inv, theta) and scaling == 1.0
    assert torch.equal(linear_inv_freq(128, 1e6, factor), theta)
    assert torch.equal(ntk_inv_freq(128, 1e6, factor), theta)


# --- YaRN: HF's ramp vs the paper's formula -------------------------------------------------------


def _paper_literal(head_dim, base, factor, window, alpha, beta):
    """docs/methods.md#visual-yarn written out per frequency with the math module (independent of the module under test)."""
    out = []
    for i in range(head_dim // 2):
        theta = base ** (-2 * i / head_dim)
        r = window / (2 * math.pi / theta)
        gamma = 0.0 if r < alpha else 1.0 if r > beta else (r - alpha) / (beta - alpha)
        out.append((gamma + (1 - gamma) / factor) * theta)
    return torch.tensor(out, dtype=torch.float64)


def _r(head_dim, base, window):
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    return window / (2 * math.pi) * base ** (-2 * i / head_dim)


# Cases where HF's clamps (low >= 0, high <= dim - 1) are inactive: r_0 >= beta.
UNCLAMPED = [(128, 1e6, 6272, 8.0, 1.0, 32.0), (128, 1e4, 1024, 4.0, 1.0, 32.0), (16, 1e4, 4096, 3.0, 2.0, 16.0)]


@pytest.mark.parametrize("head_dim,base,window,factor,alpha,beta", UNCLAMPED + [(128, 1e6, 16, 8.0, 1.0, 32.0)])
def test_paper_function_is_design_formula(head_dim, base, window, factor, alpha, beta):
    ours, scaling = yarn_inv_freq_paper(head_dim, base, factor, window, alpha=alpha, beta=beta)
    torch.testing.assert_close(
        ours.double(), _paper_literal(head_dim, base, factor, window, alpha, beta), rtol=1e-6, atol=0
    )
    assert scaling == pytest.approx(0.1 * math.log(factor) + 1.0)


@pytest.mark.parametrize("head_dim,base,window,factor,alpha,beta", UNCLAMPED)
def test_hf_yarn_is_paper_ramp_in_log_r_without_truncation(head_dim, base, window, factor, alpha, beta):
    r = _r(head_dim, base, window)
    assert r[0] >= beta  # no clamping of the ramp start
    gamma = torch.clamp((r.log() - math.log(alpha)) / (math.log(beta) - math.log(alpha)), 0, 1)
    theta = default_inv_freq(head_dim, base).double()
    expected = (gamma + (1 - gamma) / factor) * theta
    ours, _ = yarn_inv_freq(head_dim, base, factor, window, alpha=alpha, beta=beta, truncate=False)
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("head_dim,base,window,factor,alpha,beta", UNCLAMPED)
@pytest.mark.parametrize("truncate", [True, False])
def test_hf_and_paper_agree_outside_the_ramp_band(head_dim, base, window, factor, alpha, beta, truncate):
    r = _r(head_dim, base, window)
    hf, _ = yarn_inv_freq(head_dim, base, factor, window, alpha=alpha, beta=beta, truncate=truncate)
    paper, _ = yarn_inv_freq_paper(head_dim, base, factor, window, alpha=alpha, beta=beta)
    keep, interp = r >= beta, r <= alpha
    assert keep.any() and interp.any()
    assert torch.equal(hf[keep], paper[keep])
    assert torch.equal(hf[keep], default_inv_freq(head_dim, base)[keep])
    torch.testing.assert_close(hf[interp], paper[interp], rtol=2e-7, atol=0)
    # Inside the band they differ. Untruncated, HF's log ramp keeps more of every frequency than the paper's linear
    # ramp (log is concave); truncated, the widened band can keep less near r = beta.
    band = ~(keep | interp)
    assert band.any()
    if truncate:
        assert (hf[band] - paper[band]).abs().max() > 1e-3 * paper[band].abs().max()
    else:
        assert torch.all(hf[band] > paper[band])


def test_paper_vs_hf_gap_is_large_in_the_band():
    # The documented example: d=128, base=1e6, L=6272, s=8; at i=24 (r~5.6) gamma 0.15 (paper) vs 0.50 (HF).
    theta = default_inv_freq(128, 1e6).double()
    s = 8.0
    for fn, expected_gamma in ((yarn_inv_freq_paper, 0.149), (yarn_inv_freq, 0.4978)):
        kwargs = {"truncate": False} if fn is yarn_inv_freq else {}
        inv, _ = fn(128, 1e6, s, 6272, **kwargs)
        gamma = (inv[24].double() / theta[24] - 1 / s) / (1 - 1 / s)
        assert gamma.item() == pytest.approx(expected_gamma, abs=2e-3)


def test_small_window_clamp_differs_from_paper():
    # A temporal window of 16 positions has r_0 = 2.5 < beta: HF clamps the ramp start to i=0 (gamma_0 = 1).
    theta = default_inv_freq(128, 1e6)
    hf, _ = yarn_inv_freq(128, 1e6, 8.0, 16)
    paper, _ = yarn_inv_freq_paper(128, 1e6, 8.0, 16)
    assert hf[0] == theta[0]
    assert paper[0] < theta[0] * 0.2


# --- linear / NTK --------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim,base", HEADS)
@pytest.mark.parametrize("factor", [2.0, 8.0, 3.7])
def test_linear_bit_identical_to_hf(head_dim, base, factor):
    hf, scaling = ROPE_INIT_FUNCTIONS["linear"](_qwen2(head_dim, base, {"rope_type": "linear", "factor": factor}))
    assert torch.equal(linear_inv_freq(head_dim, base, factor), hf) and scaling == 1.0


@pytest.mark.parametrize("head_dim,base", HEADS)
@pytest.mark.parametrize("factor", [2.0, 8.0, 2.5])
def test_ntk_equals_hf_dynamic_at_scaled_length(head_dim, base, factor):
    # HF dynamic: base * (f * seq_len / max_pos - (f - 1)) ** (d / (d - 2)). With f = 1 at seq_len = s * max_pos
    # the bracket is exactly s.
    max_pos = 4096
    config = _qwen2(head_dim, base, {"rope_type": "dynamic", "factor": 1.0}, max_pos=max_pos)
    hf, scaling = ROPE_INIT_FUNCTIONS["dynamic"](config, seq_len=int(factor * max_pos))
    assert torch.equal(ntk_inv_freq(head_dim, base, factor), hf) and scaling == 1.0
    # With a config factor f != 1 the same base is reached at seq_len = max_pos * (1 + (s - 1) / f).
    f = 2.0
    config = _qwen2(head_dim, base, {"rope_type": "dynamic", "factor": f}, max_pos=max_pos)
    hf, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, seq_len=max_pos * (1 + (factor - 1) / f))
    torch.testing.assert_close(ntk_inv_freq(head_dim, base, factor), hf, rtol=1e-6, atol=0)


def test_ntk_divides_lowest_frequency_by_factor():
    theta = default_inv_freq(128, 1e4)
    ntk = ntk_inv_freq(128, 1e4, 4.0)
    assert ntk[0] == theta[0]
    # The NTK rule is designed so the would-be frequency at i = d/2 is divided by s; the last one nearly is.
    i = torch.arange(64, dtype=torch.float64)
    torch.testing.assert_close(ntk.double(), theta.double() * 4.0 ** (-2 * i / 126), rtol=1e-5, atol=0)


# --- cos / sin -----------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim,base", HEADS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls,config_cls", ROTARIES)
def test_rope_cos_sin_bit_identical_to_hf_rotary(head_dim, base, dtype, cls, config_cls):
    rotary = cls(_qwen2(head_dim, base, config_cls=config_cls))
    positions = torch.cat(
        [torch.arange(300)[None], torch.randint(0, 200_000, (2, 300), generator=torch.Generator().manual_seed(0))]
    )
    x = torch.zeros(1, dtype=dtype)
    hf_cos, hf_sin = rotary(x, positions)
    cos, sin = rope_cos_sin(default_inv_freq(head_dim, base), positions, dtype=dtype)
    assert cos.shape == (3, 300, head_dim) and cos.dtype == dtype
    assert torch.equal(cos, hf_cos) and torch.equal(sin, hf_sin)


def test_rope_cos_sin_bit_identical_with_hf_yarn_scaling():
    params = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 6272}
    rotary = Qwen2RotaryEmbedding(_qwen2(128, 1e6, params, max_pos=6272 * 8))
    inv_freq, scaling = yarn_inv_freq(128, 1e6, 8.0, 6272)
    assert scaling == rotary.attention_scaling != 1.0
    positions = torch.arange(50_000).reshape(1, -1)
    hf_cos, hf_sin = rotary(torch.zeros(1), positions)
    cos, sin = rope_cos_sin(inv_freq, positions, scaling)
    assert torch.equal(cos, hf_cos) and torch.equal(sin, hf_sin)


def test_rope_cos_sin_fractional_positions_match_float64():
    inv_freq = default_inv_freq(128, 1e6)
    positions = torch.rand(2, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2000
    positions = positions.float()  # what the function sees; the reference uses the same (rounded) values
    cos, sin = rope_cos_sin(inv_freq, positions, attention_scaling=1.2)
    angles = positions.double()[..., None] * inv_freq.double()
    angles = torch.cat((angles, angles), dim=-1)
    torch.testing.assert_close(cos.double(), angles.cos() * 1.2, rtol=0, atol=5e-4)
    torch.testing.assert_close(sin.double(), angles.sin() * 1.2, rtol=0, atol=5e-4)


def test_rope_cos_sin_integer_and_float_positions_agree():
    inv_freq = default_inv_freq(64, 1e4)
    positions = torch.arange(1000).reshape(2, 500)
    a = rope_cos_sin(inv_freq, positions)
    b = rope_cos_sin(inv_freq, positions.float())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- interpolate_positions -----------------------------------------------------------------------


def _row(n_before, n_visual, n_after, start=0):
    mask = torch.tensor([False] * n_before + [True] * n_visual + [False] * n_after)
    positions = torch.arange(start, start + mask.numel())
    return positions[None], mask[None]


def test_interpolate_rows_under_window_unchanged():
    positions, mask = _row(5, 40, 7)
    out = interpolate_positions(positions, mask, window=40)
    assert out.dtype == torch.float32
    assert torch.equal(out, positions.float())
    no_video = interpolate_positions(positions, torch.zeros_like(mask), window=1)
    assert torch.equal(no_video, positions.float())


def test_interpolate_visual_run_spans_window():
    positions, mask = _row(5, 100, 7, start=3)
    out = interpolate_positions(positions, mask, window=20)[0]
    step = 20 / 100
    diffs = out.diff()
    assert torch.all(diffs > 0)
    assert torch.equal(out[:5], positions[0, :5].float())  # text before the video is untouched
    torch.testing.assert_close(diffs[4:104], torch.full((100,), step), rtol=0, atol=1e-5)  # each visual token
    assert torch.equal(diffs[104:], torch.ones(7))  # text after the video keeps step 1 (first text too)
    assert out[105] - out[4] == 20 + 1  # the visual run consumes exactly `window` positions


def test_interpolate_two_videos_share_the_window_and_batch_rows_independent():
    mask = torch.tensor([[False] * 3 + [True] * 30 + [False] * 4 + [True] * 50 + [False] * 2, [False] * 89])
    mask[1, 10:20] = True  # 10 visual tokens: under the window
    positions = torch.arange(89).repeat(2, 1)
    out = interpolate_positions(positions, mask, window=16)
    assert torch.equal(out[1], positions[1].float())
    row = out[0]
    assert torch.all(row.diff() > 0)
    torch.testing.assert_close(row[-1] - row[0], torch.tensor(88 - 80 + 16.0), rtol=0, atol=1e-4)
    torch.testing.assert_close(row[36] - row[2], torch.tensor(30 * 16 / 80 + 4), rtol=0, atol=1e-5)


def test_interpolate_first_token_visual_keeps_its_position():
    positions, mask = _row(0, 50, 3, start=7)
    out = interpolate_positions(positions, mask, window=10)[0]
    assert out[0] == 7.0
    torch.testing.assert_close(out[49] - out[0], torch.tensor(49 * 0.2), rtol=0, atol=1e-5)
    assert torch.equal(out[50:].diff(), torch.ones(2))


def test_interpolate_offset_and_float_integer_input():
    positions, mask = _row(4, 64, 4)
    base = interpolate_positions(positions, mask, window=8)
    shifted = interpolate_positions(positions + 100, mask, window=8)
    torch.testing.assert_close(shifted - 100, base, rtol=0, atol=1e-5)
    assert torch.equal(interpolate_positions(positions.float(), mask, window=8), base)


@settings(max_examples=200, deadline=None)
@given(
    mask=st.lists(st.booleans(), min_size=1, max_size=200),
    window=st.integers(1, 100),
    start=st.integers(0, 1000),
)
def test_interpolate_property_monotone_and_text_step_one(mask, window, start):
    mask_t = torch.tensor(mask)[None]
    positions = torch.arange(start, start + len(mask))[None]
    out = interpolate_positions(positions, mask_t, window)[0].double()
    n = int(mask_t.sum())
    step = min(1.0, window / n) if n else 1.0
    assert out[0] == start
    diffs = out.diff()
    assert torch.all(diffs > 0)  # strictly increasing: relative order kept
    expected = torch.where(
        mask_t[0, 1:], torch.tensor(step, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    )
    torch.testing.assert_close(diffs, expected, rtol=0, atol=3e-4)
    if n <= window:
        assert torch.equal(out, positions[0].double())


# --- scale_factor and dispatch -------------------------------------------------------------------


def test_scale_factor():
    assert scale_factor(50176, 6272) == 8.0
    assert scale_factor(6272, 6272) == 1.0
    assert scale_factor(100, 6272) == 1.0
    assert scale_factor(0, 5) == 1.0
    assert scale_factor(15, 10) == 1.5


def test_inv_freq_for_dispatch():
    theta = default_inv_freq(128, 1e6)
    yarn = {"type": "yarn", "visual_window": 6272}
    inv, scaling = inv_freq_for(yarn, 128, 1e6, 8.0)
    assert torch.equal(inv, yarn_inv_freq(128, 1e6, 8.0, 6272)[0]) and scaling == 1.0  # paper: no temperature
    _, scaling = inv_freq_for({**yarn, "attention_factor": True}, 128, 1e6, 8.0)
    assert scaling == pytest.approx(0.1 * math.log(8.0) + 1.0)
    _, scaling = inv_freq_for({**yarn, "attention_factor": "yarn"}, 128, 1e6, 8.0)
    assert scaling == pytest.approx(0.1 * math.log(8.0) + 1.0)
    _, scaling = inv_freq_for({**yarn, "attention_factor": 1.1}, 128, 1e6, 8.0)
    assert scaling == 1.1
    inv, _ = inv_freq_for({**yarn, "alpha": 2, "beta": 16}, 128, 1e6, 8.0)
    assert torch.equal(inv, yarn_inv_freq(128, 1e6, 8.0, 6272, alpha=2, beta=16)[0])
    inv, _ = inv_freq_for({**yarn, "factor": 4}, 128, 1e6, 8.0)  # a fixed factor replaces the per-input s
    assert torch.equal(inv, yarn_inv_freq(128, 1e6, 4, 6272)[0])
    inv, scaling = inv_freq_for(yarn, 128, 1e6, 0.5)  # computed s below 1: no change, no error
    assert torch.equal(inv, theta) and scaling == 1.0
    assert torch.equal(inv_freq_for({"type": "linear"}, 128, 1e6, 4.0)[0], linear_inv_freq(128, 1e6, 4.0))
    assert torch.equal(inv_freq_for({"type": "ntk"}, 128, 1e6, 4.0)[0], ntk_inv_freq(128, 1e6, 4.0))
    inv, scaling = inv_freq_for({"type": "interpolate", "visual_window": 10}, 128, 1e6, 4.0)
    assert torch.equal(inv, theta) and scaling == 1.0
    inv, _ = inv_freq_for({**yarn, "scope": "visual"}, 128, 1e6, 2.0, partial_rotary_factor=0.5)
    assert inv.shape == (32,)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: inv_freq_for({"type": "longrope"}, 128, 1e6, 2.0), "unknown rope type"),
        (lambda: inv_freq_for({"visual_window": 10}, 128, 1e6, 2.0), "unknown rope type"),
        (lambda: inv_freq_for([("type", "yarn")], 128, 1e6, 2.0), "must be a dict"),
        (lambda: inv_freq_for({"type": "yarn"}, 128, 1e6, 2.0), "visual_window"),
        (lambda: inv_freq_for({"type": "interpolate"}, 128, 1e6, 2.0), "visual_window"),
        (lambda: inv_freq_for({"type": "yarn", "visual_window": 0}, 128, 1e6, 2.0), "positive"),
        (lambda: inv_freq_for({"type": "yarn", "visual_window": -5}, 128, 1e6, 2.0), "positive"),
        (
            lambda: inv_freq_for({"type": "yarn", "visual_window": 10, "alpha": 32, "beta": 32}, 128, 1e6, 2.0),
            "alpha < beta",
        ),
        (lambda: inv_freq_for({"type": "yarn", "visual_window": 10, "alpha": 40}, 128, 1e6, 2.0), "alpha < beta"),
        (lambda: inv_freq_for({"type": "yarn", "visual_window": 10, "factor": 0.5}, 128, 1e6, 2.0), ">= 1"),
        (lambda: inv_freq_for({"type": "linear", "factor": "8"}, 128, 1e6, 2.0), ">= 1"),
        (lambda: inv_freq_for({"type": "linear", "attention_factor": 1.2}, 128, 1e6, 2.0), "only applies"),
        (
            lambda: inv_freq_for({"type": "yarn", "visual_window": 10, "attention_factor": "x"}, 128, 1e6, 2.0),
            "attention_factor",
        ),
        (
            lambda: inv_freq_for({"type": "yarn", "visual_window": 10, "attention_factor": -1.0}, 128, 1e6, 2.0),
            "attention_factor",
        ),
        (lambda: inv_freq_for({"type": "ntk"}, 128, 1e6, float("nan")), "factor"),
        (lambda: yarn_inv_freq(128, 1e6, 2.0, 6272, alpha=0.0), "alpha > 0"),
        (lambda: yarn_inv_freq(128, 1e6, 2.0, 6272, truncate=1), "truncate"),
        (lambda: yarn_inv_freq(127, 1e6, 2.0, 6272), "odd"),
        (lambda: yarn_inv_freq(128, 1.0, 2.0, 6272), "base"),
        (lambda: yarn_inv_freq(128, 1e6, 0.0, 6272), "factor"),
        (lambda: default_inv_freq(0, 1e4), "head_dim"),
        (lambda: default_inv_freq(128, 1e4, partial_rotary_factor=1.5), "partial_rotary_factor"),
        (lambda: ntk_inv_freq(2, 1e4, 2.0), "rotary dim"),
        (lambda: scale_factor(10, 0), "positive"),
        (lambda: scale_factor(-1, 10), "visual_tokens"),
        (lambda: interpolate_positions(torch.arange(4)[None], torch.ones(1, 4, dtype=torch.bool), 0), "positive"),
        (lambda: interpolate_positions(torch.arange(4), torch.ones(4, dtype=torch.bool), 2), "shape"),
        (lambda: interpolate_positions(torch.arange(4)[None], torch.ones(1, 3, dtype=torch.bool), 2), "shape"),
        (lambda: interpolate_positions(torch.arange(4)[None], torch.ones(1, 4), 2), "bool"),
        (lambda: interpolate_positions(torch.arange(4)[None] + 0.5, torch.ones(1, 4, dtype=torch.bool), 2), "integer"),
        (lambda: rope_cos_sin(torch.ones(2, 3), torch.arange(3)), "1-D"),
    ],
)
def test_adapter_errors(call, match):
    with pytest.raises(AdapterError, match=match) as info:
        call()
    assert isinstance(info.value, ValueError)
