"""`longctx-adapter run`: a saved tiny checkpoint answers a question about a video file, streaming, with a report."""

from __future__ import annotations

import io

import pytest
from longctx_adapter.eval.runner import run_question
from longctx_adapter.eval.video import write_video

from longctx_adapter.cli.main import main
from longctx_adapter.testing.tiny import synthetic_video

MODEL_TYPE = "llava_onevision"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", synthetic_video(24, 64, 64, seed=2), fps=8)


def test_run_streams_and_reports(checkpoint, video, capsys):
    argv = ["run", "--model", str(checkpoint), "--video", video, "--question", "what color is the square ?",
            "--frames", "8", "--config", "progressive:2,4,4+yarn-visual@32", "--max-new-tokens", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "answer (LlavaOnevisionForConditionalGeneration, 8 frames):" in out
    assert "frames        : 8 of 24 (0.00-2.88 s, pyav)" in out
    assert "visual tokens : 129 -> 57" in out  # 8 x 16 + 1 stock; (16 + 3 x 4) x 2 + 1 pooled
    assert "rope factor   : 1.781\n" in out  # 57 / 32, printed with 3 decimals
    assert "peak memory   :" in out and "generate time :" in out


def test_run_report_matches_stream_and_stock(checkpoint, video, capsys):
    out = io.StringIO()
    report = run_question(checkpoint, video, "what is it ?", frames=4, config="none", max_new_tokens=3, out=out)
    streamed = capsys.readouterr().out  # TextStreamer writes the answer to stdout as it is generated
    assert report["answer"].strip() and report["answer"].strip() in streamed
    assert report["tokens_before"] == report["tokens_after"] == 4 * 16 + 1 and report["rope_factor"] is None
    assert report["timestamps"] == [0.0, 1.0, 1.875, 2.875]  # frames 0, 8, 15, 23 at 8 fps
    assert "none (stock model)" in out.getvalue()
    by_fps = run_question(checkpoint, video, "what is it ?", fps=2.0, max_frames=3, config="none",
                          max_new_tokens=1, out=io.StringIO())
    assert by_fps["frames"] == 3


def test_run_errors_are_clear(checkpoint, tmp_path, capsys):
    assert main(["run", "--model", str(checkpoint), "--video", str(tmp_path / "none.mp4"), "--question", "q"]) == 2
    assert "video file not found" in capsys.readouterr().err
    assert main(["run", "--model", str(tmp_path / "nope"), "--video", str(tmp_path / "none.mp4"), "--question", "q"])
    # the tiny 7x7 grid cannot take the preset's stride 8: refused with the library's message, before generating
    video = write_video(tmp_path / "v.mp4", synthetic_video(4, 32, 32), fps=4)
    assert main(["run", "--model", str(checkpoint), "--video", video, "--question", "q", "--frames", "4"]) == 2
    assert "stride" in capsys.readouterr().err


def test_run_prefills_long_prompts_in_chunks_with_the_same_answer(checkpoint, video, monkeypatch):
    from longctx_adapter.profiling import planner

    ask = dict(frames=8, config="progressive:2,4,4", max_new_tokens=4)
    short = run_question(checkpoint, video, "what is it ?", out=io.StringIO(), **ask)
    assert short["prefill_chunk_size"] is None  # the prompt fits one chunk of 4096 tokens
    monkeypatch.setattr(planner, "PREFILL_CHUNK", 16)  # the same rule with a chunk shorter than this prompt
    out = io.StringIO()
    chunked = run_question(checkpoint, video, "what is it ?", out=out, **ask)
    assert chunked["prefill_chunk_size"] == 16 and "prefill       : chunks of 16 tokens" in out.getvalue()
    assert chunked["answer"] == short["answer"]
    off = run_question(checkpoint, video, "what is it ?", out=io.StringIO(), prefill_chunk_size="off", **ask)
    assert off["prefill_chunk_size"] is None and off["answer"] == short["answer"]


def test_run_refuses_a_bad_prefill_chunk_size(checkpoint, video, capsys):
    argv = ["run", "--model", str(checkpoint), "--video", video, "--question", "q", "--prefill-chunk-size", "lots"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--prefill-chunk-size must be auto, off or a number" in err and "Traceback" not in err
    assert main([*argv[:-1], "0"]) == 2
    assert "prefill chunk size must be" in capsys.readouterr().err


def test_run_streams_ingestion_when_the_pooling_is_frame_local(checkpoint, video):
    """Streamed ingestion (frames decoded, preprocessed, encoded and pooled 4 at a time) gives the one-shot answer;
    a config that is not frame-local falls back to one-shot and says why."""
    ask = dict(frames=12, max_new_tokens=4,
               config='{"pooling": {"type": "progressive", "group": 2, "strides": [2, 4]}, "vision_chunk_frames": 4}')
    _assert_streamed_run_equals_one_shot(checkpoint, video, 4, ask)
    out = io.StringIO()
    run_question(checkpoint, video, "what is it ?", frames=8, max_new_tokens=1, out=out,
                 config='{"pooling": {"type": "adaptive3d", "output": [2, 3, 3]}, "vision_chunk_frames": 4}')
    assert "ingestion     : one-shot (encode_video pools each chunk of 4 frames on its own" in out.getvalue()


def test_run_streams_qwen3_vl(tmp_path):
    """Qwen3-VL streams too (one timestamped block per frame, frames sized by the whole video): the one-shot answer,
    token counts and timestamps."""
    from longctx_adapter.testing.tiny_qwen import qwen_tiny_model, qwen_tiny_processor

    folder = tmp_path / "qwen3"
    qwen_tiny_model("qwen3_vl").save_pretrained(folder)
    qwen_tiny_processor("qwen3_vl").save_pretrained(folder)
    clip = write_video(tmp_path / "clip.mp4", synthetic_video(19, 32, 32, seed=3), fps=4)
    pooling = '[{"type": "temporal", "kernel": 2}, {"type": "progressive", "group": 2, "strides": [1, 2]}]'
    ask = dict(frames=19, max_new_tokens=4, config=f'{{"pooling": {pooling}, "vision_chunk_frames": 8}}')
    _assert_streamed_run_equals_one_shot(folder, clip, 8, ask)


def _assert_streamed_run_equals_one_shot(checkpoint, video, chunk: int, ask: dict) -> None:
    """`run` streams at `chunk` frames, says so, and answers as its one-shot run does (same counts, timestamps)."""
    out = io.StringIO()
    streamed = run_question(checkpoint, video, "what is it ?", out=out, **ask)
    assert streamed["streamed_chunk_frames"] == chunk
    assert f"ingestion     : streamed, {chunk} frames at a time" in out.getvalue()
    one_shot = run_question(checkpoint, video, "what is it ?", out=io.StringIO(), stream=False, **ask)
    assert one_shot["streamed_chunk_frames"] is None
    for key in ("answer", "tokens_before", "tokens_after", "timestamps"):
        assert streamed[key] == one_shot[key], key
