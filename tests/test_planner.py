"""`plan`: the first candidate that fits is chosen, every earlier one does not fit, the printed config is what was
estimated (recomputed here with the estimator), less memory never gives more tokens, and the CLI's errors."""

from __future__ import annotations

import json

import pytest

from longctx_adapter import AdapterConfig, AdapterError
from longctx_adapter.cli.main import main
from longctx_adapter.ops.pooling import count_tokens
from longctx_adapter.profiling.estimate import estimate_memory
from longctx_adapter.profiling.planner import parse_memory, plan
from longctx_adapter.profiling.sizes import real_config

GIB = 2**30


@pytest.fixture(scope="module")
def onevision():
    return real_config("llava-onevision-7b")


def test_memory_sizes_parse_in_binary_units():
    assert parse_memory("24GB") == parse_memory("24 GiB") == parse_memory("24576MB") == parse_memory(24) == 24 * GIB
    assert parse_memory("1.5tb") == int(1.5 * 2**40)
    for bad in ("lots", "24 parsecs", "-3GB", "0"):
        with pytest.raises(AdapterError, match="memory"):
            parse_memory(bad)


@pytest.mark.parametrize(("frames", "memory"), [(64, "80GB"), (256, "24GB"), (1024, "24GB"), (2048, "24GB"),
                                                (4096, "40GB")])  # fmt: skip
def test_the_first_fitting_candidate_wins_and_its_config_is_what_was_estimated(onevision, frames, memory):
    chosen, tried = plan(onevision, frames, memory, device="cuda")
    usable = parse_memory(memory) * 0.9
    assert tried[-1] is chosen and chosen.fits and chosen.peak_bytes <= usable
    assert all(not c.fits and c.peak_bytes > usable for c in tried[:-1])
    assert [c.step for c in tried[:1]] == ["stock"]
    # the printed config, recomputed independently
    again = estimate_memory(onevision, frames, chosen.adapter_config, prefill_chunk_size=chosen.prefill_chunk_size,
                            kv_bits=chosen.kv_bits, device="cuda", streamed=chosen.streamed)  # fmt: skip
    assert again["peak_bytes"] == chosen.peak_bytes
    # streamed ingestion wherever the pooling is chunked frame-locally (OneVision supports encode_video)
    assert chosen.streamed == (chosen.adapter_config is not None and chosen.adapter_config["vision_chunk_frames"] is not None)
    if chosen.adapter_config is not None:
        config = AdapterConfig.from_dict(chosen.adapter_config)
        assert config.to_dict() == chosen.adapter_config
        assert chosen.visual_tokens == count_tokens(frames, 27, 27, config.pooling) + 1  # + OneVision's newline
        chunk = config.vision_chunk_frames
        assert chunk is None or chunk % 4 == 0
    kwargs = chosen.generate_kwargs()
    assert ("cache_implementation" in kwargs) == (chosen.kv_bits is not None)


def test_the_order_is_stock_then_chunking_then_pooling_then_kv(onevision):
    _, tried = plan(onevision, 2048, "24GB", device="cuda")
    steps = [c.step for c in tried]
    assert steps[:2] == ["stock", "stock + chunked prefill"]
    first_kv = next(i for i, s in enumerate(steps) if "KV" in s)
    assert all(s.startswith("pooling progressive") for s in steps[2:first_kv])
    assert all("temporal" not in s for s in steps[:first_kv])
    tokens = [c.visual_tokens for c in tried[2:first_kv]]
    assert tokens == sorted(tokens, reverse=True) and len(set(tokens)) == len(tokens)


def test_less_memory_never_gives_more_tokens(onevision):
    tokens = [plan(onevision, 1024, f"{gb}GB", device="cuda")[0].visual_tokens for gb in (80, 40, 32, 24, 20)]
    assert tokens == sorted(tokens, reverse=True)
    assert tokens[0] > tokens[-1]


def test_nothing_fits_names_the_smallest_peak(onevision):
    with pytest.raises(AdapterError, match="nothing fits.*GiB"):
        plan(onevision, 64, "8GB")  # the weights alone are ~15 GiB
    with pytest.raises(AdapterError, match="KV bits"):
        plan(onevision, 64, "24GB", kv_bits=(3,))
    with pytest.raises(AdapterError, match="frames"):
        plan(onevision, 0, "24GB")


