"""Ingestion peak memory, one-shot vs streamed (`encode_video`), each row in a fresh process; prints a table.

Ingestion = frames -> processor -> vision encoder -> adapter pooling, up to the pooled features the decoder reads
(nothing of the language model runs). One-shot: the whole clip's frames exist, the processor turns them into one
pixel tensor, and the adapter's call path encodes it with chunked vision encoding (`vision_chunk_frames`) and pools
it (`prepare`, what `generate` does before the decoder). Streamed: `encode_video` on a generator of frames, a chunk
at a time. Peak = the process's resident-set peak during ingestion minus its resident set just before (model
loaded, kernels warmed on one chunk), measured with `profiling.memory` (VmHWM reset through clear_refs), glibc's
mmap threshold at 1 MiB so freed tensors leave the resident set (as the profiler does). Frames are synthetic
(seeded uint8 noise at the processor's input size, so the processor's resize is a no-op on both paths).

    python benchmarks/streaming_ingestion.py --model tiny --frames 64,256,1024
    python benchmarks/streaming_ingestion.py --model onevision-7b --frames 16,64 --chunk 8
    python benchmarks/streaming_ingestion.py --model onevision-7b --frames 256 --chunk 8 --modes streamed
    python benchmarks/streaming_ingestion.py --model qwen2-vl-7b --frames 16,64,256 --chunk 8

`onevision-7b`: LLaVA-OneVision-7B's real geometry (`profiling.sizes.real_config`), random weights, float32, the
decoder cut to 1 layer and the SigLIP tower to 1 layer (ingestion runs the tower, so its depth sets the CPU time; a
layer's activations are what the estimator counts, at any depth). `qwen2-vl-7b`: Qwen2-VL-7B's real geometry cut the
same way, 448x448 frames (the estimator's Qwen frame size; the processor's min and max pixels pinned to it), its
preset pooling (progressive 1,4, group 4). The estimate column is
`profiling.estimate.estimate_ingestion` (its `peak_bytes` minus nothing: it counts ingestion only, no weights).
"""

from __future__ import annotations

import argparse
import sys

MMAP_THRESHOLD = str(1 << 20)
POOLING = {"type": "progressive", "group": 4, "strides": [2, 8], "mode": "bilinear"}  # the OneVision preset
QWEN_POOLING = {"type": "progressive", "group": 4, "strides": [1, 4], "mode": "bilinear"}  # the Qwen-VL preset
QWEN_SIDE = 448
MODELS = {"onevision-7b": "llava-onevision-7b", "qwen2-vl-7b": "qwen2-vl-7b"}


def _build(model_name: str):
    import torch

    if model_name == "tiny":
        from longctx_adapter.testing.tiny import tiny_model, tiny_processor

        model = tiny_model("llava_onevision")
        pooling = {**POOLING, "strides": [1, 2]}  # the tiny 7x7 grid
        return model, tiny_processor("llava_onevision").video_processor, pooling
    from transformers import LlavaOnevisionVideoProcessor, Qwen2VLVideoProcessor

    from longctx_adapter.profiling.sizes import real_model

    model = real_model(MODELS[model_name], layers=1, vision_layers=1, dtype=torch.float32)
    if model_name == "qwen2-vl-7b":
        pixels = QWEN_SIDE * QWEN_SIDE
        processor = Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels, cap_pixels_per_frame=False)
        return model, processor, QWEN_POOLING
    side = model.config.vision_config.image_size
    processor = LlavaOnevisionVideoProcessor(size={"height": side, "width": side})
    return model, processor, POOLING


def _side(model) -> int:
    return QWEN_SIDE if model.config.model_type == "qwen2_vl" else model.config.vision_config.image_size


