"""Merge ops' time against the prefill they save, at LLaVA-OneVision-7B's true width on CPU; prints Markdown.

    .venv/bin/python benchmarks/merge_overhead.py [--frames 128 256 512 1024] [--ratios 0.25 0.1] [--rounds 2]

Features: `(T, 14, 14, 3584)` float32, the grid LLaVA-OneVision-7B's projector gives after its own bilinear 2x
(196 tokens per frame, hidden 3584), synthetic with the redundancy of real video: scenes of 8-64 frames, each a
random token field, every frame of a scene that field plus independent noise (cosine ~0.9 between neighbours).
Ops: `merge_temporal` and `segment_density` with `ratio` r on that grid (`pool_video`, decision and means).

Prefill saved, a measured lower bound: one decoder layer of the 7B geometry (Qwen2-7B: hidden 3584, MLP 18944,
28/4 heads, random weights, float32, sdpa) is timed on a chunk of `--chunk` tokens; per token of prefill each of its
28 layers costs at least that chunk time / chunk (a token of a long prompt also attends to everything before it,
which this leaves out), so `saved >= 28 x (196 T - kept) x layer time per token`. Ratio = op time / that bound:
an upper bound on the op's true share. Every row is measured in one run, rounds interleaved (op, op, layer per
frame count, then again), median of `--rounds`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longctx_adapter.ops.pooling import pool_video  # noqa: E402
from longctx_adapter.profiling.sizes import fill_random_, real_config  # noqa: E402

PRESET = "llava-onevision-7b"
SIDE = 14  # 27x27 SigLIP patches -> the model's own bilinear 2x -> 14x14


def synthetic_features(frames: int, hidden: int, seed: int = 0) -> torch.Tensor:
    """Scenes of 8-64 frames: a random token field per scene plus per-frame noise (std 0.33 of the field's)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(frames, SIDE, SIDE, hidden)
    start = 0
    while start < frames:
        length = int(torch.randint(8, 65, (1,), generator=gen))
        stop = min(frames, start + length)
        field = torch.randn(1, SIDE, SIDE, hidden, generator=gen)
        out[start:stop] = field + 0.33 * torch.randn(stop - start, SIDE, SIDE, hidden, generator=gen)
        start = stop
    return out


def decoder_layer_model(threads: int):
    """The 7B decoder with one layer (vocabulary cut to 16: embeddings are not timed), float32, random weights."""
    import transformers
    from transformers import initialization as hf_init

    text = real_config(PRESET, layers=1).text_config
    text.vocab_size = 16
    with hf_init.no_init_weights():
        model = transformers.Qwen2Model._from_config(text, dtype=torch.float32, attn_implementation="sdpa")
    fill_random_(model)
    torch.set_num_threads(threads)
    return model.eval(), real_config(PRESET).text_config.num_hidden_layers


def timed_pool(grid: torch.Tensor, stage: dict) -> tuple[float, int]:
    """(seconds, tokens kept) of one merge on one video."""
    start = time.perf_counter()
    tokens = pool_video(grid, stage).num_tokens
    return time.perf_counter() - start, tokens


def timed_layer(model, chunk: torch.Tensor) -> float:
    start = time.perf_counter()
    model(inputs_embeds=chunk, use_cache=False)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", nargs="+", type=int, default=[128, 256, 512, 1024])
    p.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.1])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--chunk", type=int, default=1024, help="tokens of the timed decoder-layer chunk")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    model, layers = decoder_layer_model(args.threads)
    hidden = model.config.hidden_size
    chunk = torch.randn(1, args.chunk, hidden, generator=torch.Generator().manual_seed(1))
    ops = [(kind, r) for r in args.ratios for kind in ("merge_temporal", "segment_density")]
    times: dict = {}
    kept: dict = {}
    with torch.no_grad():
        model(inputs_embeds=chunk[:, :64], use_cache=False)  # warm-up
        for round_ in range(args.rounds):
            for frames in args.frames:
                grid = synthetic_features(frames, hidden, seed=frames)
                for kind, ratio in ops:
                    seconds, kept[frames, kind, ratio] = timed_pool(grid, {"type": kind, "ratio": ratio})
                    times.setdefault((frames, kind, ratio), []).append(seconds)
                times.setdefault((frames, "layer"), []).append(timed_layer(model, chunk))
                del grid
                print(f"round {round_ + 1}: {frames} frames done", file=sys.stderr, flush=True)
    lines = [
        f"Merge op time vs the prefill it saves (lower bound), {PRESET} width {hidden}, {layers} layers, float32, "
        f"CPU {args.threads} threads, median of {args.rounds} interleaved rounds.",
        "",
        "| frames | tokens (196/frame) | op | ratio | kept | op time (s) | layer s per 1k tokens | prefill saved >= (s) "
        "| op / saved |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for frames in args.frames:
        per_token = statistics.median(times[frames, "layer"]) / args.chunk
        full = frames * SIDE * SIDE
        for kind, ratio in ops:
            op = statistics.median(times[frames, kind, ratio])
            saved = layers * (full - kept[frames, kind, ratio]) * per_token
            lines.append(
                f"| {frames} | {full:,} | {kind} | {ratio:g} | {kept[frames, kind, ratio]:,} | {op:.2f} | "
                f"{1000 * per_token:.3f} | {saved:,.0f} | {100 * op / saved:.2f} % |"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
