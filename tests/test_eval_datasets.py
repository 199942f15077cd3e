"""Local benchmark loaders on tiny fixture datasets written in each benchmark's distributed format."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from longctx_adapter.eval.datasets import (
    EvalItem,
    format_question,
    load_dataset,
    load_jsonl_dataset,
    load_mlvu,
    load_mvbench,
    load_videomme,
    write_jsonl_dataset,
)
from longctx_adapter.eval.video import VideoDecodeError, write_video
from PIL import Image

from longctx_adapter import AdapterError
from longctx_adapter.testing.tiny import synthetic_video


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "base.mp4", synthetic_video(12, 32, 32, seed=1), fps=4)


def _copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(open(src, "rb").read())


VIDEOMME_ROWS = [
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
     "task_type": "Counting Problem", "question": "How many squares appear?",
     "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."], "answer": "C"},
    {"video_id": "002", "duration": "long", "domain": "Sports", "sub_category": "Football", "url": "",
     "videoID": "zzLong00001", "question_id": "002-1", "task_type": "Action Reasoning", "question": "Who wins?",
     "options": ["A. Red.", "B. Blue.", "C. Nobody.", "D. Both."], "answer": "A"},
]


def test_videomme_json_and_parquet(tmp_path, clip_file):
    _copy(clip_file, tmp_path / "data" / "fFjv93ACGo8.mp4")
    _copy(clip_file, tmp_path / "data" / "zzLong00001.mp4")
    (tmp_path / "videomme.json").write_text(json.dumps(VIDEOMME_ROWS))
    items = load_videomme(tmp_path / "videomme.json", tmp_path / "data")
    assert [it.id for it in items] == ["001-1", "002-1"]
    assert items[0].options == ["One.", "Two.", "Three.", "Four."] and items[0].answer == 2
    assert items[0].meta["duration"] == "short" and items[1].answer == 0
    assert items[0].load_clip(3).frames.shape == (3, 32, 32, 3)
    assert [it.id for it in load_videomme(tmp_path / "videomme.json", tmp_path / "data", durations="long")] == [
        "002-1"]
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(VIDEOMME_ROWS), tmp_path / "test-00000-of-00001.parquet")
        again = load_dataset(tmp_path / "test-00000-of-00001.parquet", video_dir=tmp_path / "data")
        assert [it.to_json() for it in again] == [it.to_json() for it in items]
    else:
        with pytest.raises(AdapterError, match="pyarrow"):
            (tmp_path / "x.parquet").write_bytes(b"PAR1")
            load_videomme(tmp_path / "x.parquet", tmp_path / "data")


def test_mvbench_tasks_bounds_and_frame_folders(tmp_path, clip_file):
    json_dir, video_dir = tmp_path / "json", tmp_path / "video"
    json_dir.mkdir()
    _copy(clip_file, video_dir / "star" / "Charades_v1_480" / "ABC12.mp4")
    _copy(clip_file, video_dir / "clevrer" / "video_validation" / "video_10000.mp4")
    frames_dir = video_dir / "tvqa" / "frames_fps3_hq" / "s01e01_seg02_clip_00"
    frames_dir.mkdir(parents=True)
    for i, frame in enumerate(synthetic_video(9, 24, 24, seed=4)):
        Image.fromarray(frame).save(frames_dir / f"{i + 1:05d}.png")
    (json_dir / "action_sequence.json").write_text(json.dumps([
        {"video": "ABC12.mp4", "question": "What did the person do first?", "candidates": ["Sat.", "Ran.", "Ate."],
         "answer": "Ran.", "start": 0.5, "end": 2.0}]))
    (json_dir / "moving_direction.json").write_text(json.dumps([
        {"video": "video_10000.mp4", "question": "Where does the cube go?", "candidates": ["left", "right"],
         "answer": "left"}]))
    (json_dir / "episodic_reasoning.json").write_text(json.dumps([
        {"video": "s01e01_seg02_clip_00", "question": "Why?", "candidates": ["a", "b", "c", "d"], "answer": "d",
         "start": 1.0, "end": 2.0}]))
    items = load_mvbench(json_dir, video_dir)
    by_task = {it.meta["task"]: it for it in items}
    assert set(by_task) == {"Action Sequence", "Moving Direction", "Episodic Reasoning"}
    seq = by_task["Action Sequence"]
    assert seq.answer == 1 and (seq.start, seq.end) == (0.5, 2.0)
    clip = seq.load_clip(4)
    assert clip.timestamps.min() >= 0.5 - 1e-6 and clip.timestamps.max() <= 2.0 + 1e-6
    assert by_task["Moving Direction"].start is None  # a task without bounds ignores them
    episodic = by_task["Episodic Reasoning"].load_clip(3)
    assert episodic.frames.shape == (3, 24, 24, 3) and episodic.indices.tolist() == [3, 5, 6]  # 1 s..2 s at 3 fps
    only = load_mvbench(json_dir, video_dir, tasks=["Moving Direction"])
    assert [it.meta["task"] for it in only] == ["Moving Direction"]


def test_mlvu(tmp_path, clip_file):
    json_dir, video_dir = tmp_path / "json", tmp_path / "video"
    json_dir.mkdir()
    _copy(clip_file, video_dir / "2_needle" / "needle_32.mp4")
    (json_dir / "2_needle.json").write_text(json.dumps([
        {"video": "needle_32.mp4", "duration": 467.8, "question": "What does the hand hold?",
         "candidates": ["A cup", "A pen", "A key", "A phone"], "answer": "A key", "question_type": "needle"}]))
    (json_dir / "9_summary.json").write_text(json.dumps([
        {"video": "x.mp4", "duration": 1.0, "question": "Summarize.", "answer": "...", "question_type": "summary"}]))
    items = load_mlvu(json_dir, video_dir)
    assert len(items) == 1 and items[0].answer == 2 and items[0].meta["task"] == "needle"
    assert items[0].load_clip(2).frames.shape[0] == 2
    assert load_mlvu(json_dir, video_dir, tasks=["plotQA"]) == []


def test_our_jsonl_format_round_trip_and_errors(tmp_path, clip_file):
    _copy(clip_file, tmp_path / "clips" / "a.mp4")
    np.save(tmp_path / "clips" / "b.npy", synthetic_video(6, 16, 16))
    items = [
        EvalItem("a", "what color ?", ["red", "blue"], 1, video="clips/a.mp4"),
        EvalItem("b", "how many ?", ["one", "two", "three"], 0, video="clips/b.npy", frame_fps=2.0),
    ]
    write_jsonl_dataset(items, tmp_path)
    loaded = load_dataset(tmp_path)
    assert [it.answer for it in loaded] == [1, 0]
    assert loaded[1].load_clip(3).timestamps.tolist() == [0.0, 1.0, 2.5]  # 6 frames at 2 fps
    (tmp_path / "letters.jsonl").write_text(json.dumps({"id": 1, "question": "q", "options": ["x", "y"],
                                                        "answer": "(B)", "video": "clips/a.mp4"}) + "\n")
    assert load_jsonl_dataset(tmp_path / "letters.jsonl")[0].answer == 1
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "options": ["x"], "answer": "z"}) + "\n")
    with pytest.raises(AdapterError, match="matches none"):
        load_jsonl_dataset(tmp_path / "bad.jsonl")
    (tmp_path / "gone.jsonl").write_text(json.dumps({"question": "q", "options": ["x"], "video": "nope.mp4"}) + "\n")
    with pytest.raises(VideoDecodeError, match="not found"):
        load_jsonl_dataset(tmp_path / "gone.jsonl")[0].load_clip(2)
    with pytest.raises(AdapterError, match="needs the folder"):
        load_dataset(tmp_path / "letters.jsonl", kind="mvbench")


def test_format_question():
    assert format_question("Which?", ["red", "blue"]) == (
        "Which?\nA. red\nB. blue\nAnswer with the option's letter from the given choices directly."
    )
