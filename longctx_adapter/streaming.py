"""Streaming video ingestion: decode, preprocess, encode and pool a video a chunk of frames at a time.

    handle = apply_adapter(model, config)                  # frame-local pooling stages
    video = encode_video(model, frames, processor=processor, chunk_frames=16)
    output = model.generate(**video.inputs(prompt), max_new_tokens=32)

`frames` is an iterable of frames or of chunks of frames (numpy arrays or tensors, (H, W, 3) or (T, H, W, 3)),
one (T, H, W, 3) array, or a video file path (decoded with PyAV a chunk at a time, `num_frames` sampled uniformly).
Each chunk goes through the processor's video processor, the family's stock encoder and the adapter's pooling,
and only pooled tokens are kept, so the pixels of the whole video never exist: ingestion memory is one chunk's
pixels and encoder activations plus the pooled features. The result equals the one-shot path (pixels to
`generate` with the same pooling and `vision_chunk_frames`) within the chunked-encoding guarantee
(longctx_adapter/hooks/chunking.py). Qwen3-VL's video processor sizes frames by a pixel budget over the whole video,
so there every chunk is resized to the whole video's frame size first (`_WholeVideoSize`; the frame count must be
known up front). The model side is longctx_adapter/hooks/streaming.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from longctx_adapter.errors import AdapterError, VideoDecodeError
from longctx_adapter.hooks.handle import handle_of
from longctx_adapter.hooks.streaming import EncodedVideo, StreamEncoder, stream_plan

__all__ = ["EncodedVideo", "FrameStream", "encode_video", "index_video"]


def encode_video(
    model,
    frames,
    processor=None,
    *,
    chunk_frames: int | None = None,
    num_frames: int | None = None,
    total_frames: int | None = None,
    fps: float | None = None,
    timestamps=None,
) -> EncodedVideo:
    """Encode and pool one video chunk by chunk for an adapted model; see the module docstring.

    chunk_frames: input frames per chunk (default: the adapter's vision_chunk_frames); the pooling stages must be
    frame-local at that size. num_frames: for a file path, frames sampled uniformly (default every frame).
    total_frames: the video's frame count when `frames` is a generator and the video processor sizes frames by the
    whole video (Qwen3-VL); a file, an array or a list gives it itself.
    fps / timestamps: the sampled frames' rate or times in seconds (Qwen-VL's temporal ids need them; a file
    gives them itself).
    """
    handle = handle_of(model)
    if handle is None:
        raise AdapterError("encode_video needs an adapted model: call apply_adapter(model, config) first")
    plan = stream_plan(handle.family, model.config, handle.config, chunk_frames)
    if processor is None:
        raise AdapterError("encode_video needs the model's processor (AutoProcessor.from_pretrained(checkpoint))")
    if isinstance(frames, (str, os.PathLike)):
        frames = FrameStream(frames, plan.chunk_frames, num_frames=num_frames)
    elif num_frames is not None:
        raise AdapterError("num_frames samples a video file; for frames in memory pass the frames you want")
    if isinstance(frames, FrameStream):
        timestamps = frames.timestamps if timestamps is None else timestamps
        fps = frames.sampled_fps if fps is None else fps
    family = handle.family
    video_processor = getattr(processor, "video_processor", None)
    if video_processor is None:
        raise AdapterError(f"{type(processor).__name__} has no video_processor; pass the model's own processor")
    _check_processor(video_processor)
    sizer = _WholeVideoSize.for_processor(video_processor, _frame_count(frames, total_frames))

    def processor_kwargs(count: int) -> dict:
        if family.processor_kwargs is None:
            return {}
        return family.processor_kwargs(count, None, fps if fps is not None else _rate(timestamps))

    encoder = StreamEncoder(handle, plan)
    device, dtype = _pixel_target(model)
    first = None
    for chunk in _chunks(frames, plan):
        if first is None and not family.blocks_per_frame:
            first = _copy(chunk[: plan.step])  # the prompt's layout comes from one temporal patch of frames
        count = len(chunk)
        size_kwargs = {}
        if sizer is not None:
            chunk, size_kwargs = sizer(chunk)
        out = video_processor(videos=[chunk], return_tensors="pt", **size_kwargs, **processor_kwargs(count))
        kwargs = {k: out[k] for k in ("pixel_values_videos", "video_grid_thw") if k in out}
        kwargs["pixel_values_videos"] = kwargs["pixel_values_videos"].to(device=device, dtype=dtype)
        if "video_grid_thw" in kwargs:
            kwargs["video_grid_thw"] = kwargs["video_grid_thw"].to(device)
        encoder.add(kwargs, count)
        out = kwargs = chunk = None  # this chunk's pixels: freed before the next chunk is decoded
    if sizer is not None:
        sizer.check_count(encoder.frames)
    # Qwen3-VL's prompt holds a timestamped block per grid frame: its layout needs the whole video's metadata
    prompt_count = encoder.frames if family.blocks_per_frame else plan.step
    return encoder.finish(prompt_frames=first, processor=processor, processor_kwargs=processor_kwargs(prompt_count))


def _rate(timestamps) -> float | None:
    if timestamps is None or len(timestamps) < 2:
        return None
    span = float(timestamps[-1] - timestamps[0])
    return (len(timestamps) - 1) / span if span > 0 else None


def _check_processor(video_processor) -> None:
    """Refuse preprocessing whose per-frame result depends on the whole video's frame count."""
    if getattr(video_processor, "cap_pixels_per_frame", None):
        raise AdapterError(
            "the video processor caps each frame's pixels by a budget shared by the whole video "
            "(cap_pixels_per_frame=True), which a chunk cannot know; set video_processor.cap_pixels_per_frame = False "
            "(bound frames with min_pixels/max_pixels instead) or pass pixels to generate"
        )


