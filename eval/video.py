"""Video files -> sampled frames -> model inputs.

Decoding
--------
:func:`load_video` decodes a file with PyAV (``backend="pyav"``, the default), decord or torchcodec (imported only
when asked for) and samples frames:

- ``num_frames=N``: N frame indices spread uniformly over the whole video, ``round(linspace(0, total - 1, N))``
  (first and last frame included);
- ``fps=F``: one frame every ``1/F`` seconds of presentation time starting at the first frame (the frame shown at
  that instant), then uniformly thinned to ``max_frames`` when there are more;
- neither: every frame (thinned to ``max_frames``).

``sampling="lmms"`` takes lmms-eval 0.7's rule instead (its ``read_video``, which its built-in video models use):
see :func:`lmms_sample_indices`. The lmms-eval plugin samples this way so its frames are the built-in models'.

Under either rule, asking for more frames than there are (``N`` above the video's frame count, or ``F`` above its
frame rate) never repeats a frame. The default rule samples every frame once and a :class:`FrameCountWarning` names the real count (the
command-line tools print it as one ``warning:`` line). A clip's length is therefore at most the video's frame count.

It returns a :class:`VideoClip`: ``frames`` uint8 ``(T, H, W, 3)`` RGB, ``timestamps`` in seconds, the source
indices, fps and frame count. A missing, empty, truncated or undecodable file raises :class:`VideoDecodeError`
(an ``AdapterError``, so a ``ValueError``) naming the file and the problem; nothing waits on input that never
comes (files are read to their end once to list the frames, then decoded once).

Model inputs
------------
:func:`video_inputs` turns frames plus a question into what a model's ``forward``/``generate`` takes: it renders
the chat template and calls the model's own Hugging Face processor (:func:`load_processor`: the checkpoint's
``AutoProcessor``, which needs torchvision), exactly as a user would (LLaVA / LLaVA-NeXT get the video as one image
per frame, as they take no videos; the Qwen family gets the source fps so its temporal ids and timestamps are
right). The processor's own metadata type (``transformers.video_utils.VideoMetadata``) carries that rate; sampling
and decoding stay ours where they are stricter than ``video_utils`` (see :func:`sample_indices` and the readers).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from longctx_adapter.errors import AdapterError, VideoDecodeError
from longctx_adapter.registry import family_for

__all__ = [
    "BACKENDS",
    "FrameCountWarning",
    "VIDEO_QUALITIES",
    "VideoClip",
    "VideoDecodeError",
    "build_prompt",
    "load_processor",
    "SAMPLING_RULES",
    "lmms_sample_indices",
    "load_video",
    "sample_indices",
    "stream_video",
    "video_inputs",
    "write_video",
]

BACKENDS = ("pyav", "decord", "torchcodec")
#: frame sampling rules of :func:`load_video`: this package's own, and lmms-eval's (:func:`lmms_sample_indices`)
SAMPLING_RULES = ("round", "lmms")
#: how to install each backend (PyAV's package is `av`, part of the video extra)
_INSTALL = {
    "pyav": "pip install av, or the video extra: pip install 'longctx-adapter[video]'",
    "decord": "pip install decord, or use the pyav backend",
    "torchcodec": "pip install torchcodec, or use the pyav backend",
}


class FrameCountWarning(UserWarning):
    """More frames were asked for than the video has: every frame is sampled once instead (none repeated)."""


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
    source: str = "the video",
) -> np.ndarray:
    """Indices of the frames to keep out of ``total`` (see the module docstring for the rules); ``source`` names
    the frames in the warning.

    Ours, not ``transformers.video_utils.default_sample_indices_fn``: that one drops the last frame
    (``arange(n) * total // n``) and refuses more frames than the video has, where we keep first and last and, when
    asked for more frames than there are, take each frame once with a :class:`FrameCountWarning`.

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
        if num_frames > total:
            warnings.warn(f"asked for {int(num_frames)} frames but {source} has {total}; sampling all {total} "
                          "(no frame repeated)", FrameCountWarning, stacklevel=2)
            return np.arange(total, dtype=np.int64)
        return np.rint(np.linspace(0, total - 1, int(num_frames))).astype(np.int64)
    if fps is not None:
        if not fps > 0 or not np.isfinite(fps):
            raise AdapterError(f"fps must be a positive finite number, got {fps!r}")
        t = np.asarray(times if times is not None else np.arange(total), dtype=np.float64)
        if t.shape[0] != total:
            raise AdapterError(f"times has {t.shape[0]} entries for {total} frames")
        wanted = int(np.floor((t[-1] - t[0]) * fps + 1e-9)) + 1  # sample times in [first, last], counted first
        if wanted > total:
            idx = np.arange(total, dtype=np.int64)
        else:
            targets = np.arange(t[0], t[-1] + 1e-9, 1.0 / fps)
            idx = np.searchsorted(t, targets + 1e-9, side="right") - 1  # the frame on screen at each target time
            idx = np.clip(idx, 0, total - 1)
            wanted = len(idx)
            idx = np.unique(idx)
        if len(idx) < (wanted if max_frames is None else min(wanted, max_frames)):  # the cap did not hide it
            span = t[-1] - t[0]
            rate = f" (about {(total - 1) / span:.3g} fps)" if span > 0 else ""
            warnings.warn(f"asked for {fps:g} fps but {source} has {total} frames over {span:.3g} s{rate}; "
                          f"sampling every frame once ({len(idx)})", FrameCountWarning, stacklevel=2)
    else:
        idx = np.arange(total, dtype=np.int64)
    if max_frames is not None:
        if max_frames < 1:
            raise AdapterError(f"max_frames must be positive, got {max_frames!r}")
        if idx.shape[0] > max_frames:
            idx = idx[np.rint(np.linspace(0, idx.shape[0] - 1, max_frames)).astype(np.int64)]
    return idx.astype(np.int64)


def lmms_sample_indices(
    total: int,
    num_frames: int,
    *,
    fps: float | None = None,
    source_fps: float | None = None,
    force_include_last_frame: bool = False,
) -> np.ndarray:
    """lmms-eval 0.7's frame indices (``lmms_eval.models.model_utils.load_video``: ``_compute_sample_count`` and
    ``_compute_uniform_indices``, the rule of its ``read_video``).

    ``n = min(total, num_frames)`` -- a short video gives every frame once, never repeats -- and with ``fps`` at
    most ``int(total / source_fps * fps)`` (at least 1); indices ``linspace(0, total - 1, n)`` truncated toward
    zero (``dtype=int``). ``force_include_last_frame``: when the last frame is not among them, the first ``n - 1``
    are spread over ``0 .. total - 2`` and the last frame is appended.
    """
    if total < 1:
        raise VideoDecodeError("the video has no frames")
    if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
        raise AdapterError(f"num_frames must be a positive integer, got {num_frames!r}")
    count = min(total, int(num_frames))
    if fps is not None:
        if not fps > 0:
            raise AdapterError(f"fps must be positive, got {fps!r}")
        if source_fps:
            count = min(count, int(total / source_fps * fps))
    count = max(1, count)
    idx = np.linspace(0, total - 1, count, dtype=int)
    if force_include_last_frame and total - 1 not in idx:
        idx = np.append(np.linspace(0, max(0, total - 2), count - 1, dtype=int), total - 1)
    return np.unique(idx).astype(np.int64)


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
    sampling: str = "round",
    force_include_last_frame: bool = False,
) -> VideoClip:
    """Decode ``path`` and sample frames (uniformly ``num_frames``, or at ``fps`` capped at ``max_frames``).

    ``start``/``end`` (seconds from the first frame) restrict sampling to that span (MVBench's bounds).
    ``sampling="lmms"``: lmms-eval's rule (:func:`lmms_sample_indices`): at most ``num_frames`` frames, fewer
    with ``fps`` (``max_frames`` is not used), ``force_include_last_frame`` as lmms-eval's ``read_video``.
    """
    path = _check_file(path)
    if backend not in BACKENDS:
        raise AdapterError(f"unknown video backend {backend!r}; use one of {list(BACKENDS)}")
    if sampling not in SAMPLING_RULES:
        raise AdapterError(f"unknown sampling {sampling!r}; use one of {list(SAMPLING_RULES)}")
    if sampling == "lmms" and (num_frames is None or max_frames is not None):
        raise AdapterError("sampling='lmms' takes num_frames (the most frames, as lmms-eval's num_frm), not max_frames")
    if force_include_last_frame and sampling != "lmms":
        raise AdapterError("force_include_last_frame is part of sampling='lmms'")
    reader = {"pyav": _load_pyav, "decord": _load_decord, "torchcodec": _load_torchcodec}[backend]
    sampler = FrameSampler(num_frames, fps, max_frames, start, end, sampling, force_include_last_frame)
    try:
        clip = reader(path, sampler)
    except (VideoDecodeError, AdapterError):
        raise
    except ImportError as exc:
        raise AdapterError(f"video backend {backend!r} is not installed ({exc}); {_INSTALL[backend]}") from exc
    except Exception as exc:  # every backend has its own error types; one clear message for all of them
        raise VideoDecodeError(f"cannot decode {path} with {backend}: {type(exc).__name__}: {exc}") from exc
    clip.path, clip.backend = path, backend
    return clip


