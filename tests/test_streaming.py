"""Streaming ingestion (encode_video): equal to the one-shot path on every family it supports, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longctx_adapter import AdapterError, apply_adapter, encode_video
from longctx_adapter.registry import family_for
from longctx_adapter.testing.tiny import synthetic_video, tiny_model, tiny_processor
from longctx_adapter.testing.tiny_qwen import qwen_tiny_model, qwen_tiny_processor

PROMPT = "user <video> what color is the frame assistant"
QWEN3_PROMPT = "user <|vision_start|><video><|vision_end|> what color is the frame assistant"  # as its template writes
FPS = 2.0
# family -> (pooling, chunk_frames, frames, rope visual window in tokens): frames leave a short last chunk
CASES = {
    "llava_onevision": ({"type": "progressive", "group": 2, "strides": [2, 4]}, 4, 10, 64),
    "llava_next_video": ({"type": "progressive", "group": 2, "strides": [1, 2]}, 4, 10, 64),
    "qwen2_vl": ({"type": "progressive", "group": 2, "strides": [1, 2]}, 4, 12, 4),
    "qwen2_5_vl": ([{"type": "temporal", "kernel": 2}, {"type": "progressive", "group": 1, "strides": [2]}], 8, 14, 4),  # last chunk joins
    # frame blocks merged (temporal) and resized (progressive); a short odd last chunk (3 frames)
    "qwen3_vl": ([{"type": "temporal", "kernel": 2}, {"type": "progressive", "group": 2, "strides": [1, 2]}], 8, 19, 4),
}


def _model_and_processor(model_type):
    if model_type.startswith("qwen"):
        return qwen_tiny_model(model_type), qwen_tiny_processor(model_type)
    return tiny_model(model_type), tiny_processor(model_type)


def _prompt(model_type):
    return QWEN3_PROMPT if model_type == "qwen3_vl" else PROMPT


def _video(model_type, frames):
    side = 32 if model_type.startswith("qwen") else 64
    return synthetic_video(frames, side, side, seed=3)


def _processor_kwargs(model_type, frames):
    family = family_for(model_type)
    return family.processor_kwargs(frames, None, FPS) if family.processor_kwargs is not None else {}


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_streamed_equals_one_shot(model_type):
    pooling, chunk, frames, window = CASES[model_type]
    model, proc = _model_and_processor(model_type)
    video = _video(model_type, frames)
    config = {"pooling": pooling, "vision_chunk_frames": chunk, "rope": {"type": "yarn", "visual_window": window}}
    handle = apply_adapter(model, config)
    prompt = _prompt(model_type)
    one_shot = proc(text=[prompt], videos=[video], return_tensors="pt", **_processor_kwargs(model_type, frames))
    with torch.no_grad():
        ref_logits = model(**one_shot).logits
        ref_stats = handle.last_stats
        ref_tokens = model.generate(**one_shot, max_new_tokens=4, do_sample=False)

    pieces = [video[i : i + 3] for i in range(0, frames, 3)]  # cut unlike the chunks: re-chunked inside
    encoded = encode_video(model, pieces, processor=proc, fps=FPS)
    inputs = encoded.inputs(prompt)
    for key, value in one_shot.items():  # the call equals the processor's on the whole video, pixels aside
        if key != "pixel_values_videos":
            assert torch.equal(inputs[key], value), key
    assert "pixel_values_videos" not in inputs
    with torch.no_grad():
        logits = model(**inputs).logits
        stats = handle.last_stats
        tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)  # chunking.py's guarantee
    assert stats == ref_stats and stats[0]["rope_factor"] is not None and stats[0]["rope_factor"] > 1
    assert torch.equal(tokens, ref_tokens)
    assert encoded.frames == frames and encoded.num_tokens == stats[0]["tokens_after"]
    assert encoded.stock_tokens == stats[0]["tokens_before"]
    if model_type == "qwen3_vl":  # frames merged: their blocks (timestamp text and markers) left the prompt
        assert stats[0]["frames_after"] < one_shot["video_grid_thw"][0, 0]


def test_video_file_and_whole_array(tmp_path):
    """A file path is decoded a chunk at a time; a (T, H, W, 3) array is cut into chunks: both equal one-shot."""
    from longctx_adapter.eval.video import load_video, write_video

    model, proc = _model_and_processor("llava_onevision")
    path = write_video(tmp_path / "clip.mp4", _video("llava_onevision", 12), fps=4.0)
    apply_adapter(model, {"pooling": {"type": "progressive", "group": 2, "strides": [2, 4]}, "vision_chunk_frames": 4})
    clip = load_video(path, 6)
    one_shot = proc(text=[PROMPT], videos=[clip.frames], return_tensors="pt")
    with torch.no_grad():
        ref = model(**one_shot).logits
        from_file = model(**encode_video(model, path, processor=proc, num_frames=6).inputs(PROMPT)).logits
        from_array = model(**encode_video(model, clip.frames, processor=proc).inputs(PROMPT)).logits
    torch.testing.assert_close(from_file, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_array, ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def onevision():
    return _model_and_processor("llava_onevision")


def _refuses(match, fn, *args, **kwargs):
    with pytest.raises(AdapterError, match=match):
        fn(*args, **kwargs)


def test_refusals(onevision):
    model, proc = onevision
    video = _video("llava_onevision", 4)
    _refuses("needs an adapted model", encode_video, model, video, processor=proc)
    with apply_adapter(model, {"pooling": {"type": "adaptive3d", "output": [2, 3, 3]}, "vision_chunk_frames": 4}):
        _refuses("not frame-local", encode_video, model, video, processor=proc)
    with apply_adapter(model, {"pooling": {"type": "progressive", "group": 4, "strides": [2, 4]}}):
        _refuses("needs a chunk size", encode_video, model, video, processor=proc)
        _refuses("not frame-local at that chunk size", encode_video, model, video, processor=proc, chunk_frames=2)
        _refuses("got no frames", encode_video, model, iter([]), processor=proc, chunk_frames=4)
        _refuses("needs the model's processor", encode_video, model, video, chunk_frames=4)
        _refuses(r"\(H, W, 3\) frames", encode_video, model, [np.zeros((2, 2))], processor=proc, chunk_frames=4)
        encoded = encode_video(model, video, processor=proc, chunk_frames=4)
        inputs = encoded.inputs(PROMPT)
        pixels = proc(text=[PROMPT], videos=[video], return_tensors="pt")["pixel_values_videos"]
        _refuses("not both", model, **inputs, pixel_values_videos=pixels)
        _refuses("exactly once", encoded.inputs, "user <video> and <video> assistant")
        short = dict(inputs, input_ids=inputs["input_ids"][:, 3:], attention_mask=inputs["attention_mask"][:, 3:])
        _refuses("placeholder tokens", model, **short)  # the run no longer has the video's stock length
    with apply_adapter(model, {"pooling": {"type": "progressive", "group": 2, "strides": [2, 4]}}):
        _refuses("other stages", model, **inputs)  # encoded with group 4, generating with group 2
    with apply_adapter(model, {"rope": {"type": "yarn", "visual_window": 64}}):
        _refuses("pools nothing", encode_video, model, video, processor=proc, chunk_frames=4)
    other, _ = _model_and_processor("llava_onevision")
    with apply_adapter(other, {"pooling": {"type": "progressive", "group": 4, "strides": [2, 4]}}):
        _refuses("another model", other, **inputs)


def test_families_without_streaming():
    model = tiny_model("llava")
    with apply_adapter(model, {"pooling": {"type": "progressive", "group": 2, "strides": [1, 2]}}):
        video = np.zeros((4, 32, 32, 3), np.uint8)
        _refuses("separate images", encode_video, model, video, processor=None, chunk_frames=4)


QWEN3_POOLING = {"type": "progressive", "group": 2, "strides": [1, 2]}
# (video processor size, frame side, frames): the whole video's pixel budget sizes every frame, and a chunk of 4
# frames alone would get another size: the max budget binds for the whole video only (48 -> 32 px), or the min
# budget binds for a chunk only (a chunk would grow 32 -> 48 px)
BUDGETS = {
    "max_binds_whole_video": ({"shortest_edge": 2 * 1024, "longest_edge": 16 * 1024}, 48, 16),
    "min_binds_chunk": ({"shortest_edge": 8 * 1024, "longest_edge": 64 * 1024}, 32, 15),
}


def _qwen3_with_size(size):
    model, proc = _model_and_processor("qwen3_vl")
    proc.video_processor.size = size
    return model, proc


@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_qwen3_chunks_get_the_whole_videos_frame_size(budget):
    """Qwen3-VL's video processor sizes frames by a pixel budget over all frames; every streamed chunk gets the whole
    video's size, so pixels equal the one-shot call's bit for bit and logits equal one-shot's."""
    from longctx_adapter.streaming import _WholeVideoSize

    size, side, frames = BUDGETS[budget]
    model, proc = _qwen3_with_size(size)
    vp = proc.video_processor
    video = synthetic_video(frames, side, side, seed=5)
    kwargs = _processor_kwargs("qwen3_vl", frames)
    one_shot = proc(text=[QWEN3_PROMPT], videos=[video], return_tensors="pt", **kwargs)
    alone = vp(videos=[video[:4]], return_tensors="pt", **_processor_kwargs("qwen3_vl", 4))["video_grid_thw"]
    assert alone[0, 1:].tolist() != one_shot["video_grid_thw"][0, 1:].tolist()  # the budget does bind

    sizer = _WholeVideoSize(vp, frames)
    pixels = []
    for start in range(0, frames, 4):
        chunk, size_kwargs = sizer(video[start : start + 4])
        count = min(4, frames - start)
        out = vp(videos=[chunk], return_tensors="pt", **size_kwargs, **_processor_kwargs("qwen3_vl", count))
        pixels.append(out["pixel_values_videos"])
    assert torch.equal(torch.cat(pixels), one_shot["pixel_values_videos"])

    config = {"pooling": QWEN3_POOLING, "vision_chunk_frames": 4}
    apply_adapter(model, config)
    pieces = (video[i : i + 3] for i in range(0, frames, 3))  # a generator: the frame count is given
    inputs = encode_video(model, pieces, processor=proc, fps=FPS, total_frames=frames).inputs(QWEN3_PROMPT)
    for key, value in one_shot.items():
        if key != "pixel_values_videos":
            assert torch.equal(inputs[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, model(**one_shot).logits, rtol=1e-5, atol=1e-5)


def test_qwen3_refusals():
    model, proc = _qwen3_with_size(BUDGETS["max_binds_whole_video"][0])
    video = synthetic_video(8, 48, 48, seed=5)
    with apply_adapter(model, {"pooling": QWEN3_POOLING, "vision_chunk_frames": 4}):
        _refuses("pass total_frames=", encode_video, model, iter([video]), processor=proc, fps=FPS)
        _refuses("pass the true count", encode_video, model, iter([video]), processor=proc, fps=FPS, total_frames=12)
        _refuses("drop total_frames", encode_video, model, video, processor=proc, fps=FPS, total_frames=12)
        _refuses("share one size", encode_video, model, [video[:4], video[4:, :32, :32]], processor=proc, fps=FPS)
        encoded = encode_video(model, video, processor=proc, fps=FPS)
        _refuses("exactly once", encoded.inputs, "user <video> and <video> assistant")
        proc.video_processor.cap_pixels_per_frame = True  # a per-frame cap: refused as for every family
        _refuses("cap_pixels_per_frame", encode_video, model, video, processor=proc, fps=FPS)


def test_qwen_chunk_must_hold_whole_temporal_patches_and_frame_sizes_must_not_depend_on_the_video():
    model, proc = _model_and_processor("qwen2_vl")
    with apply_adapter(model, {"pooling": {"type": "progressive", "group": 1, "strides": [2]}}):
        _refuses("temporal patch size", encode_video, model, _video("qwen2_vl", 4), processor=proc, chunk_frames=3)
        proc.video_processor.cap_pixels_per_frame = True  # a per-video pixel budget: a chunk cannot honour it
        _refuses("cap_pixels_per_frame", encode_video, model, _video("qwen2_vl", 4), processor=proc, chunk_frames=2)


def test_stream_video_decodes_what_load_video_samples(tmp_path):
    from longctx_adapter.eval.video import load_video, stream_video, write_video

    path = write_video(tmp_path / "clip.mp4", _video("llava_onevision", 10), fps=5.0)
    stream = stream_video(path, 4, 7)
    chunks = list(stream)
    clip = load_video(path, 7)
    assert [len(c) for c in chunks] == [4, 3]
    assert np.array_equal(np.concatenate(chunks), clip.frames)
    assert np.array_equal(stream.timestamps, clip.timestamps) and stream.total_frames == clip.total_frames == 10


def test_features_off_after_remove(onevision):
    """Once the adapter is removed the stock model does not know encoded_video and says so (no silent stock run)."""
    model, proc = onevision
    handle = apply_adapter(model, {"pooling": {"type": "progressive", "group": 4, "strides": [2, 4]}})
    inputs = encode_video(model, _video("llava_onevision", 4), processor=proc, chunk_frames=4).inputs(PROMPT)
    handle.remove()
    with pytest.raises((ValueError, TypeError), match="encoded_video"):
        model.generate(**inputs, max_new_tokens=2)