def _frame_count(frames, total_frames: int | None) -> int | None:
    """The video's frame count before any frame is decoded, where the input tells it (None: unknown)."""
    bad = isinstance(total_frames, bool) or not isinstance(total_frames, int) or total_frames < 1
    if total_frames is not None and bad:
        raise AdapterError(f"total_frames must be a positive int, got {total_frames!r}")
    known = None
    if isinstance(frames, FrameStream):
        known = len(frames)
    elif isinstance(frames, (np.ndarray, torch.Tensor)):
        known = int(frames.shape[0]) if frames.ndim == 4 else None
    elif isinstance(frames, (list, tuple)) and all(getattr(item, "ndim", None) in (3, 4) for item in frames):
        known = sum(1 if item.ndim == 3 else int(item.shape[0]) for item in frames)
    if known is not None and total_frames is not None and known != total_frames:
        raise AdapterError(f"total_frames={total_frames} but the frames given hold {known}; drop total_frames")
    return known if known is not None else total_frames


class _WholeVideoSize:
    """Every chunk at the frame size the whole video gets, for a video processor whose pixel budget is shared by all
    frames (Qwen3-VL: `smart_resize(num_frames, ...)` bounds t*h*w), so a chunk alone would be sized differently.

    The size is HF's own `smart_resize` for the whole video's frame count (checked against the processor's
    `get_num_of_video_patches`); each chunk is resized with the same torchvision resize the processor applies and
    then processed with `do_resize=False`, so its pixels equal the one-shot call's."""

    def __init__(self, video_processor, total_frames: int):
        self.video_processor, self.total_frames, self.size = video_processor, total_frames, None

    @classmethod
    def for_processor(cls, video_processor, total_frames: int | None):
        try:
            from transformers import Qwen3VLVideoProcessor
        except ImportError:  # a transformers without Qwen3-VL
            return None
        if not isinstance(video_processor, Qwen3VLVideoProcessor) or not video_processor.do_resize:
            return None
        if total_frames is None:
            raise AdapterError(
                f"{type(video_processor).__name__} sizes every frame by a pixel budget shared by the whole video, so "
                "encode_video needs the frame count before the first chunk: pass total_frames= with a generator of "
                "frames, or pass a file path, a (T, H, W, 3) array or a list of frame arrays"
            )
        return cls(video_processor, total_frames)

    def _target(self, height: int, width: int) -> tuple[int, int]:
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

        vp = self.video_processor
        size = vp.size
        try:
            target = smart_resize(
                self.total_frames,
                height,
                width,
                temporal_factor=vp.temporal_patch_size,
                factor=vp.patch_size * vp.merge_size,
                min_pixels=size["shortest_edge"],
                max_pixels=size["longest_edge"],
            )
            expected = vp.get_num_of_video_patches(self.total_frames, height, width)
        except ValueError as exc:  # e.g. fewer frames than one temporal patch
            raise AdapterError(f"the video processor refuses this video ({exc})") from exc
        grid_t = -(-self.total_frames // vp.temporal_patch_size)
        if grid_t * (target[0] // vp.patch_size) * (target[1] // vp.patch_size) != expected:
            raise AdapterError(
                f"internal: the whole video's frame size {target} disagrees with {type(vp).__name__}'s patch count "
                f"({expected}); pass pixels to generate"
            )
        return target

    def __call__(self, chunk) -> tuple:
        """(the chunk resized as channels-first torch frames, the processor kwargs that keep that size)."""
        from transformers import Qwen3VLVideoProcessor
        from transformers.image_utils import ChannelDimension, SizeDict, infer_channel_dimension_format

        frames = torch.from_numpy(np.ascontiguousarray(chunk)) if isinstance(chunk, np.ndarray) else chunk
        if infer_channel_dimension_format(frames) == ChannelDimension.LAST:
            frames = frames.permute(0, 3, 1, 2).contiguous()
        height, width = (int(v) for v in frames.shape[-2:])
        if self.size is None:
            self.size = (height, width), self._target(height, width)
        elif self.size[0] != (height, width):
            raise AdapterError(
                f"the frames of one video must share one size; a chunk has {height}x{width} frames after "
                f"{self.size[0][0]}x{self.size[0][1]}"
            )
        (height, width), vp = self.size[1], self.video_processor
        # the resize Qwen3VLVideoProcessor.resize itself delegates to, at the whole video's size
        resize = super(Qwen3VLVideoProcessor, vp).resize
        frames = resize(image=frames, size=SizeDict(height=height, width=width), resample=vp.resample)
        return frames, {"do_resize": False, "input_data_format": ChannelDimension.FIRST}

    def check_count(self, frames: int) -> None:
        if frames != self.total_frames:
            raise AdapterError(
                f"total_frames={self.total_frames} but the frames held {frames}; every chunk was sized for "
                f"{self.total_frames} frames, so pass the true count"
            )


def _pixel_target(model) -> tuple:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _copy(frames):
    return frames.clone() if isinstance(frames, torch.Tensor) else np.array(frames, copy=True)


def _as_frames(item) -> list:
    """One item of the caller's iterable as a list of (H, W, C) / (C, H, W) frames (a chunk is split, not copied)."""
    if not isinstance(item, (np.ndarray, torch.Tensor)):
        item = np.asarray(item)
    if item.ndim == 3:
        return [item]
    if item.ndim == 4:
        return list(item)
    raise AdapterError(f"frames must be (H, W, 3) frames or (T, H, W, 3) chunks, got shape {tuple(item.shape)}")


def _stack(frames: list):
    return torch.stack(frames) if isinstance(frames[0], torch.Tensor) else np.stack(frames)


def _chunks(frames, plan) -> Iterator:
    """Chunks of exactly `chunk_frames` frames, however the caller's iterable is cut; a last chunk that the stages'
    temporal reduction does not divide joins the one before (the rule of chunked encoding), so one full chunk is
    held back until the next frames arrive."""
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        if frames.ndim != 4:
            raise AdapterError(f"a video array must be (T, H, W, 3), got shape {tuple(frames.shape)}")
        video = frames
        frames = (video[i : i + plan.chunk_frames] for i in range(0, video.shape[0], plan.chunk_frames))
    elif not isinstance(frames, Iterable):
        raise AdapterError(f"frames must be an iterable of frames or chunks, an array or a file path, not {type(frames)}")
    buffer: list = []
    pending = None
    for item in frames:
        buffer.extend(_as_frames(item))
        while len(buffer) >= plan.chunk_frames:
            if pending is not None:
                yield pending
            pending, buffer = _stack(buffer[: plan.chunk_frames]), buffer[plan.chunk_frames :]
    if buffer:
        grid_frames = -(-len(buffer) // plan.step)
        if pending is not None and grid_frames % plan.reduction:
            pending, buffer = _stack([*list(pending), *buffer]), []
    if pending is not None:
        yield pending
    if buffer:
        yield _stack(buffer)


def index_video(path) -> tuple[list[int], np.ndarray, float | None]:
    """Pass 1 of a PyAV decode: the frames' presentation timestamps from the packets (demux only, no decoding), their
    times in seconds from the first frame, and the stream's average rate.

    Ours, not ``transformers.video_utils.read_video_pyav``: that one takes the frame count from the header (0 where
    the container records none) and silently returns fewer frames from a truncated file; here frames are counted
    from the packets and a file with fewer than its header declares is an error."""
    import av

    try:
        container = av.open(path, mode="r", metadata_errors="ignore")
    except Exception as exc:  # PyAV's own error types
        raise VideoDecodeError(f"cannot open {path} as a video ({type(exc).__name__}: {exc})") from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path} has no video stream")
        stream = container.streams.video[0]
        base = stream.time_base
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
    times = np.array([(p - pts[0]) * base for p in pts], dtype=np.float64) if base else np.arange(len(pts)) / (rate or 1.0)
    return pts, times, rate


class FrameStream:
    """A video file decoded with PyAV one chunk of frames at a time (the frames never all exist at once).

    Pass 1 lists the frames from packet timestamps (demux only); iterating decodes once from the start and yields
    (n, H, W, 3) uint8 RGB chunks of the sampled frames. `pick(times, rate) -> indices` chooses the frames (default:
    `num_frames` spread uniformly, first and last included, or every frame); `timestamps` are the sampled
    frames' times in seconds.
    """

    def __init__(self, path, chunk_frames: int, *, num_frames: int | None = None, pick=None):
        self.path, self.chunk_frames = os.fspath(path), int(chunk_frames)
        if not os.path.isfile(self.path):
            raise VideoDecodeError(f"video file not found: {self.path}")
        pts, times, self.fps = index_video(self.path)
        if pick is not None:
            indices = np.asarray(pick(times, self.fps), dtype=np.int64)
        elif num_frames is not None:
            if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
                raise AdapterError(f"num_frames must be a positive integer, got {num_frames!r}")
            indices = np.unique(np.rint(np.linspace(0, len(pts) - 1, min(int(num_frames), len(pts)))).astype(np.int64))
        else:
            indices = np.arange(len(pts))
        self.total_frames = len(pts)
        self.indices = indices
        self.timestamps = times[indices]
        self._wanted = [pts[i] for i in indices.tolist()]

    @property
    def sampled_fps(self) -> float | None:
        return _rate(self.timestamps) or self.fps

    def __len__(self) -> int:
        return len(self._wanted)

    def __iter__(self) -> Iterator[np.ndarray]:
        import av

        wanted, chunk, position = self._wanted, [], 0
        with av.open(self.path, mode="r", metadata_errors="ignore") as container:
            for frame in container.decode(container.streams.video[0]):
                while position < len(wanted) and frame.pts == wanted[position]:
                    chunk.append(frame.to_ndarray(format="rgb24"))
                    position += 1
                    if len(chunk) == self.chunk_frames:
                        yield np.stack(chunk)
                        chunk = []
                if position == len(wanted):
                    break
        if position < len(wanted):
            raise VideoDecodeError(f"{self.path} is truncated or corrupt: {len(wanted) - position} sampled frames missing")
        if chunk:
            yield np.stack(chunk)