class FrameSampler:
    """A sampling request (count or rate, cap, span in seconds), applied to a list of frame times."""

    def __init__(self, num_frames, fps, max_frames, start, end, rule="round", force_last=False):
        self.num_frames, self.fps, self.max_frames, self.start, self.end = num_frames, fps, max_frames, start, end
        self.rule, self.force_last = rule, force_last

    def __call__(self, times: np.ndarray, rate: float | None = None) -> np.ndarray:
        lo, hi = 0, len(times)
        if self.start is not None:
            lo = int(np.searchsorted(times, float(self.start), side="left"))
        if self.end is not None:
            hi = int(np.searchsorted(times, float(self.end), side="right"))
        lo = min(lo, len(times) - 1)
        hi = min(max(hi, lo + 1), len(times))
        if self.rule == "lmms":
            return lo + lmms_sample_indices(hi - lo, self.num_frames, fps=self.fps, source_fps=rate,
                                            force_include_last_frame=self.force_last)
        bounded = self.start is not None or self.end is not None
        source = f"the {times[lo]:.3g}-{times[hi - 1]:.3g} s span of the video" if bounded else "the video"
        picked = sample_indices(hi - lo, self.num_frames, fps=self.fps, times=times[lo:hi], max_frames=self.max_frames,
                                source=source)
        return lo + picked


