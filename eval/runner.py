"""Shared pieces of the evaluation commands: loading a local checkpoint, and ``run``.

``longctx-adapter run`` answers one question about one video::

    longctx-adapter run --model ./llava-onevision-7b --video clip.mp4 --question "what happens?" --frames 64 \
        --config progressive:2,8,4+yarn-visual

It loads the checkpoint with ``AutoModelForImageTextToText`` and its ``AutoProcessor``, samples the frames, applies
the adapter (by default the model folder's saved ``longctx_adapter.json``, else the family preset; ``--config none``
for the stock model), streams the answer, and prints what the
adapter did: frames, visual tokens before and after pooling, RoPE factor, peak memory and time.
"""

from __future__ import annotations

import sys

from longctx_adapter.errors import AdapterError

DEFAULT_MAX_NEW_TOKENS = 128

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "load_model", "placeholder_count", "resolve_device", "resolve_dtype", "run_question"]


def resolve_device(device: str | None = "auto"):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device):
    """``auto``: the checkpoint's dtype on GPU, float32 on CPU (bf16 matmuls are slow there); else a dtype name."""
    import torch

    from longctx_adapter.profiling.dtypes import torch_dtype

    if dtype in (None, "auto"):
        return "auto" if device.type == "cuda" else torch.float32
    return torch_dtype(dtype)


def load_model(path, *, dtype="auto", device="auto", attn_implementation=None):
    """(model, processor) of a local checkpoint folder; the model in eval mode on ``device``, the processor the
    checkpoint's own (``AutoProcessor``)."""
    from pathlib import Path

    from longctx_adapter.eval.video import load_processor
    from transformers import AutoModelForImageTextToText

    if not Path(path).exists():
        raise AdapterError(f"model folder not found: {path} (run loads local checkpoints only)")
    dev = resolve_device(device)
    kwargs = {"dtype": resolve_dtype(dtype, dev)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    processor = load_processor(path)  # before the weights: a missing torchvision is reported at once
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs).to(dev).eval()
    return model, processor


def placeholder_count(model, input_ids) -> int:
    """Visual placeholder tokens in ``input_ids`` (the video token where the class has one, else the image token)."""
    config = model.config
    token = getattr(config, "video_token_id", None)
    if token is None or not bool((input_ids == token).any()):
        token = getattr(config, "image_token_id", None)
    return int((input_ids == token).sum()) if token is not None else 0


def streaming_chunk(model_path, model_type, adapter, frames, backend, stream=True) -> tuple[int | None, str]:
    """(frames per streamed chunk, "") when ``run`` can stream this video, else (None, the one-line reason).

    The chunk: the config's vision_chunk_frames, else the planner's (at least 16 frames, frame-local)."""
    from transformers import AutoConfig

    from longctx_adapter.hooks.streaming import stream_plan
    from longctx_adapter.profiling.planner import frame_local_chunk
    from longctx_adapter.registry import family_for

    if not stream:
        return None, "streaming turned off"
    if adapter is None or not adapter.pooling:
        return None, "no pooling: the model takes every frame's pixels"
    if backend != "pyav":
        return None, f"streaming decodes with PyAV, not {backend}"
    family = family_for(model_type)
    model_config = AutoConfig.from_pretrained(model_path)
    chunk = adapter.vision_chunk_frames
    if chunk is None and family.split_video is not None:
        chunk = frame_local_chunk(model_config, family, list(adapter.pooling), frames or 1 << 20)
        if chunk is None:
            return None, "no chunk size keeps these pooling stages frame-local below the frame count"
    try:
        stream_plan(family, model_config, adapter, chunk)
    except AdapterError as exc:
        return None, str(exc).split(";")[0]
    if frames is not None and frames <= chunk:
        return None, f"{frames} frames fit in one chunk of {chunk}"
    return chunk, ""


def _one_shot_inputs(proc, clip, question, model):
    from longctx_adapter.eval.video import video_inputs

    inputs = video_inputs(proc, clip, question, model_type=model.config.model_type).to(model.device)
    if "pixel_values" in inputs and model.dtype != inputs["pixel_values"].dtype:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    if "pixel_values_videos" in inputs:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    return inputs


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} GiB"


