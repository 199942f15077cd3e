"""Video files -> sampled frames -> model inputs.

Decoding
--------
:func:`load_video` decodes a file with PyAV (``backend="pyav"``, the default), decord or torchcodec (imported only
when asked for) and samples frames:

- ``num_frames=N``: N frame indices spread uniformly over the whole video, ``round(linspace(0, total - 1, N))``
  (first and last frame included; a video shorter than N frames repeats frames, so the count is always N);
- ``fps=F``: one frame every ``1/F`` seconds of presentation time starting at the first frame (the frame shown at
  that instant), then uniformly thinned to ``max_frames`` when there are more;
- neither: every frame (thinned to ``max_frames``).

It returns a :class:`VideoClip`: ``frames`` uint8 ``(T, H, W, 3)`` RGB, ``timestamps`` in seconds, the source
indices, fps and frame count. A missing, empty, truncated or undecodable file raises :class:`VideoDecodeError`
(an ``AdapterError``, so a ``ValueError``) naming the file and the problem; nothing waits on input that never
comes (files are read to their end once to list the frames, then decoded once).

Model inputs
------------
:func:`video_inputs` turns frames plus a question into what a model's ``forward``/``generate`` takes:

- with a Hugging Face processor (``AutoProcessor`` of the checkpoint) it renders the chat template and calls the
  processor, exactly as a user would (LLaVA / LLaVA-NeXT get the video as one image per frame, as they take no
  videos; the Qwen family gets the source fps so its temporal ids and timestamps are right);
- without one, :class:`LlavaFallbackProcessor` rebuilds the LLaVA-family processors with torch only (no
  torchvision) -- see its docstring for exactly what it reproduces. :func:`load_processor` picks the real
  processor and falls back when it cannot be built (torchvision missing).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longctx_adapter.errors import AdapterError

__all__ = [
    "BACKENDS",
    "FALLBACK_MODEL_TYPES",
    "LlavaFallbackProcessor",
    "VideoClip",
    "VideoDecodeError",
    "build_prompt",
    "load_processor",
    "load_video",
    "sample_indices",
    "video_inputs",
    "write_video",
]

BACKENDS = ("pyav", "decord", "torchcodec")
#: model types whose processor :class:`LlavaFallbackProcessor` reproduces
FALLBACK_MODEL_TYPES = ("llava", "llava_next", "llava_next_video", "llava_onevision")
#: model types that take a video as a list of images (one image placeholder run per frame)
FRAMES_AS_IMAGES = ("llava", "llava_next")
QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VideoDecodeError(AdapterError):
    """A video file that cannot be read: missing, empty, truncated, not a video, or a backend failure."""


@dataclass
class VideoClip:
    """Frames sampled from one video."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    timestamps: np.ndarray  # (T,) seconds from the start of the stream
    indices: np.ndarray  # (T,) indices of the sampled frames in the decoded stream
    total_frames: int  # frames in the file
    fps: float | None  # average frame rate of the file (None when unknown)
    path: str | None = None
    backend: str = "pyav"
    meta: dict = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        if self.fps:
            return self.total_frames / self.fps
        return None

    def __len__(self) -> int:
        return int(self.frames.shape[0])


# ----------------------------------------------------------------------------------------------- sampling