def _load_pyav(path, sampler) -> VideoClip:
    """Frames indexed from the packets (``longctx_adapter.streaming.index_video``: truncation is an error), sampled,
    then decoded in one pass; times come from each frame's presentation timestamp."""
    import av

    from longctx_adapter.streaming import index_video

    pts, times, rate = index_video(path)
    indices = sampler(times, rate)
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
    """Ours, not ``read_video_decord``: that one samples by index at the average rate; here ``fps`` sampling uses
    decord's per-frame timestamps (variable frame rate files)."""
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    total = len(reader)
    if total < 1:
        raise VideoDecodeError(f"{path} holds no video frames")
    rate = float(reader.get_avg_fps()) or None
    times = reader.get_frame_timestamp(np.arange(total))[:, 0].astype(np.float64)
    indices = sampler(times, rate)
    frames = reader.get_batch(indices.tolist()).asnumpy()
    return VideoClip(frames, times[indices], indices, total, rate)


def _load_torchcodec(path, sampler) -> VideoClip:
    """Ours, not ``read_video_torchcodec``: that one returns no presentation times and no hint when torchcodec's
    FFmpeg libraries are missing."""
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
    indices = sampler(times, rate)
    batch = decoder.get_frames_at(indices.tolist())
    frames = batch.data.permute(0, 2, 3, 1).contiguous().numpy()
    return VideoClip(frames, np.asarray(batch.pts_seconds, dtype=np.float64), indices, total, rate)


def stream_video(
    path,
    chunk_frames: int,
    num_frames: int | None = None,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
):
    """The frames :func:`load_video` would sample (PyAV, default rule), decoded a chunk of ``chunk_frames`` at a time:
    a ``longctx_adapter.streaming.FrameStream`` to iterate or to pass to ``encode_video``. The file is indexed now
    (a bad file fails here); frames are decoded while iterating."""
    from longctx_adapter.streaming import FrameStream

    path = _check_file(path)
    sampler = FrameSampler(num_frames, fps, max_frames, start, end)
    return FrameStream(path, chunk_frames, pick=sampler)


#: write_video's qualities: (codec, pixel format, encoder options, largest per-pixel error after decoding, in 1/255)
VIDEO_QUALITIES = {
    "lossless": ("libx264rgb", "rgb24", {"crf": "0"}, 0),  # H.264 in RGB, lossless: decodes to the very frames
    "high": ("libx264", "yuv444p", {"crf": "0"}, 2),  # H.264 4:4:4 YUV, lossless in YUV: only RGB<->YUV rounding
}


