"""One multiple-choice question about one video (:class:`EvalItem`), where its frames come from, and the annotation
files every loader reads. The lowest module of the evaluation data: the loaders (``datasets``) and the V-NIAH
generator (``niah``) both build on it."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from longctx_adapter.eval.video import FrameSampler, VideoClip, VideoDecodeError, load_video

from longctx_adapter.errors import AdapterError

__all__ = ["ANNOTATIONS", "LETTERS", "MC_INSTRUCTION", "EvalItem", "format_question", "read_records"]

LETTERS = string.ascii_uppercase
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
ANNOTATIONS = "annotations.jsonl"


@dataclass
class EvalItem:
    """One multiple-choice question about one video."""

    id: str
    question: str
    options: list[str]
    answer: int | None  # index into options (None: unknown / test split)
    video: str | None = None  # a video file, a .npy of uint8 (T, H, W, 3) frames, or a folder of frame images
    start: float | None = None  # seconds: only this part of the video (MVBench "bound")
    end: float | None = None
    frame_fps: float | None = None  # frame folders / .npy: frames per second (for timestamps and bounds)
    meta: dict = field(default_factory=dict)

    @property
    def answer_letter(self) -> str | None:
        return None if self.answer is None else LETTERS[self.answer]

    def prompt(self, instruction: str | None = MC_INSTRUCTION) -> str:
        return format_question(self.question, self.options, instruction)

    def load_clip(self, num_frames: int | None = None, *, fps=None, max_frames=None, backend="pyav") -> VideoClip:
        """The item's frames, sampled like :func:`load_video` (uniform over [start, end] when bounded)."""
        if self.video is None:
            raise VideoDecodeError(f"item {self.id} names no video")
        path = Path(self.video)
        if path.is_dir():
            return _load_frame_folder(self, path, num_frames, fps, max_frames)
        if path.suffix == ".npy":
            if not path.is_file():
                raise VideoDecodeError(f"video file not found: {path}")
            try:
                frames = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as exc:
                raise VideoDecodeError(f"cannot read frames from {path}: {exc}") from exc
            return _sample_array(self, frames, num_frames, fps, max_frames, str(path))
        return load_video(path, num_frames, fps=fps, max_frames=max_frames, backend=backend, start=self.start,
                          end=self.end)

    def to_json(self) -> dict:
        out = {"id": self.id, "question": self.question, "options": list(self.options), "answer": self.answer}
        for key in ("video", "start", "end", "frame_fps"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.meta:
            out["meta"] = self.meta
        return out


def format_question(question: str, options, instruction: str | None = MC_INSTRUCTION) -> str:
    """``question`` then one ``X. option`` line per option, then the instruction (the Video-MME / lmms-eval style)."""
    lines = [question.strip()]
    lines += [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    if instruction:
        lines.append(instruction)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- frame sources


def _sample_array(item, frames, num_frames, fps, max_frames, path) -> VideoClip:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoDecodeError(f"{path}: expected uint8 frames (T, H, W, 3), got shape {frames.shape}")
    rate = item.frame_fps or 1.0
    times = np.arange(frames.shape[0]) / rate
    idx = FrameSampler(num_frames, fps, max_frames, item.start, item.end)(times)
    return VideoClip(np.ascontiguousarray(frames[idx]).astype(np.uint8), times[idx], idx, frames.shape[0], rate, path,
                     "numpy")


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _load_frame_folder(item, folder: Path, num_frames, fps, max_frames) -> VideoClip:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise VideoDecodeError(f"frame folder {folder} holds no images")
    rate = item.frame_fps or 3.0  # MVBench's frame folders (tvqa) are 3 fps
    times = np.arange(len(files)) / rate
    idx = FrameSampler(num_frames, fps, max_frames, item.start, item.end)(times)
    frames = []
    for i in idx.tolist():
        try:
            with Image.open(files[i]) as img:
                frames.append(np.asarray(img.convert("RGB")))
        except OSError as exc:
            raise VideoDecodeError(f"cannot read frame {files[i]}: {exc}") from exc
    if len({f.shape for f in frames}) > 1:
        raise VideoDecodeError(f"frames in {folder} differ in size")
    return VideoClip(np.stack(frames), times[idx], idx, len(files), rate, str(folder), "frames")


# ----------------------------------------------------------------------------------------------- annotation files


def read_records(path: Path) -> list[dict]:
    """The records of a JSON list (or ``{"data": [...]}`` / ``{id: record}``) or JSONL annotation file."""
    if not path.is_file():
        raise AdapterError(f"annotation file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise AdapterError(f"{path}:{n}: not valid JSON: {exc}") from exc
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}: not valid JSON: {exc}") from exc
    if isinstance(data, dict):  # {"data": [...]} or {id: record}
        data = data.get("data", list(data.values()))
    if not isinstance(data, list):
        raise AdapterError(f"{path}: expected a list of records")
    return data