def sample_indices(
    total: int,
    num_frames: int | None = None,
    *,
    fps: float | None = None,
    times: Sequence[float] | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """Indices of the frames to keep out of ``total`` (see the module docstring for the rules).

    ``times`` (seconds, ascending, one per frame) is needed for ``fps`` sampling; without it frames are assumed
    evenly spaced at 1 s / index (callers pass the real presentation times).
    """
    if total < 1:
        raise VideoDecodeError("the video has no frames")
    if num_frames is not None and fps is not None:
        raise AdapterError("give num_frames or fps, not both (max_frames caps fps sampling)")
    if num_frames is not None:
        if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
            raise AdapterError(f"num_frames must be a positive integer, got {num_frames!r}")
        return np.rint(np.linspace(0, total - 1, int(num_frames))).astype(np.int64)
    if fps is not None:
        if not fps > 0:
            raise AdapterError(f"fps must be positive, got {fps!r}")
        t = np.asarray(times if times is not None else np.arange(total), dtype=np.float64)
        if t.shape[0] != total:
            raise AdapterError(f"times has {t.shape[0]} entries for {total} frames")
        targets = np.arange(t[0], t[-1] + 1e-9, 1.0 / fps)
        idx = np.searchsorted(t, targets + 1e-9, side="right") - 1  # the frame on screen at each target time
        idx = np.unique(np.clip(idx, 0, total - 1))
    else:
        idx = np.arange(total, dtype=np.int64)
    if max_frames is not None:
        if max_frames < 1:
            raise AdapterError(f"max_frames must be positive, got {max_frames!r}")
        if idx.shape[0] > max_frames:
            idx = idx[np.rint(np.linspace(0, idx.shape[0] - 1, max_frames)).astype(np.int64)]
    return idx.astype(np.int64)


# ----------------------------------------------------------------------------------------------- decoding


def _check_file(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoDecodeError(f"video file not found: {path}")
    if not os.path.isfile(path):
        raise VideoDecodeError(f"not a regular file: {path}")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"video file is empty (0 bytes): {path}")
    return path


def load_video(
    path,
    num_frames: int | None = None,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    backend: str = "pyav",
    start: float | None = None,
    end: float | None = None,
) -> VideoClip:
    """Decode ``path`` and sample frames (uniformly ``num_frames``, or at ``fps`` capped at ``max_frames``).

    ``start``/``end`` (seconds from the first frame) restrict sampling to that span (MVBench's bounds).
    """
    path = _check_file(path)
    if backend not in BACKENDS:
        raise AdapterError(f"unknown video backend {backend!r}; use one of {list(BACKENDS)}")
    reader = {"pyav": _load_pyav, "decord": _load_decord, "torchcodec": _load_torchcodec}[backend]
    try:
        clip = reader(path, _Sampler(num_frames, fps, max_frames, start, end))
    except (VideoDecodeError, AdapterError):
        raise
    except ImportError as exc:
        raise AdapterError(
            f"video backend {backend!r} is not installed ({exc}); pip install {backend} or use pyav"
        ) from exc
    except Exception as exc:  # every backend has its own error types; one clear message for all of them
        raise VideoDecodeError(f"cannot decode {path} with {backend}: {type(exc).__name__}: {exc}") from exc
    clip.path, clip.backend = path, backend
    return clip


class _Sampler:
    """The sampling request, applied to a backend's list of frame times."""

    def __init__(self, num_frames, fps, max_frames, start, end):
        self.num_frames, self.fps, self.max_frames, self.start, self.end = num_frames, fps, max_frames, start, end

    def __call__(self, times: np.ndarray) -> np.ndarray:
        lo, hi = 0, len(times)
        if self.start is not None:
            lo = int(np.searchsorted(times, float(self.start), side="left"))
        if self.end is not None:
            hi = int(np.searchsorted(times, float(self.end), side="right"))
        lo = min(lo, len(times) - 1)
        hi = min(max(hi, lo + 1), len(times))
        picked = sample_indices(hi - lo, self.num_frames, fps=self.fps, times=times[lo:hi], max_frames=self.max_frames)
        return lo + picked


def _load_pyav(path, sampler) -> VideoClip:
    import av

    try:
        container = av.open(path, mode="r", metadata_errors="ignore")
    except Exception as exc:
        raise VideoDecodeError(f"cannot open {path} as a video ({type(exc).__name__}: {exc})") from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path} has no video stream")
        stream = container.streams.video[0]
        base = stream.time_base
        # Pass 1: list the frames from packet timestamps (demux only, no decoding).
        pts = []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    pts.append(int(packet.pts))
        except Exception as exc:
            raise VideoDecodeError(f"{path} is truncated or corrupt: reading packets failed ({exc})") from exc
        rate = float(stream.average_rate) if stream.average_rate else None
        if not pts:
            raise VideoDecodeError(f"{path} holds no video frames")
        declared = int(stream.frames or 0)  # the container's own frame count (0: not recorded)
        if declared and len(pts) < declared:
            raise VideoDecodeError(
                f"{path} is truncated: its header declares {declared} frames but only {len(pts)} are in the file"
            )
        pts = sorted(set(pts))
        seconds = np.array([(p - pts[0]) * base for p in pts], dtype=np.float64) if base else None
        times = seconds if seconds is not None else np.arange(len(pts)) / (rate or 1.0)
        indices = sampler(times)
        wanted: dict[int, list[int]] = {}
        for out_pos, i in enumerate(indices.tolist()):
            wanted.setdefault(pts[i], []).append(out_pos)
    # Pass 2: decode once from the start (a fresh demuxer), keeping the wanted frames.
    frames: list[np.ndarray | None] = [None] * len(indices)
    remaining = len(wanted)
    decoded = 0
    try:
        with av.open(path, mode="r", metadata_errors="ignore") as container:
            for frame in container.decode(container.streams.video[0]):
                decoded += 1
                key = frame.pts
                if key is None or key not in wanted:
                    continue
                array = frame.to_ndarray(format="rgb24")
                for out_pos in wanted.pop(key):
                    frames[out_pos] = array
                remaining -= 1
                if remaining == 0:
                    break
    except Exception as exc:
        raise VideoDecodeError(f"{path} is truncated or corrupt: decoding failed after {decoded} frames ({exc})") from exc
    if remaining:
        raise VideoDecodeError(
            f"{path} is truncated or corrupt: its index lists {len(pts)} frames but {remaining} of the "
            f"{len(set(indices.tolist()))} sampled ones could not be decoded ({decoded} frames decoded)"
        )
    return VideoClip(
        frames=np.stack(frames),
        timestamps=times[indices].astype(np.float64),
        indices=indices,
        total_frames=len(pts),
        fps=rate,
    )


