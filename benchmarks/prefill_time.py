"""Prefill time and time to first token, stock vs adapted (the family preset), on truncated true-width
LLaVA-OneVision-7B on CPU (a benchmark: prints a table, asserts nothing).

    .venv/bin/python benchmarks/prefill_time.py [--frames 16,32,64,128] [--rounds 3] [--budget-s 1800]  # make bench-prefill

The model has LLaVA-OneVision-7B's real widths (Qwen2-7B decoder, SigLIP-so400m tower; `profiling/sizes.py`) with
random weights, cut to `--layers` decoder and `--vision-layers` vision layers, float32 (this CPU has no fast bf16
matmul). One synthetic video per frame count (hand-built inputs with the stock placeholder count). Each round runs
stock then adapted, or adapted then stock (the order alternates), `generate(max_new_tokens=1)` on the same model
(the adapter installed and removed between runs, outside the timing): time to first token is the whole call (vision
tower, projector, pooling, prefill, first token); prefill is the language model's part of it, cut at its first
forward hook (the profiler's stage recorder). The table gives medians over rounds of per-round ratios
(adapted / stock). `--budget-s` stops starting new rounds (at least one per frame count) when the time is spent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def _one(model, inputs, probe):
    import torch

    from longctx_adapter.profiling.profiler import _StageRecorder

    start = time.perf_counter()
    with torch.inference_mode(), _StageRecorder(model, probe) as rec:
        rec.start()
        model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        rec.stop()
    total = time.perf_counter() - start
    return {"ttft": total, "prefill": rec.marks["prefill"]["seconds"], "vision": rec.marks["vision"]["seconds"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="16,32,64,128")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--vision-layers", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=1800.0)
    args = parser.parse_args(argv)

    import torch

    from longctx_adapter import apply_adapter
    from longctx_adapter.profiling.memory import RssProbe
    from longctx_adapter.profiling.sizes import real_model, video_inputs

    model = real_model("llava-onevision-7b", args.layers, args.vision_layers, dtype=torch.float32)
    probe = RssProbe()
    frames = [int(f) for f in args.frames.split(",")]
    deadline = time.monotonic() + args.budget_s
    rows = []
    for n in frames:
        inputs = video_inputs(model.config, n, dtype=torch.float32)
        tokens = int(inputs["input_ids"].shape[1])
        results = {"stock": [], "adapted": []}
        for r in range(args.rounds):
            if r and time.monotonic() > deadline:
                break
            for variant in (("stock", "adapted") if r % 2 == 0 else ("adapted", "stock")):
                handle = apply_adapter(model) if variant == "adapted" else None
                try:
                    results[variant].append(_one(model, inputs, probe))
                finally:
                    if handle is not None:
                        handle.remove()
            s, a = results["stock"][-1], results["adapted"][-1]
            print(f"{n} frames round {r + 1}: stock ttft {s['ttft']:.1f}s prefill {s['prefill']:.1f}s; "
                  f"adapted ttft {a['ttft']:.1f}s prefill {a['prefill']:.1f}s", file=sys.stderr, flush=True)
        pairs = list(zip(results["stock"], results["adapted"]))
        rows.append({
            "frames": n, "tokens": tokens, "rounds": len(pairs),
            **{f"{v}_{k}": statistics.median(x[k] for x in results[v]) for v in results for k in ("ttft", "prefill")},
            "ttft_ratio": statistics.median(a["ttft"] / s["ttft"] for s, a in pairs),
            "prefill_ratio": statistics.median(a["prefill"] / s["prefill"] for s, a in pairs),
        })
        if time.monotonic() > deadline:
            break
    print(f"LLaVA-OneVision-7B widths, {args.layers} decoder + {args.vision_layers} vision layer(s), float32, CPU, "
          f"{torch.get_num_threads()} threads; adapted = family preset (progressive 2,8,4 + visual YaRN)\n")
    print("| frames | prompt tokens (stock) | rounds | stock TTFT s | adapted TTFT s | TTFT ratio | stock prefill s "
          "| adapted prefill s | prefill ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['frames']} | {row['tokens']:,} | {row['rounds']} | {row['stock_ttft']:.1f} | "
              f"{row['adapted_ttft']:.1f} | {row['ttft_ratio']:.3f} | {row['stock_prefill']:.1f} | "
              f"{row['adapted_prefill']:.1f} | {row['prefill_ratio']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
