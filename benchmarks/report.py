"""Interleaved timing of the two benchmark comparisons; prints a Markdown table of the ratios.

    .venv/bin/python benchmarks/report.py [--prefill-rounds 60] [--pool-rounds 30] [--device cpu]

(a) adapter overhead: prefill of a tiny random LLaVA-OneVision at 128 frames, stock vs the adapter with pooling
    off on the same model instance (applied and removed around each adapted sample, outside the timing), in two
    variants: `pooling=None, rope=None` (everything off) and `pooling=None` over the family preset (its visual
    YaRN hooks stay installed; s < 1 here, so rotations stay stock). Goal: < 1 %. Further rows time the adapter's
    call path alone (its forward wrapper around a no-op) in microseconds, which the prefill ratio cannot resolve
    below its noise.
(b) `progressive_pool` (group 4, strides [2, 8], bilinear) on a (128, 27, 27, 896) float32 grid vs one `clone()`.
    Goal: <= 2x.

Rounds rotate and alternate the order of the variants so drift and a busy machine hit both alike; the
table gives the median of per-round ratios with its 95 % bootstrap interval, the interquartile range of the ratios,
and the ratio of the fastest samples (the least disturbed estimate on a shared machine). A goal counts as met only
when the whole interval is within it; "inconclusive" means the machine was too noisy to tell. No assertion on
time: this only reports.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import (  # noqa: E402
    FRAMES,
    OVERHEAD_VARIANTS,
    POOL_SHAPE,
    clone,
    pool,
    pooling_grid,
    prefill,
    prefill_case,
)

from longctx_adapter import apply_adapter  # noqa: E402
from longctx_adapter.hooks.call_path import wrap_forward  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, inner: int = 1) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / inner


def interleaved(a, b, rounds: int, device: str, inner: int = 1, warmup: int = 2) -> tuple[list[float], list[float]]:
    """Time a() and b() in alternating order; returns the per-round seconds of each."""
    for _ in range(warmup):
        a()
        b()
    times_a, times_b = [], []
    for r in range(rounds):
        if r % 2 == 0:
            times_a.append(_timed(a, device, inner))
            times_b.append(_timed(b, device, inner))
        else:
            times_b.append(_timed(b, device, inner))
            times_a.append(_timed(a, device, inner))
    return times_a, times_b


def bootstrap_ci(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of the median of `values`."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def summarize(name, base_name, base, cand_name, cand, goal: str, limit: float) -> dict:
    """Per-round ratios candidate / baseline; the goal is met when the whole 95 % interval is at or below `limit`."""
    ratios = sorted(c / b for b, c in zip(base, cand))
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    median_ratio = statistics.median(ratios)
    low, high = bootstrap_ci(ratios)
    met = "yes" if high <= limit else ("no" if low > limit else "inconclusive (noise wider than the goal)")
    return {
        "comparison": name,
        "baseline": base_name,
        "base_ms": statistics.median(base) * 1e3,
        "candidate": cand_name,
        "cand_ms": statistics.median(cand) * 1e3,
        "ratio": median_ratio,
        "iqr": (q1, q3),
        "ci": (low, high),
        "min_ratio": min(cand) / min(base),
        "rounds": len(base),
        "goal": goal,
        "met": met,
    }


def bench_overhead(rounds: int, device: str, inner: int) -> list[dict]:
    model, inputs = prefill_case(FRAMES, device)
    labels = ["stock", *OVERHEAD_VARIANTS]

    def sample(label: str) -> float:
        """Seconds per prefill; the adapter is applied and removed outside the measured span."""
        handle = apply_adapter(model, **OVERHEAD_VARIANTS[label]) if label != "stock" else None
        try:
            return _timed(lambda: prefill(model, inputs), device, inner)
        finally:
            if handle is not None:
                handle.remove()

    for label in labels:  # warm-up
        sample(label)
        sample(label)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        shift = r % len(labels)  # rotate the order every round so drift hits every variant alike
        order = labels[shift:] + labels[:shift]
        for label in order if r % 2 == 0 else reversed(order):
            times[label].append(sample(label))
    tokens = inputs["input_ids"].shape[1]
    rows = [
        summarize(
            f"prefill, tiny random LLaVA-OneVision, {FRAMES} frames ({tokens} tokens)",
            "stock",
            times["stock"],
            f"adapter, {label}",
            times[label],
            "< 1 % overhead",
            1.01,
        )
        for label in OVERHEAD_VARIANTS
    ]

    # The call path alone: the adapter's forward wrapper around a no-op vs the bare no-op, same arguments.
    def noop(**kwargs):
        return None

    stock_ms = statistics.median(times["stock"]) * 1e3
    for label, overrides in OVERHEAD_VARIANTS.items():
        handle = apply_adapter(model, **overrides)
        try:
            wrapped = wrap_forward(handle, noop)
            base_s, cand_s = interleaved(lambda: noop(**inputs), lambda w=wrapped: w(**inputs), 50, "cpu", inner=500)
        finally:
            handle.remove()
        per_call_us = (statistics.median(cand_s) - statistics.median(base_s)) * 1e6
        rows.append(
            {
                "comparison": f"adapter call path alone, {label} (its forward wrapper around a no-op)",
                "baseline": "bare call",
                "base_ms": statistics.median(base_s) * 1e3,
                "candidate": "wrapped call",
                "cand_ms": statistics.median(cand_s) * 1e3,
                "ratio": None,
                "iqr": None,
                "ci": None,
                "min_ratio": None,
                "rounds": 50,
                "goal": f"{per_call_us:.1f} us per call = {per_call_us / 1e3 / stock_ms * 100:.4f} % of the stock prefill",
                "met": None,
            }
        )
    return rows


def bench_pooling(rounds: int, device: str) -> list[dict]:
    grid = pooling_grid(POOL_SHAPE, device)
    base, cand = interleaved(lambda: clone(grid), lambda: pool(grid), rounds, device)
    shape = "x".join(map(str, POOL_SHAPE))
    return [
        summarize(
            f"progressive pool (group 4, strides [2, 8], bilinear), {shape} float32",
            "clone()",
            base,
            "progressive_pool",
            cand,
            "<= 2x clone",
            2.0,
        )
    ]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> str:
    import transformers

    parts = [
        f"{_cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"torch {torch.__version__}, transformers {transformers.__version__}",
    ]
    if device.startswith("cuda"):
        parts.append(torch.cuda.get_device_name(device))
    return "; ".join(parts)


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def markdown(rows: list[dict]) -> str:
    head = (
        "| comparison | baseline (median ms) | candidate (median ms) | ratio: median of rounds | 95 % CI | IQR "
        "| ratio of fastest | rounds | goal | met |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["ratio"] is None:
            ratio = ci = iqr = fastest = met = "-"
        else:
            ratio = f"{r['ratio']:.4f}"
            ci = f"[{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]"
            iqr = f"[{r['iqr'][0]:.4f}, {r['iqr'][1]:.4f}]"
            fastest = f"{r['min_ratio']:.4f}"
            met = r["met"]
        lines.append(
            f"| {r['comparison']} | {r['baseline']} ({r['base_ms']:.4g}) | {r['candidate']} ({r['cand_ms']:.4g}) | "
            f"{ratio} | {ci} | {iqr} | {fastest} | {r['rounds']} | {r['goal']} | {met} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefill-rounds", type=int, default=60)
    parser.add_argument("--pool-rounds", type=int, default=30)
    parser.add_argument("--inner", type=int, default=1, help="prefill calls averaged into one sample")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--only", choices=("overhead", "pooling"), default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = _load()
    rows = []
    if args.only in (None, "overhead"):
        rows += bench_overhead(args.prefill_rounds, args.device, args.inner)
    if args.only in (None, "pooling"):
        rows += bench_pooling(args.pool_rounds, args.device)
    print(f"machine: {machine(args.device)}; device {args.device}")
    print(f"load average (1, 5, 15 min) before: {load_before}; after: {_load()}\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
