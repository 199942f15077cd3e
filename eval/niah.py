"""Offline V-NIAH: needle-in-a-video-haystack items from synthetic frames, and the depth x frames heatmap.

As in LongVA's V-NIAH, the haystack is a long video and the needle is one frame that is inserted at a relative
depth of the *sampled* sequence, so the number of frames is an evaluation axis, not part of the data: for an
evaluation at N frames, N frames are sampled uniformly from the haystack and the frame at position
``round(depth * (N - 1))`` is replaced by the needle frame (the haystack frame there with the needle drawn on it).
Distractor needles (other shapes in other colours, which may be among the options) replace other positions.

The question asks for the colour of the needle's shape, which appears nowhere else in the video
(``"what color is the circle ?"``); the options are colours, one right. Everything is deterministic from the seed.

Dataset on disk (:func:`write_niah`)::

    <dir>/niah.json          generator settings
    <dir>/haystack.npy       uint8 (T, H, W, 3): the haystack (or haystack.mp4 with video_format="mp4")
    <dir>/annotations.jsonl  one item per line: {"id", "question", "options", "answer", "niah": {...}}

:func:`export_videos` writes the materialised videos (one per item and frame count, .npy or .mp4) with a plain
annotations file any video QA tool can read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from longctx_adapter.eval.items import ANNOTATIONS, EvalItem, read_records
from longctx_adapter.eval.video import VideoClip, VideoDecodeError, load_video, sample_indices, write_video

from longctx_adapter.errors import AdapterError

__all__ = [
    "COLORS",
    "SHAPES",
    "NiahItem",
    "draw_shape",
    "export_videos",
    "generate_niah",
    "haystack_video",
    "niah_frames",
    "plot_heatmap",
    "write_niah",
]

COLORS = {
    "red": (230, 25, 25),
    "green": (20, 200, 40),
    "blue": (25, 60, 235),
    "yellow": (245, 225, 20),
    "purple": (150, 40, 210),
    "orange": (250, 140, 0),
    "cyan": (0, 225, 225),
    "pink": (255, 100, 190),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


# ----------------------------------------------------------------------------------------------- drawing


def haystack_video(frames: int, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """A muted, slowly changing uint8 video (T, H, W, 3): low-saturation drifting blobs and noise, so that a
    saturated drawn shape stands out (as a needle image does in a natural haystack)."""
    if frames < 1 or height < 8 or width < 8:
        raise AdapterError("a haystack needs frames >= 1 and at least 8x8 pixels")
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    blobs = rng.uniform(0, 1, size=(4, 5)).astype(np.float32)  # cy, cx, vy, vx, scale
    base = rng.uniform(90, 150, size=3).astype(np.float32)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        field = np.zeros((height, width), dtype=np.float32)
        for cy, cx, vy, vx, scale in blobs:
            py = (cy + 0.01 * (vy - 0.5) * t) % 1.0
            px = (cx + 0.01 * (vx - 0.5) * t) % 1.0
            field += np.exp(-((y - py) ** 2 + (x - px) ** 2) / (0.02 + 0.05 * scale))
        field = field / max(field.max(), 1e-6)
        noise = rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
        frame = base[None, None, :] * (0.7 + 0.5 * field[..., None]) + noise
        gray = frame.mean(axis=-1, keepdims=True)
        frame = gray + 0.25 * (frame - gray)  # low saturation
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def draw_shape(frame: np.ndarray, shape: str, color, center=None, radius=None) -> np.ndarray:
    """A copy of ``frame`` with a filled ``shape`` in ``color`` (a name of :data:`COLORS` or an RGB triple)."""
    if shape not in SHAPES:
        raise AdapterError(f"unknown shape {shape!r}; use one of {SHAPES}")
    rgb = np.array(COLORS[color] if isinstance(color, str) else color, dtype=np.uint8)
    height, width = frame.shape[:2]
    radius = radius or max(3, min(height, width) // 4)
    cy, cx = center if center is not None else (height // 2, width // 2)
    yy, xx = np.mgrid[0:height, 0:width]
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        mask = dy**2 + dx**2 <= radius**2
    elif shape == "ring":
        dist = dy**2 + dx**2
        mask = (dist <= radius**2) & (dist >= (0.55 * radius) ** 2)
    elif shape == "square":
        side = radius * 0.85
        mask = (np.abs(dy) <= side) & (np.abs(dx) <= side)
    elif shape == "triangle":  # apex up
        mask = (dy >= -radius) & (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)
    else:  # cross
        arm = max(1, radius // 3)
        mask = ((np.abs(dy) <= arm) & (np.abs(dx) <= radius)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= radius))
    out = frame.copy()
    out[mask] = rgb
    return out


# ----------------------------------------------------------------------------------------------- items


@dataclass
class NiahItem(EvalItem):
    """A V-NIAH item: ``meta["niah"]`` holds the haystack file, depth, needle and distractors."""

    @property
    def spec(self) -> dict:
        return self.meta["niah"]

    @property
    def depth(self) -> float:
        return float(self.spec["depth"])

    @classmethod
    def from_record(cls, rec: dict, root: Path) -> NiahItem:
        spec = dict(rec["niah"])
        haystack = Path(spec["haystack"])
        spec["haystack"] = str(haystack if haystack.is_absolute() else Path(root) / haystack)
        options = [str(o) for o in rec["options"]]
        return cls(
            id=str(rec["id"]),
            question=str(rec["question"]),
            options=options,
            answer=int(rec["answer"]),
            video=None,
            meta={**dict(rec.get("meta") or {}), "niah": spec},
        )

    def to_record(self, root: Path | None = None) -> dict:
        spec = dict(self.spec)
        if root is not None:
            try:
                spec["haystack"] = str(Path(spec["haystack"]).relative_to(root))
            except ValueError:
                pass
        meta = {k: v for k, v in self.meta.items() if k != "niah"}
        rec = {"id": self.id, "question": self.question, "options": self.options, "answer": self.answer, "niah": spec}
        if meta:
            rec["meta"] = meta
        return rec

    def load_clip(self, num_frames: int | None = None, *, fps=None, max_frames=None, backend="pyav") -> VideoClip:
        if fps is not None:
            raise AdapterError("V-NIAH items are sampled by frame count (num_frames), not fps")
        spec = self.spec
        num_frames = num_frames or int(spec.get("default_frames", 16))
        if max_frames is not None:
            num_frames = min(num_frames, max_frames)
        haystack = _load_haystack(spec["haystack"], backend)
        idx = sample_indices(haystack.shape[0], num_frames, source="the V-NIAH haystack")
        frames, positions = niah_frames(haystack, num_frames, spec, indices=idx)
        rate = float(spec.get("fps", 1.0))
        return VideoClip(frames, idx / rate, idx, haystack.shape[0], rate, spec["haystack"], "niah",
                         meta={"needle_positions": positions})


_HAYSTACKS: dict[str, np.ndarray] = {}


def _load_haystack(path: str, backend: str) -> np.ndarray:
    """Haystack frames (cached per path: every item of a dataset shares one haystack)."""
    if path not in _HAYSTACKS:
        p = Path(path)
        if not p.exists():
            raise VideoDecodeError(f"V-NIAH haystack not found: {p}")
        if p.suffix == ".npy":
            frames = np.load(p)
        else:
            frames = load_video(p, backend=backend).frames
        if len(_HAYSTACKS) > 8:
            _HAYSTACKS.clear()
        _HAYSTACKS[path] = frames
    return _HAYSTACKS[path]


def _positions(num_frames: int, depths: list[float]) -> list[int]:
    """Distinct frame positions for the needles, in order: ``round(depth * (N - 1))``, moved to the nearest free
    position on a collision (needle first, so it always sits exactly at its depth)."""
    if len(depths) > num_frames:
        raise AdapterError(f"{len(depths)} needles do not fit in {num_frames} frames")
    taken: list[int] = []
    for depth in depths:
        want = int(round(float(depth) * (num_frames - 1)))
        for offset in range(num_frames):
            for cand in (want + offset, want - offset):
                if 0 <= cand < num_frames and cand not in taken:
                    break
            else:
                continue
            taken.append(cand)
            break
    return taken


def niah_frames(haystack: np.ndarray, num_frames: int, spec: dict, indices=None) -> tuple[np.ndarray, list[int]]:
    """N frames sampled uniformly from the haystack with the needle (and distractors) drawn in; returns the frames
    and the needle's then the distractors' positions. A haystack shorter than N gives each of its frames once
    (sample_indices warns); ``indices``: the haystack frames, when the caller sampled them already."""
    idx = sample_indices(haystack.shape[0], num_frames, source="the V-NIAH haystack") if indices is None else indices
    frames = np.ascontiguousarray(haystack[idx]).copy()
    needles = [spec["needle"], *spec.get("distractors", [])]
    depths = [spec["depth"], *[d["depth"] for d in spec.get("distractors", [])]]
    positions = _positions(len(idx), depths)
    for needle, pos in zip(needles, positions):
        frames[pos] = draw_shape(frames[pos], needle["shape"], needle["color"], needle.get("center"),
                                 needle.get("radius"))
    return frames, positions


def generate_niah(
    num_items: int | None = None,
    *,
    depths=DEFAULT_DEPTHS,
    haystack: str = "haystack.npy",
    num_options: int = 4,
    distractors: int = 0,
    seed: int = 0,
    size: int = 64,
    default_frames: int = 16,
    fps: float = 1.0,
) -> list[NiahItem]:
    """Items (one per depth, repeated with new needles until ``num_items``), deterministic from ``seed``.

    Each item draws a needle (shape, colour, centre, radius), ``distractors`` other needles with other shapes (and
    colours that are wrong options when possible) at other random depths, and a shuffled option list.
    """
    depths = [float(d) for d in depths]
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise AdapterError(f"depths must be in [0, 1], got {depths}")
    if not 2 <= num_options <= len(COLORS):
        raise AdapterError(f"num_options must be in 2..{len(COLORS)}")
    if not 0 <= distractors < len(SHAPES):
        raise AdapterError(f"distractors must be in 0..{len(SHAPES) - 1}")
    total = num_items if num_items is not None else len(depths)
    rng = np.random.default_rng(seed)
    colors = list(COLORS)
    items = []
    for n in range(total):
        depth = depths[n % len(depths)]
        shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[: 1 + distractors]]
        option_colors = [colors[i] for i in rng.permutation(len(colors))[:num_options]]
        answer_color = option_colors[0]
        radius = int(rng.integers(max(3, size // 6), max(4, size // 3)))
        margin = radius + 1
        center = [int(rng.integers(margin, size - margin)), int(rng.integers(margin, size - margin))]
        needle = {"shape": shapes[0], "color": answer_color, "center": center, "radius": radius}
        extra = []
        for k, shape in enumerate(shapes[1:]):
            wrong = option_colors[1 + k % (num_options - 1)]
            r = int(rng.integers(max(3, size // 6), max(4, size // 3)))
            c = [int(rng.integers(r + 1, size - r - 1)), int(rng.integers(r + 1, size - r - 1))]
            extra.append({"shape": shape, "color": wrong, "center": c, "radius": r,
                          "depth": float(np.round(rng.uniform(0, 1), 3))})
        order = rng.permutation(num_options)
        options = [option_colors[i] for i in order]
        spec = {"haystack": haystack, "depth": depth, "needle": needle, "distractors": extra,
                "default_frames": default_frames, "fps": fps, "seed": seed}
        items.append(
            NiahItem(
                id=f"niah-{n:04d}",
                question=f"what color is the {shapes[0]} ?",
                options=options,
                answer=int(np.where(order == 0)[0][0]),
                meta={"niah": spec},
            )
        )
    return items


def write_niah(
    out_dir,
    num_items: int | None = None,
    *,
    haystack_frames: int = 64,
    size: int = 64,
    video_format: str = "npy",
    seed: int = 0,
    **kwargs,
) -> Path:
    """Generate a V-NIAH dataset into ``out_dir`` (see the module docstring); returns the annotations file."""
    if video_format not in ("npy", "mp4"):
        raise AdapterError("video_format must be 'npy' or 'mp4'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = haystack_video(haystack_frames, size, size, seed=seed)
    name = f"haystack.{video_format}"
    if video_format == "npy":
        np.save(out / name, frames)
    else:
        write_video(out / name, frames, fps=kwargs.get("fps", 1.0) or 1.0)
    _HAYSTACKS.pop(str(out / name), None)
    items = generate_niah(num_items, haystack=name, seed=seed, size=size, **kwargs)
    settings = {"num_items": len(items), "haystack_frames": haystack_frames, "size": size, "seed": seed,
                "video_format": video_format, **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
    (out / "niah.json").write_text(json.dumps(settings, indent=2) + "\n")
    file = out / ANNOTATIONS
    with open(file, "w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item.to_record()) + "\n")
    return file


def export_videos(dataset_dir, frame_counts, out_dir=None, video_format: str = "mp4", fps: float = 1.0) -> Path:
    """Materialise every item at every frame count as a video file plus a plain annotations file
    (``<out_dir>/annotations.jsonl``, our JSONL format, ids ``<item>@<frames>``) for tools that read videos."""
    dataset_dir = Path(dataset_dir)
    file = dataset_dir / ANNOTATIONS if dataset_dir.is_dir() else dataset_dir
    items = [NiahItem.from_record(rec, file.parent) for rec in read_records(file) if "niah" in rec]
    out = Path(out_dir) if out_dir is not None else dataset_dir / "videos"
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for item in items:
        for n in frame_counts:
            clip = item.load_clip(int(n))
            name = f"{item.id}_f{n}.{video_format}"
            if video_format == "npy":
                np.save(out / name, clip.frames)
            else:
                write_video(out / name, clip.frames, fps=fps)
            records.append({"id": f"{item.id}@{n}", "video": name, "question": item.question, "options": item.options,
                            "answer": item.answer, "meta": {"depth": item.depth, "frames": len(clip)}})
    file = out / ANNOTATIONS
    with open(file, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    return file


# ----------------------------------------------------------------------------------------------- heatmap


def plot_heatmap(results, path, title: str = "V-NIAH", value: str = "correct") -> Path:
    """A depth x frames accuracy heatmap (PNG, matplotlib Agg) like the published V-NIAH figures.

    results: records with ``depth``, ``frames`` and ``value`` (bool/0-1); several per cell are averaged.
    Rows are depths (0 % at the top), columns frame counts; red (0) -> green (1), cell text = accuracy.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    cells: dict[tuple[float, int], list[float]] = {}
    for rec in results:
        if rec.get("depth") is None or rec.get(value) is None:
            continue
        cells.setdefault((float(rec["depth"]), int(rec["frames"])), []).append(float(rec[value]))
    if not cells:
        raise AdapterError("no V-NIAH results with depth, frames and a score to plot")
    depths = sorted({d for d, _ in cells})
    frames = sorted({f for _, f in cells})
    grid = np.full((len(depths), len(frames)), np.nan)
    for (d, f), vals in cells.items():
        grid[depths.index(d), frames.index(f)] = float(np.mean(vals))
    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(frames) + 2), max(3.0, 0.5 * len(depths) + 1.5)))
    image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(frames)), [str(f) for f in frames])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("frames")
    ax.set_ylabel("needle depth")
    for i in range(len(depths)):
        for j in range(len(frames)):
            if not math.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
