"""Profiler, real-size configs and the analytic memory estimator.

The estimator is checked against a measurement of the true LLaVA-OneVision-7B geometry truncated to one decoder
and one vision layer (bf16, CPU, fresh process, RSS high-water mark per stage): every stage within 10 % in total,
and the activation part above the weights within 25 % (it is ~100-300 MB at 8 frames, so the ~15 MB of
non-tensor runtime growth during the first generate() weighs ~10 % of it)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from longctx_adapter import AdapterConfig, apply_adapter, profile
from longctx_adapter.cli.main import main as cli_main
from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.pooling import count_tokens
from longctx_adapter.profiling.estimate import estimate_memory, max_frames, param_bytes
from longctx_adapter.profiling.profiler import parse_config, to_markdown, write_outputs
from longctx_adapter.profiling.sizes import PRESETS, real_config, stock_visual_tokens, video_inputs
from longctx_adapter.testing.tiny import tiny_model

# Published totals (model cards): 8.03B, 7.06B, 8.29B, 8.29B, 8.77B parameters.
PUBLISHED_PARAMS = {
    "llava-onevision-7b": 8.03e9,
    "llava-next-video-7b": 7.06e9,
    "qwen2-vl-7b": 8.29e9,
    "qwen2.5-vl-7b": 8.29e9,
    "qwen3-vl-8b": 8.77e9,
}


def test_parse_config_shorthands():
    assert parse_config("none") == ("none", None)
    label, cfg = parse_config("progressive:2,8,4")
    assert cfg["pooling"] == [{"type": "progressive", "group": 4, "strides": [2, 8], "mode": "bilinear"}]
    assert parse_config("progressive:4,4,1")[1]["pooling"][0]["strides"] == [4]
    cfg = parse_config("temporal:2,2+progressive:2,8,4+chunk:16+lastlogits+yarn:6272:visual")[1]
    assert [s["type"] for s in cfg["pooling"]] == ["temporal", "progressive"]
    assert cfg["vision_chunk_frames"] == 16 and cfg["last_logits_only"] is True
    assert cfg["rope"]["visual_window"] == 6272 and cfg["rope"]["scope"] == "visual"
    assert parse_config("adaptive3d:16,12,12")[1]["pooling"][0]["output"] == [16, 12, 12]
    assert parse_config("conv3d:2,3,3")[1]["pooling"][0]["stride"] == [2, 3, 3]
    assert parse_config('{"type": "temporal", "kernel": 2}')[1]["pooling"][0]["stride"] == 2
    assert parse_config({"pooling": None, "rope": {"type": "yarn", "visual_window": 8}})[1]["pooling"] is None
    for bad in ("progressive:2,8", "warp:3", "chunk:x", "{nope"):
        with pytest.raises(AdapterError):
            parse_config(bad)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_real_presets_match_published_sizes(name):
    config = real_config(name)
    params = param_bytes(config, "bfloat16") / 2  # buffers are counted as fp32 but are tiny
    assert params == pytest.approx(PUBLISHED_PARAMS[name], rel=0.006)
    truncated = real_config(name, layers=1, vision_layers=2)
    assert truncated.text_config.num_hidden_layers == 1
    frames = 8
    inputs = video_inputs(truncated, frames, dtype=torch.float32)
    visual = int((inputs["input_ids"] == truncated.video_token_id).sum())
    assert visual == stock_visual_tokens(truncated, frames, PRESETS[name].frame_size)


def test_estimator_counts_and_kv():
    config = real_config("llava-onevision-7b")
    stock = estimate_memory(config, 256, None)
    assert stock["visual_tokens_before"] == 256 * 196 + 1 == stock["visual_tokens_after"]
    adapted = estimate_memory(config, 256, parse_config("progressive:2,8,4")[1])
    assert adapted["visual_tokens_after"] == count_tokens(256, 27, 27, AdapterConfig.preset("llava_onevision").pooling) + 1
    assert adapted["visual_tokens_after"] == 15_617
    # docs/memory.md#what-dominates: Qwen2-7B bf16 KV = 57,344 B/token
    assert stock["kv_bytes_per_token"] == 57_344 and stock["kv_bytes"] == 57_344 * stock["seq_len"]
    chunked = estimate_memory(config, 256, parse_config("progressive:2,8,4+chunk:16")[1])
    assert chunked["vision_peak_bytes"] < adapted["vision_peak_bytes"] < stock["prefill_peak_bytes"]
    full_logits = estimate_memory(config, 256, None, logits="all_fp32")
    assert full_logits["logits_bytes"] == 50_211 * 152_064 * 6  # bf16 logits + their float32 copy
    extra = full_logits["prefill_peak_bytes"] - stock["prefill_peak_bytes"]
    assert extra >= full_logits["logits_bytes"] - stock["layer_activation_bytes"]
    budget = 40e9
    n = max_frames(config, budget, None, device="cuda")
    assert estimate_memory(config, n, None, device="cuda")["peak_bytes"] <= budget
    assert estimate_memory(config, n + 4, None, device="cuda")["peak_bytes"] > budget
    assert max_frames(config, budget, parse_config("progressive:2,8,4")[1], device="cuda") > 2 * n


def test_estimator_counts_of_merge_stages_are_upper_bounds():
    from longctx_adapter.ops.stages import GridShape, stage_from_dict
    from longctx_adapter.profiling.estimate import _op_scratch_tokens

    config = real_config("llava-onevision-7b")
    label, merged = parse_config("progressive:2,2,1+merge_temporal:10%")
    estimate = estimate_memory(config, 256, merged)
    assert estimate["visual_tokens_after"] == round(0.1 * 256 * 196) + 1 and not estimate["visual_tokens_exact"]
    assert estimate_memory(config, 256, parse_config("progressive:2,8,4")[1])["visual_tokens_exact"]
    with_threshold = estimate_memory(config, 256, parse_config("progressive:2,2,1+merge_temporal:0.9")[1])
    assert with_threshold["visual_tokens_after"] == 256 * 196 + 1  # a threshold alone may keep every token
    # the merge after the model's own 2x is sized on the 14x14 frames it sees
    spatial, merge = (stage_from_dict(s) for s in merged["pooling"])
    both = [spatial.scratch_tokens(GridShape(256, 27, 27)), merge.scratch_tokens(GridShape(256, 14, 14))]
    assert _op_scratch_tokens(merged["pooling"], 256, 27) == max(both) and min(both) > 0


def test_param_bytes_exact_on_a_tiny_model():
    model = tiny_model("llava_onevision")
    expected = sum(p.numel() for p in model.parameters()) * 2 + sum(b.numel() for b in model.buffers()) * 4
    assert param_bytes(model.config, "bf16") == expected


def test_profile_in_process_and_outputs(tmp_path):
    """A model object is measured in this process; unsupported configs give 'unavailable' rows, not errors."""
    model = tiny_model("llava_onevision")
    configs = ["none", '{"type": "progressive", "group": 4, "strides": [2, 7]}', "progressive:2,8,4"]
    rows = profile(model, frames=[4], configs=configs, dtype="fp32")
    stock, adapted, refused = rows
    assert stock["status"] == "ok" and adapted["status"] == "ok" and stock["method"] == "measured"
    assert refused["status"].startswith("unavailable") and "stride 8" in refused["status"]
    assert stock["visual_tokens_before"] == stock["visual_tokens_after"] == 4 * 16 + 1
    assert adapted["visual_tokens_after"] == 16 + 3 + 1
    for row in (stock, adapted):
        assert row["kv_bytes_measured"] == row["kv_bytes_analytic"]  # 2 x layers x kv_heads x head_dim x 4 x L
        for stage in ("vision", "prefill", "decode"):  # in-process RSS of a tiny model: only presence is checked
            assert isinstance(row[f"{stage}_peak_bytes"], int) and row[f"{stage}_s"] >= 0
    paths = write_outputs(rows, tmp_path, title="tiny")
    assert json.loads(paths["json"].read_text())[0]["config"] == "none"
    assert paths["csv"].read_text().splitlines()[0].startswith("model,model_type")
    assert paths["png"].stat().st_size > 1000
    assert "| 4 | none | measured |" in to_markdown(rows)


def test_cli_profile_estimate_only(tmp_path, capsys):
    code = cli_main(
        [
            "profile", "--model", "llava-onevision-7b", "--frames", "64,256", "--config", "none",
            "--config", "progressive:2,8,4", "--config", "progressive:2,8,4+chunk:16", "--estimate-only",
            "--out", str(tmp_path),
        ]
    )
    assert code == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"table.md", "rows.csv", "rows.json", "memory.png"}
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {r["method"] for r in rows} == {"estimated"} and len(rows) == 6
    by = {(r["frames"], r["config"]): r for r in rows}
    assert by[(256, "progressive:2,8,4")]["peak_bytes"] < by[(256, "none")]["peak_bytes"]
    assert "256 | none | estimated" in capsys.readouterr().out


def test_estimator_vs_measured_truncated_onevision_7b():
    """True OneVision-7B widths, 1 decoder + 1 vision layer, bf16, 8 frames, CPU, fresh process (~1 min)."""
    rows = profile("llava-onevision-7b", frames=[8], configs=["progressive:2,8,4"], layers=1, dtype="bf16", device="cpu")
    (row,) = rows
    assert row["status"] == "ok", row.get("traceback") or row["status"]
    assert row["method"] == "extrapolated" and row["text_layers_run"] == 1 and row["text_layers_full"] == 28
    run_config = real_config("llava-onevision-7b", layers=1, vision_layers=1)
    est = estimate_memory(run_config, 8, parse_config("progressive:2,8,4")[1], dtype="bf16", device="cpu")
    weights = row["weights_bytes_run"]  # parameters; the estimate adds the (float32) buffers, a few KB
    assert 0 <= est["weights_bytes"] - weights < 1 << 20
    assert row["kv_bytes_measured"] == est["kv_bytes"] == row["kv_bytes_analytic_run"]
    for stage in ("vision", "prefill", "decode"):
        measured, estimated = row[f"{stage}_peak_bytes_run"], est[f"{stage}_peak_bytes"]
        assert math.isclose(estimated, measured, rel_tol=0.10), (stage, measured, estimated)
        if stage != "decode":  # decode holds ~50 MB above the weights: the runtime's own growth dominates there
            above = measured - weights
            assert abs(estimated - measured) <= 0.25 * above, (stage, measured - weights, estimated - weights)
    # full-depth figures are the run plus the estimator's difference between full and truncated depth
    full = real_config("llava-onevision-7b")
    est_full = estimate_memory(full, 8, parse_config("progressive:2,8,4")[1], dtype="bf16", device="cpu")
    delta = est_full["prefill_peak_bytes"] - est["prefill_peak_bytes"]
    assert row["prefill_peak_bytes"] == row["prefill_peak_bytes_run"] + delta


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl"])
def test_estimated_sequence_length_equals_the_adapted_call(model_type):
    """The estimator's sequence length is what the decoder receives, Qwen3-VL's deleted blocks included."""
    from longctx_adapter.testing.tiny_qwen import qwen_tiny_model

    model = qwen_tiny_model(model_type)
    merge_then_progressive = [{"type": "temporal", "kernel": 3, "stride": 2}, {"type": "progressive", "group": 2, "strides": [1, 2]}]
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    inputs = video_inputs(model.config, 8, frame_size=(32, 32), dtype=torch.float32)
    try:
        for pooling in (None, {"type": "temporal", "kernel": 2, "stride": 2}, merge_then_progressive):
            with apply_adapter(model, pooling=pooling), torch.no_grad():
                model(**inputs)
            estimate = estimate_memory(model.config, 8, AdapterConfig(pooling=pooling), frame_size=(32, 32))
            assert seen[-1] == estimate["seq_len"], pooling
    finally:
        hook.remove()
    assert len(seen) == 3


def test_profile_with_a_quantized_kv_cache():
    """kv_bits runs generate with transformers' quantized cache (hqq here) and estimates with the quantized terms:
    the cache held after prefill shrinks in the measurement and in the estimate alike."""
    pytest.importorskip("hqq", reason="hqq is in the dev extra")
    model = tiny_model("llava_onevision")
    # hqq's default group (64 values) must divide each cache tensor: 2 heads x 16 x L tokens, so L even (4 x 16 + 1
    # visual tokens + 15 + 20 text tokens = 100)
    kwargs = {"frames": [4], "configs": ["none"], "dtype": "fp32", "text_before": 15}
    (full,) = profile(model, **kwargs)
    (quant,) = profile(model, **kwargs, kv_bits=4, kv_backend="hqq")
    assert quant["status"] == "ok"
    assert 0 < quant["kv_bytes_measured"] < full["kv_bytes_measured"] / 4  # 4-bit values plus group scales
    # the estimate is the estimator's quantized term (it adds a full-precision residual window of up to 128 tokens,
    # larger than this whole 100-token prompt, so here it exceeds the full-precision cache)
    expected = estimate_memory(model.config, 4, None, dtype="fp32", text_tokens=35, kv_bits=4, device="cpu")
    assert quant["kv_bytes_analytic"] == expected["kv_bytes"] != full["kv_bytes_analytic"]


def test_quantization_scratch_depends_on_the_backend_and_reaches_the_decode_step():
    """quanto (the backend plan configures) and hqq have different quantization scratch; the estimator takes the
    backend, its decode step grows by exactly the scratch difference, and an unknown backend is refused."""
    from longctx_adapter import AdapterError
    from longctx_adapter.profiling.estimate import quantize_transient_bytes
    from longctx_adapter.profiling.sizes import real_config

    config = real_config("llava-onevision-7b", 1, 1)
    values = 1 << 20
    assert quantize_transient_bytes(values, "bfloat16", "cpu", "quanto") == int(values * 2.25 * 2)
    assert quantize_transient_bytes(values, "bfloat16", "cpu", "hqq") == values * 36
    assert quantize_transient_bytes(values, "float32", "cpu", "hqq") == values * 32  # the input is already float32
    est = {b: estimate_memory(config, 8, None, kv_bits=4, kv_backend=b, device="cpu") for b in ("quanto", "hqq")}
    text = config.text_config
    cache_values = text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * est["hqq"]["seq_len"]
    difference = (quantize_transient_bytes(cache_values, "bfloat16", "cpu", "hqq")
                  - quantize_transient_bytes(cache_values, "bfloat16", "cpu", "quanto"))  # fmt: skip
    assert est["hqq"]["decode_peak_bytes"] - est["quanto"]["decode_peak_bytes"] == difference > 0
    assert est["hqq"]["kv_bytes"] == est["quanto"]["kv_bytes"]  # storage is the same format
    with pytest.raises(AdapterError, match="kv_backend must be one of"):
        estimate_memory(config, 8, None, kv_bits=4, kv_backend="bnb")
    with pytest.raises(AdapterError, match="kv_backend must be one of"):
        estimate_memory(config, 8, None, kv_backend="bnb")  # refused even without kv_bits