def _load_decord(path, sampler) -> VideoClip:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    total = len(reader)
    if total < 1:
        raise VideoDecodeError(f"{path} holds no video frames")
    rate = float(reader.get_avg_fps()) or None
    times = reader.get_frame_timestamp(np.arange(total))[:, 0].astype(np.float64)
    indices = sampler(times)
    frames = reader.get_batch(indices.tolist()).asnumpy()
    return VideoClip(frames, times[indices], indices, total, rate)


def _load_torchcodec(path, sampler) -> VideoClip:
    from torchcodec.decoders import VideoDecoder

    try:
        decoder = VideoDecoder(path)
    except (RuntimeError, OSError) as exc:
        if "libtorchcodec" in str(exc) or "FFmpeg" in str(exc):  # its core libraries need a system FFmpeg
            raise AdapterError(
                f"torchcodec is installed but cannot load its FFmpeg-backed core ({str(exc).splitlines()[0]}); "
                "install a system FFmpeg that torchcodec supports, or use backend='pyav'"
            ) from exc
        raise
    meta = decoder.metadata
    total = int(meta.num_frames or len(decoder))
    if total < 1:
        raise VideoDecodeError(f"{path} holds no video frames")
    rate = float(meta.average_fps) if meta.average_fps else None
    times = np.arange(total) / (rate or 1.0)
    indices = sampler(times)
    batch = decoder.get_frames_at(indices.tolist())
    frames = batch.data.permute(0, 2, 3, 1).contiguous().numpy()
    return VideoClip(frames, np.asarray(batch.pts_seconds, dtype=np.float64), indices, total, rate)


def write_video(path, frames: np.ndarray, fps: float = 8.0, codec: str = "mpeg4") -> str:
    """Encode uint8 ``(T, H, W, 3)`` frames to ``path`` with PyAV (H and W are cropped to even numbers)."""
    from fractions import Fraction

    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise AdapterError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    path = os.fspath(path)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "2"}
        for array in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array[:height, :width]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ----------------------------------------------------------------------------------------------- prompts


