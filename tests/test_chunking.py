"""Memory-lean options: frame-chunked vision encoding (vision_chunk_frames) and last_logits_only.

Chunked encoding must give exactly the unchunked result: tiny fp32 models, batch 2 (left padded), forward logits and
generate, frame-local pooling (pooled chunk by chunk) and non-local pooling (pooled after concatenation)."""

from __future__ import annotations

import pytest
import torch

from longctx_adapter import AdapterConfig, AdapterError, apply_adapter
from longctx_adapter.hooks.chunking import ChunkedSegment, _chunks, chunk_plan, encode_segments
from longctx_adapter.ops.pooling import normalize_pooling, pool_video
from longctx_adapter.testing.tiny import hand_inputs, tiny_model
from longctx_adapter.testing.tiny_qwen import qwen_hand_inputs, qwen_tiny_model

LLAVA_CASES = {
    # (pooling, chunk sizes): frame-local at some chunk sizes, pooled after concatenation at others
    "llava_onevision": (
        [
            {"type": "progressive", "group": 4, "strides": [2, 7]},
            [{"type": "temporal", "kernel": 2, "stride": 2}, {"type": "progressive", "group": 2, "strides": [1, 2]}],
            {"type": "temporal", "kernel": 3, "stride": 2},
        ],
        [3, 4],
    ),
    "llava_next_video": ([{"type": "progressive", "group": 4, "strides": [1, 3]}], [4]),
}


@pytest.fixture(scope="module")
def llava_models():
    return {name: tiny_model(name) for name in LLAVA_CASES}


def _run(model, config, inputs, generate=True):
    with apply_adapter(model, config) as handle, torch.inference_mode():
        logits = model(**inputs).logits
        stats = handle.last_stats
        sequences = model.generate(**inputs, max_new_tokens=3, do_sample=False) if generate else torch.zeros(0)
    return logits, stats, sequences