def _frames(count: int, side: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield rng.integers(0, 256, (side, side, 3), dtype=np.uint8)


def ingest_row(model_name: str, frames: int, chunk: int, streamed: bool) -> dict:
    """One row, meant for a fresh process: (peak bytes above the pre-ingestion resident set, pooled feature bytes)."""
    import numpy as np
    import torch

    from longctx_adapter import apply_adapter, encode_video
    from longctx_adapter.hooks.call_path import prepare
    from longctx_adapter.profiling.memory import RssProbe

    torch.set_num_threads(2)
    model, video_processor, pooling = _build(model_name)
    model.eval()
    handle = apply_adapter(model, {"pooling": pooling, "vision_chunk_frames": chunk})
    side = _side(model)

    class Proc:  # encode_video reads the processor's video_processor; ingestion needs nothing else
        pass

    proc = Proc()
    proc.video_processor = video_processor
    with torch.no_grad():
        encode_video(model, _frames(chunk, side, seed=1), processor=proc, chunk_frames=chunk)  # warm the kernels
    probe = RssProbe()
    before = probe.current()
    probe.reset()
    with torch.no_grad():
        if streamed:
            encoded = encode_video(model, _frames(frames, side), processor=proc, chunk_frames=chunk)
            features = encoded.feature_bytes
        else:
            clip = np.stack(list(_frames(frames, side)))  # one-shot: the decoded clip exists whole
            processed = video_processor(videos=[clip], return_tensors="pt")
            family = handle.family
            video = model.config.video_token_id
            call = {"pixel_values_videos": processed["pixel_values_videos"].to(model.dtype)}
            if "video_grid_thw" in processed:  # Qwen-VL: the grid, vision markers and token types
                call["video_grid_thw"] = processed["video_grid_thw"]
                stock = int(processed["video_grid_thw"].prod()) // 4  # 2x2 merge
                start, end = model.config.vision_start_token_id, model.config.vision_end_token_id
                ids = torch.tensor([[11, 12, start] + [video] * stock + [end, 13]])
                call["mm_token_type_ids"] = (ids == video).to(torch.int32) * 2
            else:
                ids = torch.tensor([[11, 12] + [video] * family.stock_tokens(model.config, frames) + [13]])
            call.update(input_ids=ids, attention_mask=torch.ones_like(ids))
            prepared = prepare(handle, call)
            features = sum(t.numel() * t.element_size() for t in prepared.call["mm_encoder_outputs"]["video"].pooler_output)
    peak = probe.peak() - before
    probe.close()
    return {"peak": peak, "features": features}


def _importable(function):
    """This script's function as its module's (run_fresh refuses `__main__`): the script's folder is on sys.path."""
    import importlib

    return getattr(importlib.import_module("streaming_ingestion"), function.__name__)


def main(argv=None) -> int:
    from longctx_adapter.profiling.estimate import estimate_ingestion
    from longctx_adapter.profiling.fresh import run_fresh

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", *MODELS), default="tiny")
    parser.add_argument("--frames", default="64,256,1024")
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--modes", default="one-shot,streamed", help="which rows to measure (CPU time)")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.frames.split(",")]
    if args.model == "tiny":
        from longctx_adapter.testing.tiny import tiny_config

        config, pooling = tiny_config("llava_onevision"), {**POOLING, "strides": [1, 2]}
    else:
        from longctx_adapter.profiling.sizes import real_config

        config = real_config(MODELS[args.model], layers=1, vision_layers=1)
        pooling = QWEN_POOLING if args.model == "qwen2-vl-7b" else POOLING
    frame_size = (QWEN_SIDE, QWEN_SIDE) if args.model == "qwen2-vl-7b" else None
    adapter = {"pooling": [pooling], "vision_chunk_frames": args.chunk}
    print(f"model {args.model}, chunk {args.chunk} frames, float32, peak above the loaded model (MiB)")
    print("| frames | one-shot measured | one-shot estimate | streamed measured | streamed estimate | streamed error "
          "| pooled features |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    mib = 2**20
    for frames in counts:
        rows = {}
        for streamed in [mode == "streamed" for mode in args.modes.split(",")]:
            rows[streamed] = run_fresh(_importable(ingest_row), (args.model, frames, args.chunk, streamed),
                                       env={"MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD})  # fmt: skip
        est = {s: estimate_ingestion(config, frames, adapter, streamed=s, dtype="float32", frame_size=frame_size)
               for s in (False, True)}  # fmt: skip
        error = f"{rows[True]['peak'] / est[True]['peak_bytes'] - 1:+.0%}" if True in rows else ""
        one_shot = f"{rows[False]['peak'] / mib:.1f}" if False in rows else "not run"
        streamed = f"{rows[True]['peak'] / mib:.1f}" if True in rows else "not run"
        features = f"{rows[True]['features'] / mib:.2f}" if True in rows else ""
        print(f"| {frames} | {one_shot} | {est[False]['peak_bytes'] / mib:.1f} "
              f"| {streamed} | {est[True]['peak_bytes'] / mib:.1f} | {error} | {features} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