def _model_type(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise AdapterError("cannot tell the model type: pass a model, its config, or model_type=")
    return model_type


def build_prompt(
    question: str,
    model_type: str,
    num_frames: int,
    *,
    processor=None,
    chat_template: str | None = None,
    system: str | None = None,
) -> str:
    """The prompt text with the video's placeholder(s), rendered by the model's chat template.

    The message is one user turn: the video (one ``image`` part per frame for llava / llava_next, one ``video``
    part otherwise) then the question; the template adds the generation prompt. Template order: ``chat_template``,
    the processor's, its tokenizer's; with none, ``"USER: <placeholders>\\n{question} ASSISTANT:"``.
    """
    parts = [{"type": "image"}] * num_frames if model_type in FRAMES_AS_IMAGES else [{"type": "video"}]
    messages = [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]
    if system:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    template = chat_template or getattr(processor, "chat_template", None)
    tokenizer = getattr(processor, "tokenizer", processor)
    if template is None and tokenizer is not None:
        template = getattr(tokenizer, "chat_template", None)
    if template is not None:
        if processor is not None and hasattr(processor, "apply_chat_template") and not chat_template:
            return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages], chat_template=template, add_generation_prompt=True,
            **_special_tokens(tokenizer),
        )
        return rendered[0]
    if model_type in FRAMES_AS_IMAGES:
        holder = "<image>" * num_frames
    elif model_type in QWEN_TYPES:
        holder = "<|vision_start|><|video_pad|><|vision_end|>"
    else:
        holder = "<video>"
    prefix = f"{system}\n" if system else ""
    return f"{prefix}USER: {holder}\n{question} ASSISTANT:"


def _special_tokens(tokenizer) -> dict:
    if tokenizer is None:
        return {}
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    return {n: getattr(tokenizer, n) for n in names if getattr(tokenizer, n, None) is not None}


# ----------------------------------------------------------------------------------------------- model inputs


def video_inputs(
    processor,
    frames,
    question: str,
    *,
    model_type: str | None = None,
    model=None,
    timestamps: Sequence[float] | None = None,
    fps: float | None = None,
    chat_template: str | None = None,
    system: str | None = None,
    return_prompt: bool = False,
):
    """Model inputs for one video and one question, built by ``processor`` (real or fallback).

    frames: uint8 ``(T, H, W, 3)`` (numpy or torch) or a :class:`VideoClip` (then ``timestamps``/``fps`` come
    from it). ``model_type`` defaults to ``model.config.model_type`` or the processor's own.
    """
    if isinstance(frames, VideoClip):
        timestamps = frames.timestamps if timestamps is None else timestamps
        fps = frames.fps if fps is None else fps
        frames = frames.frames
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise AdapterError(f"frames must be (T, H, W, 3), got shape {frames.shape}")
    if model_type is None:
        model_type = _model_type(model) if model is not None else getattr(processor, "model_type", None)
    if model_type is None:
        raise AdapterError("video_inputs needs model_type= (or model=) to lay out the placeholders")
    num = int(frames.shape[0])
    prompt = build_prompt(question, model_type, num, processor=processor, chat_template=chat_template, system=system)
    if model_type in FRAMES_AS_IMAGES:
        out = processor(text=[prompt], images=[list(frames)], return_tensors="pt")
    elif model_type in QWEN_TYPES:
        out = processor(text=[prompt], videos=[frames], return_tensors="pt", **_qwen_video_kwargs(
            model_type, num, timestamps, fps))
    else:
        out = processor(text=[prompt], videos=[frames], return_tensors="pt")
    return (out, prompt) if return_prompt else out


def _qwen_video_kwargs(model_type, num, timestamps, fps) -> dict:
    """Sampling rate of the frames as given (what Qwen's temporal ids and Qwen3's timestamp text use)."""
    kwargs: dict = {"do_sample_frames": False}
    if timestamps is not None and len(timestamps) > 1:
        span = float(timestamps[-1] - timestamps[0])
        sampled_fps = (len(timestamps) - 1) / span if span > 0 else (fps or 1.0)
    else:
        sampled_fps = fps or 1.0
    # The frames given are the whole "video" the processor sees: its metadata says they were taken at sampled_fps
    # (Qwen2.5-VL's second_per_grid_ts = temporal_patch_size / fps, Qwen3-VL's "<t seconds>" text come from it).
    from transformers.video_utils import VideoMetadata

    kwargs["video_metadata"] = [VideoMetadata(total_num_frames=num, fps=sampled_fps, frames_indices=list(range(num)))]
    return kwargs