@pytest.mark.parametrize("model_type", sorted(LLAVA_CASES))
def test_chunked_equals_unchunked_llava(llava_models, model_type):
    model = llava_models[model_type]
    poolings, chunks = LLAVA_CASES[model_type]
    inputs = hand_inputs(model_type, frames=10, batch=2)
    for pooling in poolings:
        ref = _run(model, AdapterConfig(pooling=pooling), inputs)
        for chunk in chunks:
            got = _run(model, AdapterConfig(pooling=pooling, vision_chunk_frames=chunk), inputs)
            assert torch.equal(ref[0], got[0]), (pooling, chunk)  # bit-identical logits (fp32, CPU)
            assert ref[1] == got[1]
            assert torch.equal(ref[2], got[2])


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_chunked_equals_unchunked_qwen(model_type):
    model = qwen_tiny_model(model_type)
    inputs = qwen_hand_inputs(model_type, frames=12, batch=2, frame_counts=[12, 8])
    # (temporal merges frames: on Qwen3-VL that deletes blocks of text, chunked or not)
    poolings = [{"type": "progressive", "group": 2, "strides": [1, 2]}, {"type": "temporal", "kernel": 2, "stride": 2}]
    # chunks of 1 or 3 grid frames (2, 6 frames) pool after concatenation; 2 and 4 grid frames (4, 8) chunk by chunk
    for pooling in poolings:
        ref = _run(model, AdapterConfig(pooling=pooling), inputs)
        for chunk in (2, 4, 6, 8):
            assert chunk_plan(normalize_pooling(pooling), chunk // 2)[0] == (chunk in (4, 8))
            got = _run(model, AdapterConfig(pooling=pooling, vision_chunk_frames=chunk), inputs, generate=chunk <= 4)
            assert torch.equal(ref[0], got[0]), (pooling, chunk)
            assert ref[1] == got[1]
            assert got[2].numel() == 0 or torch.equal(ref[2], got[2])
    with pytest.raises(AdapterError, match="temporal patch size"):
        _run(model, AdapterConfig(pooling=poolings[0], vision_chunk_frames=3), inputs)


def test_frame_local_chunks_keep_only_pooled_tokens(llava_models):
    """Frame-local stages give ChunkedSegments (pooled per chunk, meta-device shape grid); others a concatenated grid."""
    model = llava_models["llava_onevision"]
    inputs = hand_inputs("llava_onevision", frames=8)
    family = __import__("longctx_adapter.registry", fromlist=["family_for"]).family_for("llava_onevision")
    kwargs = {"pixel_values_videos": inputs["pixel_values_videos"]}
    local = AdapterConfig(pooling={"type": "progressive", "group": 4, "strides": [2, 7]}, vision_chunk_frames=4)
    with torch.inference_mode():
        (seg,), template = encode_segments(family, model, kwargs, [0], local)
    assert isinstance(seg, ChunkedSegment) and seg.grid.device.type == "meta"
    assert tuple(seg.grid.shape[:3]) == (8, 7, 7) and seg.pooled.num_tokens == 2 * (16 + 3 * 1)
    assert set(template.keys()) == {"pooler_output"}  # no vision hidden states kept through prefill
    other = AdapterConfig(pooling={"type": "adaptive3d", "output": [2, 2, 2]}, vision_chunk_frames=4)
    with torch.inference_mode():
        (seg,), _ = encode_segments(family, model, kwargs, [0], other)
    assert not isinstance(seg, ChunkedSegment) and tuple(seg.grid.shape[:3]) == (8, 7, 7)


def test_qwen3_frame_local_chunks_pool_deepstack_features_like_the_main_grid():
    """Frame-local chunks on Qwen3-VL: every DeepStack level pooled chunk by chunk equals pooling it whole."""
    model = qwen_tiny_model("qwen3_vl")
    inputs = qwen_hand_inputs("qwen3_vl", frames=12)
    family = __import__("longctx_adapter.registry", fromlist=["family_for"]).family_for("qwen3_vl")
    kwargs = {k: inputs[k] for k in ("pixel_values_videos", "video_grid_thw")}
    pooling = {"type": "progressive", "group": 2, "strides": [1, 2]}
    with torch.inference_mode():
        (whole,), _ = encode_segments(family, model, kwargs, [0], AdapterConfig(pooling=pooling))
        (seg,), template = encode_segments(
            family, model, kwargs, [0], AdapterConfig(pooling=pooling, vision_chunk_frames=4)
        )
    assert isinstance(seg, ChunkedSegment) and tuple(seg.grid.shape[:3]) == tuple(whole.grid.shape[:3])
    assert len(whole.side_grids) >= 1 and len(seg.side_pooled) == len(whole.side_grids)
    stages = normalize_pooling(pooling)
    for level, side in enumerate(whole.side_grids):
        torch.testing.assert_close(seg.side_pooled[level], pool_video(side, stages).flatten(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seg.pooled.flatten(), pool_video(whole.grid, stages).flatten(), rtol=1e-5, atol=1e-6)
    assert set(template.keys()) == {"pooler_output", "deepstack_features"}


def test_chunk_plan_and_bounds():
    prog = normalize_pooling({"type": "progressive", "group": 4, "strides": [2, 8]})
    assert chunk_plan(prog, 8)[0] and not chunk_plan(prog, 6)[0]
    temporal = normalize_pooling([{"type": "temporal", "kernel": 2, "stride": 2}, prog[0]])
    assert chunk_plan(temporal, 8) == (True, 2, "") and not chunk_plan(temporal, 4)[0]
    assert not chunk_plan(normalize_pooling({"type": "temporal", "kernel": 3, "stride": 2}), 4)[0]
    assert chunk_plan(normalize_pooling({"type": "conv3d", "kernel": [2, 3, 3]}), 4)[0]
    assert not chunk_plan(normalize_pooling({"type": "conv3d", "output": [2, 3, 3]}), 4)[0]
    assert not chunk_plan(normalize_pooling({"type": "adaptive3d", "output": [2, 3, 3]}), 4)[0]
    assert _chunks(10, 4, 1) == [(0, 4), (4, 8), (8, 10)]
    assert _chunks(10, 4, 4) == [(0, 4), (4, 10)]  # a tail shorter than the temporal window joins the chunk before
    assert _chunks(3, 8, 2) == [(0, 3)]


def test_memory_options_validation_and_round_trip():
    pooling = {"type": "progressive", "group": 4, "strides": [2, 8]}
    config = AdapterConfig(pooling=pooling, vision_chunk_frames=16, last_logits_only=True)
    assert AdapterConfig.from_json(config.to_json()) == config
    assert config.to_dict()["vision_chunk_frames"] == 16 and config.to_dict()["last_logits_only"] is True
    assert AdapterConfig().vision_chunk_frames is None and AdapterConfig().last_logits_only is False
    for bad in (0, -2, 1.5, True, "8"):
        with pytest.raises(AdapterError, match="vision_chunk_frames"):
            AdapterConfig(pooling=pooling, vision_chunk_frames=bad)
    with pytest.raises(AdapterError, match="pooling is off"):
        AdapterConfig(vision_chunk_frames=8)
    with pytest.raises(AdapterError, match="last_logits_only"):
        AdapterConfig(pooling=pooling, last_logits_only=1)


def test_last_logits_only(llava_models):
    model = llava_models["llava_onevision"]
    inputs = hand_inputs("llava_onevision", frames=4, batch=2)
    pooling = {"type": "progressive", "group": 4, "strides": [2, 7]}
    with apply_adapter(model, AdapterConfig(pooling=pooling)), torch.inference_mode():
        full = model(**inputs).logits
    with apply_adapter(model, AdapterConfig(pooling=pooling, last_logits_only=True)), torch.inference_mode():
        last = model(**inputs).logits
        two = model(**inputs, logits_to_keep=2).logits  # the caller asked for more: honoured
    assert last.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(two, full[:, -2:], rtol=1e-5, atol=1e-5)
    # RoPE-only calls (nothing pooled) follow the option too
    rope = {"type": "yarn", "visual_window": 4, "scope": "all"}
    with apply_adapter(model, AdapterConfig(rope=rope)), torch.inference_mode():
        full = model(**inputs).logits
    with apply_adapter(model, AdapterConfig(rope=rope, last_logits_only=True)), torch.inference_mode():
        last = model(**inputs).logits
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)