def test_cli_prints_the_plan_and_its_config(capsys):
    assert main(["plan", "--model", "llava-onevision-7b", "--frames", "1024", "--memory", "24GB"]) == 0
    out = capsys.readouterr().out
    assert "chosen: pooling progressive" in out and "adapter config (--config): {" in out
    assert main(["plan", "--model", "qwen2-vl-7b", "--frames", "256", "--memory", "24GB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["peak_bytes"] <= 24 * GIB * 0.9 and "step" in data


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--model", "nonesuch", "--frames", "8", "--memory", "24GB"], "neither a real-size preset"),
        (["--model", "llava-onevision-7b", "--frames", "8", "--memory", "big"], "is not a size"),
        (["--model", "llava-onevision-7b", "--frames", "0", "--memory", "24GB"], "--frames"),
        (["--model", "llava-onevision-7b", "--frames", "8", "--memory", "24GB", "--kv-bits", "x"], "--kv-bits"),
    ],
)
def test_cli_errors_are_one_line(capsys, argv, match):
    try:
        status = main(["plan", *argv])
    except SystemExit as exit_:  # argparse's usage error (a bad --frames)
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert match in err and "Traceback" not in err and len(errors) == 1


def test_streamed_ingestion_is_flat_in_frames_apart_from_the_pooled_features(onevision):
    """The estimator's streamed term: one chunk's pixels and activations, plus the pooled features; the one-shot
    term grows with every frame's pixels. Streaming lowers the whole call's vision stage and drops the pixels from
    prefill and decoding."""
    from longctx_adapter.profiling.estimate import estimate_ingestion

    adapter = {"pooling": [{"type": "progressive", "group": 4, "strides": [2, 8]}], "vision_chunk_frames": 16}
    streamed = {n: estimate_ingestion(onevision, n, adapter, streamed=True) for n in (64, 1024, 4096)}
    one_shot = {n: estimate_ingestion(onevision, n, adapter, streamed=False) for n in (64, 1024, 4096)}
    for n in (1024, 4096):
        grew = streamed[n]["peak_bytes"] - streamed[64]["peak_bytes"]
        assert grew == streamed[n]["features_bytes"] - streamed[64]["features_bytes"]
        assert streamed[n]["pixels_bytes"] == streamed[64]["pixels_bytes"] == 16 * 3 * 384 * 384 * (4 + 2)
        assert one_shot[n]["pixels_bytes"] == n * 3 * 384 * 384 * (4 + 2)
        assert one_shot[n]["peak_bytes"] - streamed[n]["peak_bytes"] > (n - 32) * 3 * 384 * 384 * 4
    whole = estimate_memory(onevision, 2048, adapter, device="cuda", prefill_chunk_size=4096)
    lean = estimate_memory(onevision, 2048, adapter, device="cuda", prefill_chunk_size=4096, streamed=True)
    assert lean["prefill_peak_bytes"] == whole["prefill_peak_bytes"] - whole["pixels_bytes"]
    assert lean["vision_peak_bytes"] < whole["vision_peak_bytes"] and lean["pixels_bytes"] < whole["pixels_bytes"]
    with pytest.raises(AdapterError, match="frame-local"):
        estimate_memory(onevision, 64, {**adapter, "vision_chunk_frames": 6}, streamed=True)
    # the planner counts streaming only where asked (the profiler feeds every frame's pixels)
    assert plan(onevision, 1024, "24GB", device="cuda")[0].streamed
    fed_whole, tried = plan(onevision, 1024, "24GB", device="cuda", streamed=False)
    assert not any(c.streamed for c in tried) and fed_whole.visual_tokens <= 69377


def test_qwen3_vl_streams_with_its_frame_block_text():
    """Qwen3-VL streams like the other video-tensor families; the streamed estimate keeps the prompt the call sees:
    the text, the pooled visual tokens and the block text (timestamp and markers) of every frame block pooling
    keeps, as one-shot does."""
    from longctx_adapter.ops.pooling import pooled_shape
    from longctx_adapter.registry import family_for

    qwen3 = real_config("qwen3-vl-8b")
    family = family_for("qwen3_vl")
    adapter = {"pooling": [{"type": "temporal", "kernel": 2}, {"type": "progressive", "group": 1, "strides": [2]}],
               "vision_chunk_frames": 16}
    streamed = estimate_memory(qwen3, 256, adapter, device="cuda", streamed=True, text_tokens=34)
    one_shot = estimate_memory(qwen3, 256, adapter, device="cuda", text_tokens=34)
    v = qwen3.vision_config
    side = family.frame_size[0] // v.patch_size // v.spatial_merge_size
    blocks = pooled_shape(256 // v.temporal_patch_size, side, side, adapter["pooling"]).frames
    assert blocks < 256 // v.temporal_patch_size  # frames merged: their blocks' text is gone
    assert streamed["seq_len"] == one_shot["seq_len"] == 34 + streamed["visual_tokens_after"] + family.marker_tokens(blocks)
    assert streamed["pixels_bytes"] < one_shot["pixels_bytes"] and streamed["peak_bytes"] < one_shot["peak_bytes"]
    chosen, _ = plan(qwen3, 2048, "24GB", device="cuda")
    assert chosen.streamed and chosen.adapter_config["vision_chunk_frames"] is not None
