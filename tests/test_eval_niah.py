"""Offline V-NIAH: deterministic generation, needle placement, dataset round trip, export and heatmap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from longctx_adapter.eval.datasets import load_dataset
from longctx_adapter.eval.niah import (
    COLORS,
    NiahItem,
    draw_shape,
    export_videos,
    generate_niah,
    haystack_video,
    niah_frames,
    plot_heatmap,
    write_niah,
)

from longctx_adapter import AdapterError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _has_color(frame, name, tol=40) -> bool:
    diff = np.abs(frame.astype(int) - np.array(COLORS[name])).max(axis=-1)
    return bool((diff <= tol).sum() >= 4)


def test_generation_is_deterministic_and_well_formed():
    a = generate_niah(6, depths=(0.0, 0.5, 1.0), distractors=2, seed=7)
    b = generate_niah(6, depths=(0.0, 0.5, 1.0), distractors=2, seed=7)
    c = generate_niah(6, depths=(0.0, 0.5, 1.0), distractors=2, seed=8)
    assert [i.to_record() for i in a] == [i.to_record() for i in b]
    assert [i.to_record() for i in a] != [i.to_record() for i in c]
    assert [i.depth for i in a] == [0.0, 0.5, 1.0, 0.0, 0.5, 1.0]
    for item in a:
        spec = item.spec
        assert item.options[item.answer] == spec["needle"]["color"]
        assert len(set(item.options)) == len(item.options) == 4
        shapes = [spec["needle"]["shape"]] + [d["shape"] for d in spec["distractors"]]
        assert len(set(shapes)) == 3  # the asked-about shape appears once
        assert item.question == f"what color is the {spec['needle']['shape']} ?"


@pytest.mark.parametrize("frames", [4, 9, 16])
def test_needle_sits_at_its_depth(frames):
    haystack = haystack_video(32, 48, 48, seed=1)
    for depth in (0.0, 0.3, 1.0):
        spec = {"depth": depth, "needle": {"shape": "circle", "color": "red", "center": [24, 24], "radius": 10},
                "distractors": [{"shape": "square", "color": "blue", "center": [20, 20], "radius": 8,
                                 "depth": depth}]}
        out, positions = niah_frames(haystack, frames, spec)
        assert out.shape == (frames, 48, 48, 3)
        needle_at = round(depth * (frames - 1))
        assert positions[0] == needle_at and positions[1] != needle_at  # a colliding distractor moves aside
        red = [i for i in range(frames) if _has_color(out[i], "red")]
        blue = [i for i in range(frames) if _has_color(out[i], "blue")]
        assert red == [needle_at] and blue == [positions[1]]


def test_draw_shapes_are_distinct():
    blank = np.zeros((32, 32, 3), dtype=np.uint8)
    masks = {s: (draw_shape(blank, s, "green") > 0).any(-1) for s in ("circle", "square", "triangle", "cross", "ring")}
    assert all(m.sum() > 20 for m in masks.values())
    assert len({m.tobytes() for m in masks.values()}) == 5
    with pytest.raises(AdapterError, match="unknown shape"):
        draw_shape(blank, "hexagon", "red")


@pytest.mark.parametrize("fmt", ["npy", "mp4"])
def test_dataset_round_trip_and_export(tmp_path, fmt):
    write_niah(tmp_path / "ds", 3, haystack_frames=16, size=32, video_format=fmt, seed=2, depths=(0, 0.5, 1))
    items = load_dataset(tmp_path / "ds")
    assert [it.id for it in items] == ["niah-0000", "niah-0001", "niah-0002"]
    assert all(isinstance(it, NiahItem) for it in items)
    assert json.loads((tmp_path / "ds" / "niah.json").read_text())["video_format"] == fmt
    clip = items[2].load_clip(5)
    assert clip.frames.shape == (5, 32, 32, 3) and clip.meta["needle_positions"] == [4]
    again = load_dataset(tmp_path / "ds")[2].load_clip(5)
    np.testing.assert_array_equal(clip.frames, again.frames)
    if fmt == "npy":
        exported = export_videos(tmp_path / "ds", [3, 4], video_format="npy")
        plain = load_dataset(exported)
        assert [it.id for it in plain][:2] == ["niah-0000@3", "niah-0000@4"]
        np.testing.assert_array_equal(plain[1].load_clip(4).frames, items[0].load_clip(4).frames)


@pytest.mark.parametrize("fps", [1.0, 24.0])
def test_exported_mp4_decodes_to_the_dataset_frames(tmp_path, fps):
    """mp4 export is lossless at any fps: the needle is in its frame, exactly, and nowhere else."""
    write_niah(tmp_path / "ds", 2, haystack_frames=16, size=32, video_format="mp4", seed=3, depths=(0.5, 1))
    exported = export_videos(tmp_path / "ds", [4, 8], video_format="mp4", fps=fps)
    items, plain = load_dataset(tmp_path / "ds"), load_dataset(exported)
    assert [it.id for it in plain] == ["niah-0000@4", "niah-0000@8", "niah-0001@4", "niah-0001@8"]
    for video, (item, n) in zip(plain, [(it, n) for it in items for n in (4, 8)]):
        np.testing.assert_array_equal(video.load_clip(n).frames, item.load_clip(n).frames)


def test_more_frames_than_the_haystack_are_capped_with_a_warning(tmp_path):
    from longctx_adapter.eval.video import FrameCountWarning

    write_niah(tmp_path / "ds", 1, haystack_frames=6, size=16, seed=0, depths=(1,))
    item = load_dataset(tmp_path / "ds")[0]
    with pytest.warns(FrameCountWarning, match="asked for 10 frames but the V-NIAH haystack has 6; sampling all 6"):
        clip = item.load_clip(10)
    assert len(clip) == 6 and clip.indices.tolist() == list(range(6)) and clip.meta["needle_positions"] == [5]
    with pytest.warns(FrameCountWarning):
        exported = export_videos(tmp_path / "ds", [10], video_format="npy")
    assert json.loads(exported.read_text().splitlines()[0])["meta"]["frames"] == 6


def test_heatmap_png(tmp_path):
    results = [{"depth": d, "frames": f, "correct": (d + f) % 2 == 0} for d in (0.0, 0.5, 1.0) for f in (4, 8, 16)]
    path = plot_heatmap(results, tmp_path / "h.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(AdapterError, match="no V-NIAH results"):
        plot_heatmap([{"frames": 4}], tmp_path / "x.png")
