"""longctx_adapter.eval.video: decoding, sampling, clear errors, and processor-equivalent model inputs."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

import av
import numpy as np
import pytest
import torch
from longctx_adapter.eval.video import (
    VIDEO_QUALITIES,
    FrameCountWarning,
    VideoDecodeError,
    build_prompt,
    load_processor,
    load_video,
    sample_indices,
    video_inputs,
    write_video,
)

from longctx_adapter import AdapterError
from longctx_adapter.testing.tiny import synthetic_video, tiny_processor, tiny_tokenizer

FRAMES = 20
FPS = 10


@pytest.fixture(scope="module")
def source():
    return synthetic_video(FRAMES, 48, 64, seed=3)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory, source):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", source, fps=FPS)


@pytest.fixture(scope="module")
def faststart_mp4(tmp_path_factory, source):
    """moov atom first, as streaming-ready files are: a truncated copy still opens, with frames missing."""
    path = str(tmp_path_factory.mktemp("video") / "fast.mp4")
    with av.open(path, "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in source:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _nearest(source, frame) -> int:
    return int(np.abs(source.astype(int) - frame.astype(int)).mean(axis=(1, 2, 3)).argmin())


# ----------------------------------------------------------------------------------------------- sampling


def test_sample_indices_rules():
    assert sample_indices(20, 5).tolist() == [0, 5, 10, 14, 19]  # first and last included
    with pytest.warns(FrameCountWarning, match="asked for 6 frames but the video has 3; sampling all 3"):
        assert sample_indices(3, 6).tolist() == [0, 1, 2]  # short video: every frame once, never repeated
    times = np.arange(20) / 10.0
    assert sample_indices(20, fps=2, times=times).tolist() == [0, 5, 10, 15]
    assert sample_indices(20, fps=100, times=times, max_frames=4).tolist() == [0, 6, 13, 19]  # the cap: no warning
    with pytest.warns(FrameCountWarning, match=r"asked for 100 fps but the video has 20 frames over 1.9 s \(about "
                      r"10 fps\); sampling every frame once \(20\)"):
        assert sample_indices(20, fps=100, times=times, max_frames=40).tolist() == list(range(20))
    with pytest.warns(FrameCountWarning, match="sampling every frame once"):  # arithmetic: no 1e12-long list
        assert sample_indices(20, fps=1e12, times=times).tolist() == list(range(20))
    with pytest.warns(FrameCountWarning, match="asked for 100000 frames"):
        assert sample_indices(20, 100_000).tolist() == list(range(20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exactly the video's frame count or rate: no warning
        assert sample_indices(20, 20).tolist() == list(range(20))
        assert sample_indices(20, fps=100, times=times, max_frames=4).tolist() == [0, 6, 13, 19]
        assert sample_indices(20, fps=10, times=times).tolist() == list(range(20))
    assert sample_indices(7).tolist() == list(range(7))
    with pytest.raises(AdapterError, match="not both"):
        sample_indices(20, 4, fps=1.0)
    with pytest.raises(AdapterError, match="positive"):
        sample_indices(20, 0)


def test_load_video_uniform_and_fps(mp4, source):
    clip = load_video(mp4, 5)
    assert clip.frames.shape == (5, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.indices.tolist() == [0, 5, 10, 14, 19]
    assert clip.total_frames == FRAMES and clip.fps == pytest.approx(FPS)
    np.testing.assert_allclose(clip.timestamps, clip.indices / FPS, atol=1e-6)
    # each decoded frame is exactly the source frame it claims to be (write_video is lossless)
    np.testing.assert_array_equal(clip.frames, source[clip.indices])
    by_rate = load_video(mp4, fps=2)
    assert by_rate.indices.tolist() == [0, 5, 10, 15]
    capped = load_video(mp4, fps=100, max_frames=3)
    assert capped.indices.tolist() == [0, 10, 19]
    with pytest.warns(FrameCountWarning, match=f"asked for 30 frames but the video has {FRAMES}"):
        more = load_video(mp4, 30)
    assert more.indices.tolist() == list(range(FRAMES)) and more.total_frames == FRAMES
    with pytest.warns(FrameCountWarning, match=r"the 0.5-1 s span of the video has 6"):
        assert load_video(mp4, 9, start=0.5, end=1.0).indices.tolist() == [5, 6, 7, 8, 9, 10]
    window = load_video(mp4, 3, start=0.5, end=1.0)
    assert window.indices.tolist() == [5, 7, 10]  # 5 + rint([0, 2.5, 5]) (half to even)


@pytest.mark.parametrize("kind", ["missing", "empty", "directory", "garbage", "truncated_head", "truncated_tail"])
def test_bad_files_give_clear_errors(tmp_path, mp4, faststart_mp4, kind):
    path = tmp_path / "bad.mp4"
    if kind == "missing":
        match = "not found"
    elif kind == "empty":
        path.write_bytes(b"")
        match = "empty"
    elif kind == "directory":
        path.mkdir()
        match = "not a regular file"
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        match = "cannot open"
    elif kind == "truncated_head":  # moov at the end: the container index is gone
        data = open(mp4, "rb").read()
        path.write_bytes(data[: len(data) // 2])
        match = "cannot open"
    else:  # moov first: the index survives, the frames do not
        data = open(faststart_mp4, "rb").read()
        path.write_bytes(data[: int(len(data) * 0.8)])
        match = "truncated"
    with pytest.raises(VideoDecodeError, match=match) as info:
        load_video(path, 4)
    assert isinstance(info.value, AdapterError) and isinstance(info.value, ValueError)


def test_backends(mp4):
    with pytest.raises(AdapterError, match="unknown video backend"):
        load_video(mp4, 2, backend="opencv")
    for name in ("decord", "torchcodec"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(AdapterError, match="not installed"):
                load_video(mp4, 2, backend=name)
        else:  # installed: the same frames as PyAV (all three use FFmpeg's mpeg4 decoder), times and rate
            clip, ref = load_video(mp4, 4, backend=name), load_video(mp4, 4)
            assert clip.indices.tolist() == ref.indices.tolist() and clip.total_frames == ref.total_frames
            np.testing.assert_allclose(clip.timestamps, ref.timestamps, atol=1e-6)
            assert clip.fps == pytest.approx(ref.fps)
            diff = np.abs(clip.frames.astype(np.int16) - ref.frames.astype(np.int16))
            assert clip.frames.shape == ref.frames.shape and diff.mean() < 2.0  # colour conversion may round apart


def test_torchcodec_without_ffmpeg_is_a_backend_error_not_a_bad_file(mp4, monkeypatch):
    """torchcodec imports without FFmpeg but fails on first use; that must not read as a corrupt video."""
    import sys
    import types

    def unusable(path):
        raise RuntimeError("Could not load libtorchcodec. Likely causes: FFmpeg is not properly installed")

    decoders = types.ModuleType("torchcodec.decoders")
    decoders.VideoDecoder = unusable
    monkeypatch.setitem(sys.modules, "torchcodec", types.ModuleType("torchcodec"))
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", decoders)
    with pytest.raises(AdapterError, match="cannot load its FFmpeg") as info:
        load_video(mp4, 2, backend="torchcodec")
    assert not isinstance(info.value, VideoDecodeError)


# ----------------------------------------------------------------------------------------------- inputs


def test_load_processor_reads_a_saved_checkpoint(tmp_path, mp4):
    """The processor saved beside a checkpoint builds exactly the inputs of the one it was saved from, and the
    stock model accepts them."""
    from longctx_adapter.testing.tiny import tiny_model

    model_type = "llava_onevision"
    model = tiny_model(model_type)
    model.save_pretrained(tmp_path)
    original = tiny_processor(model_type)
    original.save_pretrained(tmp_path)
    clip = load_video(mp4, 4)
    inputs = video_inputs(load_processor(tmp_path), clip, "what is it ?", model=model)
    expected = video_inputs(original, clip, "what is it ?", model=model)
    assert sorted(inputs.keys()) == sorted(expected.keys())
    for key in expected:
        assert torch.equal(inputs[key], expected[key]), key
    with torch.inference_mode():
        out = model(**inputs, logits_to_keep=1)
    assert out.logits.shape[:2] == (1, 1)


def test_load_processor_errors_name_the_fix(tmp_path, monkeypatch):
    import importlib.util

    import transformers

    from longctx_adapter.testing.tiny_qwen import qwen_tiny_model

    qwen_tiny_model("qwen2_vl").save_pretrained(tmp_path)  # a Qwen checkpoint folder without processor files
    with pytest.raises(AdapterError, match="cannot load the processor of") as err:
        load_processor(tmp_path)
    assert "has no processor files" in str(err.value) and "processor.save_pretrained" in str(err.value)
    assert "torchvision" not in str(err.value).lower()

    def no_torchvision(*args, **kwargs):
        raise ImportError("LlavaOnevisionVideoProcessor requires the Torchvision library")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", no_torchvision)
    with pytest.raises(AdapterError, match="Torchvision library") as err:  # installed: do not say install it
        load_processor(tmp_path)
    assert "install" not in str(err.value) and "has no processor files" in str(err.value)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real_find_spec(name, *a)
    )
    with pytest.raises(
        AdapterError, match=r"torchvision is not installed: install the video extra .*longctx-adapter\[video\]"
    ):
        load_processor(tmp_path)


def test_build_prompt_layouts():
    proc = tiny_processor("llava")
    assert build_prompt("q ?", "llava", 3, processor=proc) == "user <image><image><image> q ? assistant"
    assert build_prompt("q ?", "llava_onevision", 3, processor=tiny_processor("llava_onevision")) == (
        "user <video> q ? assistant"
    )
    assert build_prompt("q", "qwen2_vl", 4) == "USER: <|vision_start|><|video_pad|><|vision_end|>\nq ASSISTANT:"


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(AdapterError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(AdapterError, match="unknown video quality 'best'"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), dtype=np.uint8), quality="best")
    assert not os.path.exists(tmp_path / "x.mp4")


@pytest.mark.parametrize("quality", sorted(VIDEO_QUALITIES))
@pytest.mark.parametrize("fps", [1.0, 30.0])
def test_written_videos_decode_to_the_frames_within_the_stated_error(tmp_path, quality, fps):
    """Noise frames (the hardest case for a codec) of an odd size: every pixel decodes within the quality's stated
    bound (lossless: exactly), at any fps; a one-frame needle does not ghost into its neighbours."""
    frames = np.random.default_rng(5).integers(0, 256, (6, 33, 47, 3), dtype=np.uint8)
    frames[3] = 0
    frames[3, 10:20, 10:20] = (255, 0, 0)  # a needle in one frame
    path = write_video(tmp_path / "n.mp4", frames, fps=fps, quality=quality)
    decoded = load_video(path).frames
    assert decoded.shape == frames.shape
    error = np.abs(decoded.astype(int) - frames.astype(int))
    assert error.max() <= VIDEO_QUALITIES[quality][3]
    if quality == "lossless":
        np.testing.assert_array_equal(decoded, frames)


def test_missing_pyav_names_the_package_and_the_extra(tmp_path, mp4, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(AdapterError, match=r"pip install av, or the video extra: pip install 'longctx-adapter\[video\]'"):
        load_video(mp4, 2)
    with pytest.raises(AdapterError, match=r"pip install av\b"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), dtype=np.uint8))


QWEN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} {% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><video><|vision_end|>"
    "{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %} assistant{% endif %}"
)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_processor_inputs_run_stock_and_adapted(model_type):
    """Qwen-family inputs come from the real HF processor (built here on the tiny tokenizer and 4-px patches);
    the frames' sampling rate reaches it (Qwen2.5's second_per_grid_ts, Qwen3's timestamp text)."""
    import transformers

    from longctx_adapter import apply_adapter
    from longctx_adapter.testing.tiny_qwen import qwen_tiny_model

    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>"]})
    kw = dict(patch_size=4, merge_size=2, temporal_patch_size=2)
    size = {"shortest_edge": 32 * 32, "longest_edge": 32 * 32}
    names = {"qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
             "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
             "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor")}[model_type]
    processor = getattr(transformers, names[0])(
        image_processor=transformers.Qwen2VLImageProcessor(**kw), tokenizer=tok,
        video_processor=getattr(transformers, names[1])(**kw, size=size), chat_template=QWEN_TEMPLATE)
    frames = synthetic_video(4, 32, 32, seed=1)
    inputs = video_inputs(processor, frames, "what color ?", model_type=model_type, timestamps=np.arange(4) / 2.0)
    assert inputs["video_grid_thw"][0, 0] == 2  # 4 frames / temporal patch 2
    if model_type == "qwen2_5_vl":
        assert inputs["second_per_grid_ts"].tolist() == [1.0]  # temporal patch 2 / 2 fps
    model = qwen_tiny_model(model_type)
    with torch.inference_mode():
        stock = model(**inputs, logits_to_keep=1).logits
        with apply_adapter(model, pooling={"type": "progressive", "group": 2, "strides": [1, 2]}) as handle:
            adapted = model(**inputs, logits_to_keep=1).logits
    assert handle.last_stats[0]["tokens_after"] < handle.last_stats[0]["tokens_before"]
    assert stock.shape == adapted.shape and torch.isfinite(adapted).all()
    # merging the two temporal patches: on Qwen3-VL the second block (timestamp text through <|vision_end|>) goes
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        with torch.inference_mode(), apply_adapter(model, pooling={"type": "temporal", "kernel": 2, "stride": 2}):
            merged = model(**inputs, logits_to_keep=1).logits
    finally:
        hook.remove()
    ids = inputs["input_ids"][0]
    per_frame = int((ids == model.config.video_token_id).sum()) // 2
    removed = per_frame  # one frame's tokens
    if model_type == "qwen3_vl":
        ends = (ids == model.config.vision_end_token_id).nonzero().squeeze(1).tolist()
        assert len(ends) == 3  # two blocks and the processor's outer <|vision_end|>
        removed = ends[1] - ends[0]  # "<1.2 seconds>", <|vision_start|>, tokens, <|vision_end|>
        assert removed > per_frame + 2
    assert seen == [ids.shape[0] - removed] and torch.isfinite(merged).all()
