"""Streaming ingestion, the model side: a video encoded and pooled one chunk of frames at a time, ahead of the call.

`StreamEncoder` takes the encoder inputs of one chunk at a time (what the processor's video processor returns for
those frames), runs the family's stock encoder on it and pools it with the adapter's frame-local stages (the
machinery of chunked encoding, hooks/chunking.py), keeping only pooled tokens. `finish()` gives an `EncodedVideo`
that an adapted `forward`/`generate` takes as `encoded_video=`: the call path then uses its pooled segment instead
of encoding pixels, and everything after the encoder (placeholder rewrite, stats, RoPE extension, Qwen M-RoPE ids and
grids) runs as in the one-shot path. The frames, the processor and files are handled one layer up
(longctx_adapter/streaming.py).

Equality with the one-shot path: the same chunking rule as `vision_chunk_frames` (a last chunk whose length is not a
multiple of the stages' temporal reduction joins the one before), so the guarantee of hooks/chunking.py holds.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.hooks.chunking import ChunkedSegment, _Video
from longctx_adapter.ops.pooling import chunk_plan
from longctx_adapter.ops.tokens import find_runs, resize_runs
from longctx_adapter.registry import families_where, family_for

__all__ = ["EncodedVideo", "StreamEncoder", "stream_plan"]


@dataclass(frozen=True)
class StreamPlan:
    """How a handle streams a video: raw frames per chunk, input frames per grid frame, grid-frame reduction."""

    chunk_frames: int
    step: int
    reduction: int


def stream_plan(family, model_config, config, chunk_frames: int | None) -> StreamPlan:
    """Check that a model (its family and HF config) adapted with `config` can stream at `chunk_frames` input frames
    (None: the config's vision_chunk_frames); refuse clearly otherwise."""
    model_type = model_config.model_type
    if family.split_video is None:
        raise AdapterError(
            f"encode_video needs a model that takes a video as one tensor; {model_type!r} takes frames as separate "
            f"images. It works for {families_where(lambda f: f.split_video is not None)}"
        )
    if config is None or not config.pooling:
        raise AdapterError(
            "encode_video keeps only pooled tokens, and this adapter pools nothing; apply the adapter with a pooling "
            "stage (e.g. AdapterConfig.preset(model_type)) or pass pixels to generate"
        )
    chunk = chunk_frames if chunk_frames is not None else config.vision_chunk_frames
    if chunk is None:
        raise AdapterError("encode_video needs a chunk size: pass chunk_frames= or set vision_chunk_frames")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise AdapterError(f"chunk_frames must be a positive int (frames), got {chunk!r}")
    step = family.temporal_patch(model_config)
    if chunk % step:
        raise AdapterError(f"chunk_frames={chunk} must be a multiple of this model's temporal patch size ({step} frames)")
    local, reduction, reason = chunk_plan(config.pooling, chunk // step)
    if not local:
        raise AdapterError(
            f"encode_video pools each chunk of {chunk} frames on its own, but these pooling stages are not "
            f"frame-local at that chunk size ({reason}); use a chunk_frames the stages divide (e.g. a multiple of "
            "the progressive group or temporal stride), frame-local stages, or pass pixels to generate (one-shot)"
        )
    return StreamPlan(chunk, step, reduction)


@dataclass
class EncodedVideo:
    """One video encoded and pooled ahead of the call; pass it to the adapted model as `encoded_video=`.

    `inputs(text)` builds the rest of the call (input_ids with the video's placeholder run at the stock length,
    Qwen's grid and token types) from a prompt holding the family's video placeholder once. Qwen3-VL's prompt (one
    timestamped block per grid frame) is the processor's own expansion of the whole video's grid and metadata.
    """

    segment: ChunkedSegment
    template_type: type  # the stock encoder's output type, filled afresh on every call
    frames: int  # input frames encoded
    pooling: tuple  # the stages it was pooled with: the call's adapter must use the same
    call_tensors: dict = field(default_factory=dict)  # per-video tensors the call needs (Qwen: video_grid_thw)
    prompt_frames: object = None  # the first temporal patch of frames: the processor lays out the prompt from it
    # (None for Qwen3-VL, whose prompt is expanded from video_grid_thw and processor_kwargs' video_metadata)
    processor: object = None
    processor_kwargs: dict = field(default_factory=dict)
    model_ref: object = None  # weakref to the model it was encoded for

    @property
    def stock_tokens(self) -> int:
        """Placeholders of the video in the stock prompt."""
        return self.segment.stock_tokens

    @property
    def num_tokens(self) -> int:
        """Visual tokens after pooling (what the model will see)."""
        tail = 0 if self.segment.tail is None else self.segment.tail.shape[0]
        return self.segment.pooled.num_tokens + tail

    @property
    def feature_bytes(self) -> int:
        """Bytes held by the pooled features."""
        tensors = [*self.segment.pooled.frames, *([self.segment.tail] if self.segment.tail is not None else [])]
        return sum(t.numel() * t.element_size() for t in tensors)

    def fresh_template(self):
        return self.template_type()

    def inputs(self, text: str, processor=None, **processor_kwargs):
        """The call for prompt `text` (the family's video placeholder once, e.g. from the chat template): a
        BatchFeature with input_ids, attention_mask, the family's other tensors and `encoded_video=self`."""
        processor = processor if processor is not None else self.processor
        if processor is None:
            raise AdapterError("EncodedVideo.inputs needs the model's processor: pass processor=")
        model = self.model_ref() if self.model_ref is not None else None
        if model is None:
            raise AdapterError("the model this video was encoded for no longer exists; encode the video again")
        kwargs = {**self.processor_kwargs, **processor_kwargs}
        once = "the prompt must hold the video placeholder exactly once, as the chat template writes one video"
        family = family_for(model.config.model_type)
        if family.blocks_per_frame:
            return self._frame_block_inputs(processor, model, text, kwargs, once)
        try:
            out = processor(text=[text], videos=[self.prompt_frames], return_tensors="pt", **kwargs)
        except ValueError as exc:  # e.g. the processor counting placeholders against the one video
            raise AdapterError(f"{once} (the processor says: {exc})") from exc
        ids = out["input_ids"]
        runs = find_runs(ids, model.config.video_token_id)
        if len(runs) != 1:
            raise AdapterError(f"{once}; it gave {len(runs)} video placeholder runs")
        extra = {name: (out[name], *fills) for name, fills in family.token_tensors.items() if name in out}
        # one row: nothing to re-pad
        rewritten = resize_runs(ids, runs, [self.stock_tokens], attention_mask=out.get("attention_mask"), extra=extra)
        data = {k: v for k, v in out.items() if k not in family.pixel_keys and k not in self.call_tensors}
        data["input_ids"] = rewritten.input_ids
        if rewritten.attention_mask is not None:
            data["attention_mask"] = rewritten.attention_mask
        data.update(rewritten.extra)
        data.update(self.call_tensors)
        data["encoded_video"] = self
        from transformers import BatchFeature

        return BatchFeature(data)

    def _frame_block_inputs(self, processor, model, text: str, kwargs: dict, once: str):
        """Qwen3-VL: the processor writes one `<t seconds><|vision_start|> ... <|vision_end|>` block per grid frame,
        from the grid and the whole video's metadata alone (`replace_video_token`); the expanded text is tokenized
        and typed as the processor's own call does (`get_text_with_replacements`, its tokenizer,
        `create_mm_token_type_ids`), since calling it with the expanded text and no video is refused."""
        import copy

        from transformers import BatchFeature

        kwargs = dict(kwargs)
        metadata = kwargs.pop("video_metadata", None)
        kwargs.pop("do_sample_frames", None)
        if metadata is None:
            raise AdapterError("EncodedVideo.inputs needs the video's metadata (video_metadata=) for its timestamps")
        video_token = getattr(processor, "video_token", None)
        if video_token is None or not hasattr(processor, "replace_video_token"):
            raise AdapterError(f"{type(processor).__name__} cannot lay out a video prompt; pass the model's processor")
        if text.count(video_token) != 1:
            raise AdapterError(f"{once}; it holds {video_token!r} {text.count(video_token)} times")
        grid = self.call_tensors["video_grid_thw"]
        video = {"video_grid_thw": grid, "video_metadata": copy.deepcopy(list(metadata))}  # HF edits the metadata
        replacement = processor.replace_video_token(video, video_idx=0)
        expanded, _ = processor.get_text_with_replacements([text], [], [replacement], [])
        tokens = processor.tokenizer(expanded, return_tensors="pt", **kwargs)
        ids = tokens["input_ids"]
        runs = find_runs(ids, model.config.video_token_id)
        if len(runs) != int(grid[0, 0]) or sum(run.length for run in runs) != self.stock_tokens:
            raise AdapterError(
                f"internal: the processor laid out {len(runs)} frame blocks of {sum(r.length for r in runs)} "
                f"placeholders for a video of {int(grid[0, 0])} grid frames and {self.stock_tokens} tokens"
            )
        data = {"input_ids": ids, "attention_mask": tokens.get("attention_mask", torch.ones_like(ids))}
        data["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(ids), dtype=torch.long)
        data.update(self.call_tensors)
        data["encoded_video"] = self
        return BatchFeature(data)

    def __repr__(self) -> str:
        return (
            f"EncodedVideo({self.frames} frames, {self.stock_tokens} stock tokens -> {self.num_tokens} pooled, "
            f"{self.feature_bytes / 2**20:.1f} MiB)"
        )


class StreamEncoder:
    """Encode and pool one video a chunk at a time (`add` the encoder inputs of each chunk, then `finish`)."""

    def __init__(self, handle, plan: StreamPlan):
        self.handle, self.plan = handle, plan
        self.video = _Video(handle.config.pooling, True, handle.family.blocks_per_frame)
        self.template_type = None
        self.grid = None  # Qwen-VL: (t so far, h, w) of video_grid_thw
        self.frames = 0

    def add(self, encoder_kwargs: dict, frames: int) -> None:
        handle = self.handle
        family, model = handle.family, handle.model
        with torch.no_grad():
            segments, template = family.encode(model, encoder_kwargs, None, handle.config)
            if len(segments) != 1:
                raise AdapterError(f"internal: one chunk of one video encoded to {len(segments)} segments")
            self.video.add(segments[0])
        self.template_type = type(template)
        segments = template = None  # this chunk's encoder output: freed before the next chunk
        grid = encoder_kwargs.get("video_grid_thw")
        if grid is not None:
            t, h, w = (int(v) for v in grid[0])
            if self.grid is not None and self.grid[1:] != (h, w):
                raise AdapterError(
                    f"the frames of one video must share one size; a chunk gave a {h}x{w} patch grid after "
                    f"{self.grid[1]}x{self.grid[2]}"
                )
            self.grid = (t + (0 if self.grid is None else self.grid[0]), h, w)
        self.frames += frames

    def finish(self, **extra) -> EncodedVideo:
        if self.frames == 0:
            raise AdapterError("encode_video got no frames; pass at least one frame")
        segment = self.video.segment()
        call_tensors = {}
        if self.grid is not None:
            call_tensors["video_grid_thw"] = torch.tensor([list(self.grid)], dtype=torch.long)
        return EncodedVideo(
            segment=segment,
            template_type=self.template_type,
            frames=self.frames,
            pooling=self.handle.config.pooling,
            call_tensors=call_tensors,
            model_ref=weakref.ref(self.handle.model),
            **extra,
        )


def check_encoded(handle, encoded, call: dict) -> dict:
    """Refuse an EncodedVideo this call cannot use; returns the call completed with the video's own tensors."""
    if not isinstance(encoded, EncodedVideo):
        raise AdapterError(f"encoded_video must be what encode_video returns, got {type(encoded).__name__}")
    model = encoded.model_ref() if encoded.model_ref is not None else None
    if model is not handle.model:
        raise AdapterError("this encoded video was encoded for another model; encode it with this one")
    if encoded.pooling != handle.config.pooling:
        raise AdapterError(
            "this encoded video was pooled with other stages than the adapter now applies; encode it again after "
            "apply_adapter with the config you generate with"
        )
    family = handle.family
    if any(call.get(key) is not None for key in family.pixel_keys):
        raise AdapterError(f"pass either encoded_video or video pixels ({', '.join(family.pixel_keys)}), not both")
    call = dict(call)
    device = call["input_ids"].device if call.get("input_ids") is not None else None
    for name, value in encoded.call_tensors.items():
        given = call.get(name)
        if given is None:
            call[name] = value.to(device) if device is not None else value
        elif not torch.equal(given.cpu().to(value.dtype), value):
            raise AdapterError(
                f"{name} {given.tolist()} does not describe the encoded video ({value.tolist()}); drop it, "
                "EncodedVideo.inputs() fills it in"
            )
    input_ids = call.get("input_ids")
    if input_ids is not None:
        runs = find_runs(input_ids, family.token_id(handle.model.config))
        if len(runs) != encoded.segment.runs:
            raise AdapterError(
                f"an encoded video fills {encoded.segment.runs} placeholder run(s) but the input holds {len(runs)}; "
                "one video per call, with its placeholder run as EncodedVideo.inputs() writes it"
            )
    return call