def load_processor(path_or_model, *, fallback: str = "auto", model_config=None):
    """The processor of a checkpoint folder: ``AutoProcessor`` when it loads, else :class:`LlavaFallbackProcessor`.

    fallback: ``"auto"`` (fall back only when the real processor cannot be built, e.g. torchvision is missing),
    ``"always"`` (never try the real one), ``"never"`` (raise).
    """
    if fallback not in ("auto", "always", "never"):
        raise AdapterError(f"fallback must be 'auto', 'always' or 'never', got {fallback!r}")
    error = None
    if fallback != "always":
        try:
            from transformers import AutoProcessor

            return AutoProcessor.from_pretrained(path_or_model)
        except (ImportError, OSError, ValueError, TypeError) as exc:  # torchvision missing, no processor files
            if fallback == "never":
                raise
            error = exc
    try:
        return LlavaFallbackProcessor.from_pretrained(path_or_model, model_config=model_config)
    except AdapterError as exc:
        if error is not None:
            raise AdapterError(f"{exc} (and the Hugging Face processor failed: {error})") from error
        raise


# ----------------------------------------------------------------------------------------------- fallback


def _select_best_resolution(original_size, possible_resolutions):
    """transformers.image_processing_utils.select_best_resolution, copied (it is 15 lines)."""
    original_height, original_width = original_size
    best_fit, max_effective, min_wasted = None, 0, float("inf")
    for height, width in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        down_w, down_h = int(original_width * scale), int(original_height * scale)
        effective = min(down_w * down_h, original_width * original_height)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted, best_fit = effective, wasted, (height, width)
    return best_fit


def _patch_output_size(height, width, target):
    target_height, target_width = target
    scale_w, scale_h = target_width / width, target_height / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_height), target_width
    return target_height, min(math.ceil(width * scale_h), target_width)