def write_video(path, frames: np.ndarray, fps: float = 8.0, quality: str = "lossless") -> str:
    """Encode uint8 ``(T, H, W, 3)`` frames to ``path`` with PyAV so that they decode back to the same frames.

    quality: ``lossless`` (default; H.264 RGB, every pixel decodes exactly) or ``high`` (H.264 4:4:4, every pixel
    within 2/255, for decoders without RGB H.264); see ``VIDEO_QUALITIES``. No chroma subsampling and no lossy
    quantizer: a needle drawn in one frame stays in that frame, sharp, at any fps. Any frame size (odd ones too)."""
    from fractions import Fraction

    try:
        import av
    except ImportError as exc:
        raise AdapterError(f"writing videos needs PyAV ({exc}); {_INSTALL['pyav']}") from exc

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
        raise AdapterError(f"frames must be uint8 (T, H, W, 3) with T, H, W >= 1, got {frames.dtype} {frames.shape}")
    if quality not in VIDEO_QUALITIES:
        raise AdapterError(f"unknown video quality {quality!r}; use one of {list(VIDEO_QUALITIES)}")
    if not fps > 0 or not np.isfinite(fps):
        raise AdapterError(f"fps must be a positive finite number, got {fps!r}")
    codec, pix_fmt, options, _ = VIDEO_QUALITIES[quality]
    height, width = frames.shape[1], frames.shape[2]
    path = os.fspath(path)
    with av.open(path, mode="w") as container:
        try:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000), options=dict(options))
        except Exception as exc:  # a PyAV build without libx264
            raise AdapterError(f"this PyAV build cannot encode {codec} ({exc}); install the PyPI wheel of av") from exc
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for array in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
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

    The message is one user turn: the video (one ``image`` part per frame for families that take frames as images,
    llava / llava_next, one ``video`` part otherwise) then the question; the template adds the generation prompt.
    Template order: ``chat_template``, the processor's, its tokenizer's; with none,
    ``"USER: <placeholders>\\n{question} ASSISTANT:"`` with the family's placeholder text.
    """
    family = family_for(model_type)
    as_images = family.modality == "image"
    parts = [{"type": "image"}] * num_frames if as_images else [{"type": "video"}]
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
    holder = family.prompt_placeholder * (num_frames if as_images else 1)
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
    """Model inputs for one video and one question, built by the model's ``processor``.

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
    family = family_for(model_type)
    if family.modality == "image":
        out = processor(text=[prompt], images=[list(frames)], return_tensors="pt")
    else:
        extra = family.processor_kwargs(num, timestamps, fps) if family.processor_kwargs is not None else {}
        out = processor(text=[prompt], videos=[frames], return_tensors="pt", **extra)
    return (out, prompt) if return_prompt else out


def load_processor(path_or_model):
    """The checkpoint's own processor (``AutoProcessor``), or an AdapterError naming what is missing."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path_or_model)
    except ImportError as exc:  # HF's image and video processors need torchvision
        missing = [name for name in ("torchvision", "av") if importlib.util.find_spec(name) is None]
        if missing:
            raise AdapterError(
                f"cannot build the processor of {path_or_model}: {exc}; {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not installed: install the video extra "
                "(pip install 'longctx-adapter[video]': torchvision and PyAV)"
            ) from exc
        hint = _processor_files_hint(path_or_model)
        raise AdapterError(
            f"cannot build the processor of {path_or_model}: {exc}" + (f"; {hint}" if hint else "")
        ) from exc
    except (OSError, ValueError, TypeError) as exc:  # no processor files, or files this transformers cannot read
        raise AdapterError(
            f"cannot load the processor of {path_or_model}: {_processor_files_hint(path_or_model) or exc}"
        ) from exc


_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")


def _processor_files_hint(path_or_model) -> str:
    """What to do when a local checkpoint folder was saved without its processor."""
    if not isinstance(path_or_model, (str, os.PathLike)) or not os.path.isdir(path_or_model):
        return ""
    if any(os.path.isfile(os.path.join(path_or_model, name)) for name in _PROCESSOR_FILES):
        return ""
    return (
        f"the folder has no processor files ({', '.join(_PROCESSOR_FILES[:2])}): save the model's processor "
        "there too (processor.save_pretrained(folder)) or copy them from the original checkpoint"
    )
