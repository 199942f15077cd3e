"""Synthetic video QA for the tiny trained model: answers depend on frames anywhere in the video.

Every item is a short grayscale "video" of 28x28 frames (the tiny LLaVA-OneVision vision size) in which one to
three *marker* frames carry a big coloured square. Three question types, each exactly 6 words so that a batch
never needs padding:

- ``color``  "what color is the square ?"          one marker frame; answer its colour
- ``order``  "which color is shown first ?"        two marker frames of different colours; answer the earlier one
- ``count``  "how many frames with square ?"       one to three marker frames; answer ``one`` / ``two`` / ``three``

Distractor frames are gray (random level, pixel noise, and a small gray square of their own), so the only thing
that makes a frame a marker is colour. Marker frames sit at uniformly random depths, at any length. Everything is
deterministic from ``(seed, task, frames, index)``; answers are single words of the tiny tokenizer's vocabulary.

``make_item(...)`` gives uint8 frames ``(T, 28, 28, 3)``, the question, the answer word and where the markers are;
``batch_inputs(...)`` turns items of one frame count into model inputs without the HF processor (the same
tensors the processor makes; ``tests/test_tiny_trained.py`` checks that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "COLORS",
    "COUNT_WORDS",
    "FRAME_SIZE",
    "QUESTIONS",
    "TASKS",
    "Item",
    "make_item",
    "make_items",
    "prompt_text",
    "batch_inputs",
    "answer_words",
]

FRAME_SIZE = 28  # the tiny OneVision vision tower's image size: the processor's resize is then the identity
# LlavaOnevisionVideoProcessor's defaults (OpenAI CLIP mean/std), applied the way it fuses rescale + normalize
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)
#: colour word -> RGB of the marker square (jittered per item)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 60, 230),
    "yellow": (230, 220, 40),
    "cyan": (40, 210, 220),
    "magenta": (220, 40, 210),
}
COUNT_WORDS = ("one", "two", "three")
QUESTIONS = {
    "color": "what color is the square ?",
    "order": "which color is shown first ?",
    "count": "how many frames with square ?",
}
TASKS = tuple(QUESTIONS)
_TASK_ID = {t: i for i, t in enumerate(TASKS)}


@dataclass(frozen=True)
class Item:
    task: str
    frames: np.ndarray  # (T, 28, 28, 3) uint8
    question: str
    answer: str
    markers: tuple[int, ...]  # frame indices of the marker frames, in temporal order
    marker_colors: tuple[str, ...]

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def answer_words(task: str | None = None) -> tuple[str, ...]:
    """Every answer a task (or, with None, any task) can have."""
    if task == "count":
        return COUNT_WORDS
    if task in ("color", "order"):
        return tuple(COLORS)
    return tuple(COLORS) + COUNT_WORDS


def _gray_frame(rng: np.random.Generator) -> np.ndarray:
    level = rng.uniform(70, 180)
    frame = level + rng.normal(0.0, 18.0, size=(FRAME_SIZE, FRAME_SIZE, 1))
    side = int(rng.integers(4, 9))  # a small gray distractor square: shape alone never identifies a marker
    y, x = rng.integers(0, FRAME_SIZE - side + 1, size=2)
    frame[y : y + side, x : x + side] = rng.uniform(20, 235)
    return np.repeat(frame, 3, axis=2)


def _paint_marker(frame: np.ndarray, color: str, rng: np.random.Generator) -> None:
    side = int(rng.integers(12, 19))
    y, x = rng.integers(0, FRAME_SIZE - side + 1, size=2)
    rgb = np.asarray(COLORS[color], dtype=np.float64) + rng.uniform(-20, 20, size=3)
    frame[y : y + side, x : x + side] = rgb + rng.normal(0.0, 6.0, size=(side, side, 3))


def make_item(task: str, frames: int, seed: int, index: int) -> Item:
    """Item ``index`` of ``task`` at ``frames`` frames from stream ``seed`` (pure function of its arguments)."""
    if task not in _TASK_ID:
        raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
    if frames < 3:
        raise ValueError("items need at least 3 frames")
    rng = np.random.default_rng([int(seed), _TASK_ID[task], int(frames), int(index)])
    names = list(COLORS)
    if task == "color":
        n_markers = 1
    elif task == "order":
        n_markers = 2
    else:
        n_markers = int(rng.integers(1, 4))
    markers = tuple(sorted(rng.choice(frames, size=n_markers, replace=False).tolist()))
    if task == "order":
        colors = tuple(rng.choice(names, size=2, replace=False).tolist())
    else:
        colors = tuple(rng.choice(names, size=n_markers, replace=True).tolist())
    video = np.stack([_gray_frame(rng) for _ in range(frames)])
    for f, c in zip(markers, colors):
        _paint_marker(video[f], c, rng)
    video = np.clip(np.rint(video), 0, 255).astype(np.uint8)
    if task == "count":
        answer = COUNT_WORDS[n_markers - 1]
    else:
        answer = colors[0]
    return Item(task, video, QUESTIONS[task], answer, markers, colors)


def make_items(task: str, frames: int, seed: int, count: int, start: int = 0) -> list[Item]:
    return [make_item(task, frames, seed, i) for i in range(start, start + count)]


def prompt_text(question: str) -> str:
    """The prompt in the tiny chat format; the processor expands ``<video>`` to the video's placeholder run."""
    return f"user <video> {question} assistant"


def batch_inputs(items, tokenizer, tokens_per_frame: int = 16, video_token: str = "<video>") -> dict:
    """Model inputs for items of one frame count, as ``LlavaOnevisionProcessor`` builds them.

    ``input_ids``: ``user``, ``T * tokens_per_frame + 1`` video placeholders, the 6 question words, ``assistant``;
    ``pixel_values_videos``: frames normalized like the processor (CLIP mean/std, rescale fused in), shape
    (B, T, 3, 28, 28), bit-identical to the processor's output (tested).
    """
    frames = {it.num_frames for it in items}
    if len(frames) != 1:
        raise ValueError(f"one batch needs one frame count, got {sorted(frames)}")
    (t,) = frames
    run = " ".join([video_token] * (t * tokens_per_frame + 1))
    texts = [f"user {run} {it.question} assistant" for it in items]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    pixels = torch.from_numpy(np.stack([it.frames for it in items])).permute(0, 1, 4, 2, 3).float()
    mean = torch.tensor(_MEAN).view(3, 1, 1) * 255.0
    std = torch.tensor(_STD).view(3, 1, 1) * 255.0
    pixels = (pixels - mean) / std
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "pixel_values_videos": pixels,
    }