class LlavaFallbackProcessor:
    """The LLaVA-family processors (llava, llava_next, llava_next_video, llava_onevision videos) in plain torch.

    What it reproduces, step for step, of the transformers 5.x torchvision-backend processors (tests compare it
    with the real ones to float tolerance):

    - pixels: ``torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False)`` on the uint8
      frames (the very call torchvision's ``resize`` makes on CPU), resize rules ``shortest_edge`` (the long side
      ``int(size * long / short)``) or ``height``/``width``; centre crop (``int((H - h) / 2)`` offsets) where the
      class crops (CLIP classes); rescale 1/255 and normalise with the processor's mean/std in float32.
      LLaVA-NeXT anyres: best pinpoint resolution (``select_best_resolution``), aspect-preserving resize, centred
      zero padding, tiles of the crop size, base image first, every tile resized + cropped + normalised;
      ``image_sizes`` = original (H, W).
    - placeholders: llava ``(S/p)^2 + 1 - 1`` per frame (CLS added then dropped by the "default" strategy),
      llava_next base + unpadded anyres grid + one newline per row, llava_next_video ``(S/p)^2 // 4`` per frame,
      llava_onevision ``ceil(sqrt(N)/2)^2`` per frame + 1 newline per video; the text is tokenised with the
      checkpoint's tokenizer after expansion, as the processors do.

    Not reproduced: LLaVA's optional pad-to-square (``do_pad=True`` on ``LlavaImageProcessor``), still images with
    the OneVision anyres image path, grayscale/RGBA conversion (frames must already be RGB), GPU processing, the
    Qwen family (use its HF processor, which needs torchvision), and PIL-backend processors, which resize
    differently.
    """

    def __init__(
        self,
        model_type: str,
        tokenizer,
        *,
        image_size: int,
        patch_size: int,
        vision_feature_select_strategy: str = "default",
        num_additional_image_tokens: int = 1,
        image_grid_pinpoints=None,
        size: dict | None = None,
        crop_size: dict | None = None,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        rescale_factor: float = 1 / 255,
        image_token: str = "<image>",
        video_token: str = "<video>",
        chat_template: str | None = None,
    ):
        if model_type not in FALLBACK_MODEL_TYPES:
            raise AdapterError(
                f"the torch-only fallback processor covers {list(FALLBACK_MODEL_TYPES)}, not {model_type!r}; "
                "install torchvision and use the model's own AutoProcessor"
            )
        self.model_type = model_type
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = int(num_additional_image_tokens)
        self.image_grid_pinpoints = [list(p) for p in image_grid_pinpoints] if image_grid_pinpoints else None
        if model_type == "llava_onevision":
            self.size = dict(size or {"height": self.image_size, "width": self.image_size})
            self.crop_size = None
        else:
            self.size = dict(size or {"shortest_edge": self.image_size})
            self.crop_size = dict(crop_size or {"height": self.image_size, "width": self.image_size})
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.rescale_factor = float(rescale_factor)
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        self.video_token = getattr(tokenizer, "video_token", None) or video_token
        self.chat_template = chat_template

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_model_config(cls, config, tokenizer, **overrides) -> LlavaFallbackProcessor:
        """Everything from the model config (sizes, strategy, pinpoints) and HF class defaults (CLIP mean/std)."""
        model_type = config.model_type
        vision = config.vision_config
        additional = 1 if getattr(vision, "model_type", "") == "clip_vision_model" else 0
        kwargs = dict(
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            vision_feature_select_strategy=getattr(config, "vision_feature_select_strategy", "default"),
            num_additional_image_tokens=additional,
            image_grid_pinpoints=getattr(config, "image_grid_pinpoints", None),
        )
        vocab = tokenizer.convert_ids_to_tokens
        if getattr(config, "image_token_id", None) is not None:
            kwargs["image_token"] = vocab(int(config.image_token_id))
        if getattr(config, "video_token_id", None) is not None:
            kwargs["video_token"] = vocab(int(config.video_token_id))
        kwargs.update(overrides)
        return cls(model_type, tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, path, model_config=None) -> LlavaFallbackProcessor:
        """Read a checkpoint folder: config.json, the tokenizer, and (when present) the processor JSON files
        (``preprocessor_config.json``, ``video_preprocessor_config.json``, ``processor_config.json``) and chat
        template (``chat_template.jinja`` / ``chat_template.json``) -- plain files, no torchvision."""
        from transformers import AutoConfig, AutoTokenizer

        folder = Path(path)
        config = model_config if model_config is not None else AutoConfig.from_pretrained(path)
        if config.model_type not in FALLBACK_MODEL_TYPES:
            raise AdapterError(
                f"no torch-only processor for {config.model_type!r} (covers {list(FALLBACK_MODEL_TYPES)}); install "
                "torchvision so the model's AutoProcessor can load"
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        overrides: dict = {}
        video = config.model_type in ("llava_next_video", "llava_onevision")
        combined = _read_json(folder / "processor_config.json")  # transformers 5 nests the sub-processors here
        sources = [
            _read_json(folder / "preprocessor_config.json"),
            combined.get("image_processor", {}),
            _read_json(folder / "video_preprocessor_config.json") if video else {},
            combined.get("video_processor", {}) if video else {},  # the video processor wins for video inputs
        ]
        for data in sources:
            for key in ("image_mean", "image_std", "size", "crop_size", "rescale_factor", "image_grid_pinpoints"):
                if data.get(key) is not None:
                    overrides[key] = data[key]
        for key in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens"):
            if combined.get(key) is not None:
                overrides[key] = combined[key]
        template = None
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        elif (folder / "chat_template.json").is_file():
            template = _read_json(folder / "chat_template.json").get("chat_template")
        overrides["chat_template"] = template or getattr(tokenizer, "chat_template", None)
        return cls.from_model_config(config, tokenizer, **overrides)

    # --- pixels ----------------------------------------------------------------------------------
    def _resize(self, images, size: dict):
        import torch.nn.functional as F

        height, width = images.shape[-2:]
        if size.get("shortest_edge"):
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
            new = (new_long, new_short) if width <= height else (new_short, new_long)
        else:
            new = (size["height"], size["width"])
        if tuple(new) == (height, width):
            return images
        return F.interpolate(images, size=list(new), mode="bicubic", align_corners=False, antialias=True)

    def _crop(self, images):
        if not self.crop_size:
            return images
        import torch.nn.functional as F

        ch, cw = self.crop_size["height"], self.crop_size["width"]
        h, w = images.shape[-2:]
        if ch > h or cw > w:
            pads = [(cw - w) // 2 if cw > w else 0, (cw - w + 1) // 2 if cw > w else 0,
                    (ch - h) // 2 if ch > h else 0, (ch - h + 1) // 2 if ch > h else 0]  # fmt: skip
            images = F.pad(images, pads)
            h, w = images.shape[-2:]
        top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
        return images[..., top : top + ch, left : left + cw]

    def _normalize(self, images):
        import torch

        mean = torch.tensor(self.image_mean) * (1.0 / self.rescale_factor)
        std = torch.tensor(self.image_std) * (1.0 / self.rescale_factor)
        return (images.to(torch.float32) - mean[:, None, None]) / std[:, None, None]

    def _standard(self, images):
        """resize -> crop -> rescale + normalise, for (N, 3, H, W) uint8."""
        return self._normalize(self._crop(self._resize(images, self.size)))

    def _anyres(self, image):
        """One frame (3, H, W) uint8 -> (tiles, 3, S, S) as LlavaNextImageProcessor builds it."""
        import torch
        import torch.nn.functional as F

        height, width = image.shape[-2:]
        best = _select_best_resolution((height, width), self.image_grid_pinpoints)
        new_h, new_w = _patch_output_size(height, width, best)
        resized = self._resize(image[None], {"height": new_h, "width": new_w})[0]
        pad_x, r_x = divmod(best[1] - new_w, 2)
        pad_y, r_y = divmod(best[0] - new_h, 2)
        padded = F.pad(resized, [pad_x, pad_x + r_x, pad_y, pad_y + r_y])
        tile = self.crop_size["height"] if self.crop_size else self.size.get("height", self.size.get("shortest_edge"))
        tiles = [padded[..., i : i + tile, j : j + tile] for i in range(0, best[0], tile) for j in range(0, best[1], tile)]
        if self.size.get("height"):
            base_size = (self.size["height"], self.size["width"])
        else:
            base_size = (self.size["shortest_edge"], self.size["shortest_edge"])
        base = self._resize(image[None], {"height": base_size[0], "width": base_size[1]})[0]
        out = []
        for part in [base, *tiles]:  # grouped by shape in HF; per tile here (same ops, same numbers)
            out.append(self._standard(part[None])[0])
        return torch.stack(out)

    # --- placeholder counts ----------------------------------------------------------------------
    def _next_tokens(self, orig_h: int, orig_w: int, height: int, width: int) -> int:
        best_h, best_w = _select_best_resolution((orig_h, orig_w), self.image_grid_pinpoints)
        scale_h, scale_w = best_h // height, best_w // width
        ph, pw = height // self.patch_size, width // self.patch_size
        cur_h, cur_w = ph * scale_h, pw * scale_w
        if orig_w / orig_h > cur_w / cur_h:
            new_h = int(round(orig_h * (cur_w / orig_w), 7))
            cur_h -= ((cur_h - new_h) // 2) * 2
        else:
            new_w = int(round(orig_w * (cur_h / orig_h), 7))
            cur_w -= ((cur_w - new_w) // 2) * 2
        count = cur_h * cur_w + cur_h + ph * pw + self.num_additional_image_tokens
        return count - 1 if self.vision_feature_select_strategy == "default" else count

    def _frame_tokens(self, side_h: int, side_w: int) -> int:
        n = (side_h // self.patch_size) * (side_w // self.patch_size)
        if self.model_type == "llava":
            n += self.num_additional_image_tokens
            return n - 1 if self.vision_feature_select_strategy == "default" else n
        if self.model_type == "llava_next_video":
            return n // 4
        pooled = math.ceil(int(math.sqrt(n)) / 2)  # llava_onevision
        return pooled * pooled

    # --- the call --------------------------------------------------------------------------------
    def __call__(self, text, images=None, videos=None, return_tensors: str = "pt", padding: bool = True, **_):
        import torch

        texts = [text] if isinstance(text, str) else list(text)
        out: dict = {}
        if self.model_type in FRAMES_AS_IMAGES:
            if videos is not None:
                raise AdapterError(f"{self.model_type} takes a video as a list of images (images=[frames])")
            groups = [list(g) for g in (images or [])]
            if len(groups) not in (0, len(texts)):
                raise AdapterError(f"{len(groups)} image lists for {len(texts)} texts")
            counts: list[list[int]] = []
            pixels, sizes = [], []
            for group in groups:
                frames = _as_chw(group)
                if self.model_type == "llava":
                    processed = self._standard(frames)
                    pixels.append(processed)
                    counts.append([self._frame_tokens(*processed.shape[-2:])] * len(group))
                else:
                    tiles = [self._anyres(f) for f in frames]
                    pixels.extend(tiles)
                    h, w = frames.shape[-2:]
                    sizes.extend([[int(h), int(w)]] * len(group))
                    counts.append([self._next_tokens(int(h), int(w), *tiles[0].shape[-2:])] * len(group))
            if pixels:
                if self.model_type == "llava":
                    out["pixel_values"] = torch.cat(pixels)
                else:
                    most = max(p.shape[0] for p in pixels)
                    out["pixel_values"] = torch.stack(
                        [torch.nn.functional.pad(p, [0, 0, 0, 0, 0, 0, 0, most - p.shape[0]]) for p in pixels]
                    )
                    out["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
            texts = [_expand(t, self.image_token, c) for t, c in zip(texts, counts or [[]] * len(texts))]
        else:
            if images is not None:
                raise AdapterError("the fallback processor handles videos only for this model type")
            vids = list(videos or [])
            if len(vids) not in (0, len(texts)):
                raise AdapterError(f"{len(vids)} videos for {len(texts)} texts")
            processed = [self._standard(_as_chw(v)) for v in vids]
            if processed:
                if len({p.shape for p in processed}) > 1:
                    raise AdapterError("videos in one batch must have the same frame count and size")
                out["pixel_values_videos"] = torch.stack(processed)
            counts = []
            for p in processed:
                n = p.shape[0] * self._frame_tokens(*p.shape[-2:])
                counts.append([n + 1 if self.model_type == "llava_onevision" else n])
            texts = [_expand(t, self.video_token, c) for t, c in zip(texts, counts or [[]] * len(texts))]
        encoded = self.tokenizer(texts, padding=padding, return_tensors=return_tensors)
        from transformers import BatchFeature

        return BatchFeature({**dict(encoded), **out})

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = False, **_):
        if tokenize:
            raise AdapterError("the fallback processor renders text only (tokenize=False)")
        template = self.chat_template or getattr(self.tokenizer, "chat_template", None)
        if template is None:
            raise AdapterError("no chat template in this checkpoint; pass chat_template=")
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages], chat_template=template, add_generation_prompt=add_generation_prompt,
            **_special_tokens(self.tokenizer),
        )
        return rendered[0]

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def _as_chw(frames):
    """uint8 frames (T, H, W, 3) (array, tensor or list of arrays) -> torch (T, 3, H, W) uint8."""
    import torch

    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f) for f in frames])
    tensor = torch.as_tensor(np.asarray(frames))
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise AdapterError(f"frames must be RGB (T, H, W, 3), got shape {tuple(tensor.shape)}")
    if tensor.dtype != torch.uint8:
        raise AdapterError(f"frames must be uint8, got {tensor.dtype}")
    return tensor.permute(0, 3, 1, 2).contiguous()


def _expand(text: str, token: str, counts: list[int]) -> str:
    """Replace the i-th ``token`` in ``text`` by ``counts[i]`` copies (as the HF processors do)."""
    pieces = text.split(token)
    if len(pieces) - 1 != len(counts):
        raise AdapterError(f"the text has {len(pieces) - 1} {token} placeholders for {len(counts)} visual inputs")
    out = [pieces[0]]
    for n, piece in zip(counts, pieces[1:]):
        out.append(token * n)
        out.append(piece)
    return "".join(out)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path} is not valid JSON: {exc}") from exc