def run_question(
    model_path,
    video,
    question: str,
    *,
    frames: int | None = 32,
    fps: float | None = None,
    max_frames: int | None = None,
    config: str | None = None,
    visual_window: int | None = None,
    max_new_tokens: int | None = None,
    dtype: str = "auto",
    device: str = "auto",
    backend: str = "pyav",
    prefill_chunk_size="auto",
    stream: bool = True,
    out=None,
) -> dict:
    """What ``longctx-adapter run`` does; returns the answer and the adapter's report (also printed to ``out``).

    config: any form of the config grammar (docs/configuration.md); None: the folder's saved
    ``longctx_adapter.json``, else the family preset. max_new_tokens: None takes the checkpoint's
    ``generation_config.max_new_tokens`` when it sets one (a model without an end token declares its answer length
    there), else 128. prefill_chunk_size: generate's chunked prefill; "auto" turns it on (planner.PREFILL_CHUNK
    tokens) for prompts longer than one chunk, where it lowers the peak; "off" or a size. stream: decode,
    preprocess, encode and pool the video a chunk of frames at a time (``encode_video``) when the config allows
    it (frame-local pooling, a family that takes videos as one tensor, the PyAV backend); otherwise, or with
    False, the whole clip goes through the processor at once. The report says which and why."""
    from longctx_adapter.eval.arguments import check_model_folder
    from longctx_adapter.eval.video import build_prompt, load_video, stream_video
    from transformers import TextStreamer

    from longctx_adapter import apply_adapter, encode_video
    from longctx_adapter.config_text import config_source, parse_config
    from longctx_adapter.profiling.memory import measure, memory_probe
    from longctx_adapter.profiling.planner import auto_prefill_chunk

    out = out or sys.stdout
    # Refuse a bad folder, video or config before loading any weights.
    model_type = check_model_folder(model_path)
    auto_prefill_chunk(0, prefill_chunk_size)  # a bad setting fails before any weights load
    adapter = parse_config(config, model_type, folder=model_path, visual_window=visual_window)
    source = config_source(config, model_path)
    count = None if fps is not None else frames
    vision_chunk, why_not = streaming_chunk(model_path, model_type, adapter, count or max_frames, backend, stream)
    if vision_chunk is not None:  # the file is indexed now, decoded chunk by chunk inside generate's measurement
        clip = stream_video(video, vision_chunk, count, fps=fps, max_frames=max_frames)
    else:
        clip = load_video(video, count, fps=fps, max_frames=max_frames, backend=backend)
    model, proc = load_model(model_path, dtype=dtype, device=device)
    model_type = model.config.model_type
    tokenizer = getattr(proc, "tokenizer", proc)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    handle = apply_adapter(model, adapter) if adapter is not None else None
    probe = memory_probe(model.device)
    try:
        if vision_chunk is None:
            inputs = _one_shot_inputs(proc, clip, question, model)
        print(f"answer ({type(model).__name__}, {len(clip)} frames):", file=out, flush=True)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        import torch

        if max_new_tokens is None and getattr(model.generation_config, "max_new_tokens", None) is None:
            max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        length = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        with measure(probe) as measured, torch.inference_mode():
            if vision_chunk is not None:  # ingestion inside the measurement: its peak is part of the run's
                encoded = encode_video(model, clip, processor=proc, chunk_frames=vision_chunk)
                prompt = build_prompt(question, model_type, 1, processor=proc)
                inputs = encoded.inputs(prompt).to(model.device)
            chunk = auto_prefill_chunk(int(inputs["input_ids"].shape[1]), prefill_chunk_size)
            generated = model.generate(**inputs, do_sample=False, streamer=streamer, pad_token_id=pad, **length,
                                       **({"prefill_chunk_size": chunk} if chunk else {}))
        stats = list(handle.last_stats) if handle is not None else []
    finally:
        if handle is not None:
            handle.remove()
    answer = tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    before = placeholder_count(model, inputs["input_ids"])
    after = sum(int(s["tokens_after"]) for s in stats) if stats else before
    factors = [s.get("rope_factor") for s in stats if s.get("rope_factor") is not None]
    report = {
        "answer": answer,
        "frames": len(clip),
        "timestamps": [round(float(t), 3) for t in clip.timestamps],
        "tokens_before": before,
        "tokens_after": after,
        "rope_factor": max(factors) if factors else None,
        "config": None if adapter is None else adapter.to_dict(),
        "prefill_chunk_size": chunk,
        "streamed_chunk_frames": vision_chunk,
        **measured,
    }
    span = f"{clip.timestamps[0]:.2f}-{clip.timestamps[-1]:.2f} s" if len(clip) else ""
    print("", file=out)
    print("adapter report:", file=out)
    described = "none (stock model)" if adapter is None else f"{adapter.to_json()} ({source})"
    print(f"  config        : {described}", file=out)
    print(f"  frames        : {len(clip)} of {clip.total_frames} ({span}, {getattr(clip, 'backend', 'pyav')})", file=out)
    ingestion = f"streamed, {vision_chunk} frames at a time" if vision_chunk else f"one-shot ({why_not})"
    print(f"  ingestion     : {ingestion}", file=out)
    print(f"  visual tokens : {before} -> {after}", file=out)
    print(f"  prefill       : {f'chunks of {chunk} tokens' if chunk else 'one pass'}", file=out)
    factor = "stock RoPE" if not factors else f"{report['rope_factor']:.3f}"  # 3 decimals: a ratio of token counts
    print(f"  rope factor   : {factor}", file=out)
    print(f"  peak memory   : {_fmt_bytes(measured['peak_mem_bytes'])} ({measured['mem_method']})", file=out)
    print(f"  {'ingest+generate' if vision_chunk else 'generate time '}: {measured['time_s']:.2f} s", file=out)
    return report
