"""What a family patch tells the core: where features come from, in what grid, and how to hand them back."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Segment:
    """The visual features behind one placeholder run, in the layout pooling understands.

    grid: (T, H, W, D) features to pool, or None when the run stays stock (`fixed` then holds its features).
    tail: (m, D) features appended after the pooled tokens (LLaVA-OneVision's one newline per video).
    """

    stock_tokens: int
    grid: torch.Tensor | None = None
    tail: torch.Tensor | None = None
    fixed: torch.Tensor | None = None
    runs: int = 1  # placeholder runs this video fills (Qwen3-VL: one block per frame)
    side_grids: tuple = ()  # more (T, H, W, D') grids pooled exactly like `grid` (Qwen3-VL DeepStack)

    @property
    def frames(self) -> int:
        return 0 if self.grid is None else self.grid.shape[0]


@dataclass(frozen=True)
class VisualFamily:
    """Per-family knowledge as data; the core (call_path.py) does the rest.

    encode(model, encoder_kwargs, run_lengths, config) -> (segments, template_output)
        run the stock encoder (wrapped, never copied) and cut its output into one Segment per placeholder run.
    pack(template_output, features, side_features) -> the `mm_encoder_outputs[modality]` value the stock forward
        expects, given one (n_i, D) tensor per video (and its pooled side grids).
    token_tensors: other per-token call tensors to rewrite with input_ids: name -> (padding value, value at an
        inserted placeholder), e.g. Qwen's mm_token_type_ids.
    install(handle) / finish(handle, ctx) / release(handle): optional family steps at apply time, after the
        rewrite of each adapted call, and when that call ends.
    frame_blocks(model, row_ids, runs) -> [(start | None, stop)] per frame: for models with one block of text and
        placeholders per frame (Segment.runs > 1), the caller span of each frame's block, so pooling that merges
        frames can delete the blocks it no longer needs (tokens.merged_frame_blocks).
    """

    model_types: tuple[str, ...]
    modality: str  # key in mm_encoder_outputs: "image" or "video"
    token_attr: str  # config attribute holding the placeholder id
    pixel_keys: tuple[str, ...]  # call kwargs that carry this modality's pixels
    encoder_name: str  # method of model.model that encodes this modality
    required: tuple[str, ...]  # dotted attributes of the top model the patch relies on
    frame_grid: Callable  # config -> (H, W) per frame of the grid pooling acts on
    encode: Callable
    pack: Callable
    token_tensors: dict = field(default_factory=dict)
    visual_extent: Callable | None = None  # (handle, prepared, call) -> per-row extent for the RoPE factor
    install: Callable | None = None
    finish: Callable | None = None
    release: Callable | None = None
    frame_blocks: Callable | None = None

    def token_id(self, config) -> int:
        return getattr(config, self.token_attr)


_MODALITIES = {
    "video": dict(
        modality="video",
        token_attr="video_token_id",
        pixel_keys=("pixel_values_videos",),
        encoder_name="get_video_features",
    ),
    "image": dict(
        modality="image", token_attr="image_token_id", pixel_keys=("pixel_values",), encoder_name="get_image_features"
    ),
}
_DECODER = ("model.language_model", "model.language_model.rotary_emb")


def make_family(model_type: str, modality: str, hooked: tuple[str, ...], **rest) -> VisualFamily:
    """A family patch whose stock encoder, decoder and rotary are where every supported class keeps them.

    hooked: the other attributes of `model.model` the patch relies on (checked at apply time).
    """
    fields = _MODALITIES[modality]
    required = (f"model.{fields['encoder_name']}", *(f"model.{name}" for name in hooked), *_DECODER)
    return VisualFamily(model_types=(model_type,), required=required, **fields, **rest)


_SWAP_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SWAP_LOCKS_GUARD = threading.Lock()


def _swap_lock(obj) -> threading.RLock:
    with _SWAP_LOCKS_GUARD:
        lock = _SWAP_LOCKS.get(obj)
        if lock is None:
            lock = _SWAP_LOCKS[obj] = threading.RLock()
        return lock


@contextlib.contextmanager
def swapped(obj, name: str, replacement):
    """Temporarily shadow a method on one instance (never the class), restoring it in `finally`.

    Holds a per-instance lock for the duration: the shadow is visible to every thread, so two threads calling one
    adapted model would otherwise see each other's replacement, and the later restore would leave the earlier
    thread's replacement installed for good.
    """
    with _swap_lock(obj):
        had_own = name in obj.__dict__
        previous = obj.__dict__.get(name)
        setattr(obj, name, replacement)
        try:
            yield
        finally:
            if had_own:
                setattr(obj, name, previous)
            else:
                delattr(obj, name)
