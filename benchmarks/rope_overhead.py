"""Cost of the visual RoPE hook: prefill with the rotary hook active vs stock, and the per-call plan build.

    .venv/bin/python benchmarks/rope_overhead.py [--rounds 30] [--threads 1]

Tiny random LLaVA-OneVision, 128 frames (2,049 visual tokens), batch 1, prefill as generate() runs it
(`use_cache=True, logits_to_keep=1`). The hook is ACTIVE here: visual_window 512 gives s = 4.0, so every call
builds YaRN frequencies and replaces cos/sin rows (scope "all": every row; scope "visual": the visual rows).
Rounds alternate the order of the variants; the table gives the median of per-round ratios to stock. The plan
row times `RopeHooks.plan_for` alone (frequencies + masks for one call), as a share of one stock prefill.
Prints Markdown; no assertions on time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import prefill, prefill_case  # noqa: E402

from longctx_adapter import apply_adapter  # noqa: E402

VARIANTS = {
    "yarn, scope all, s=4": {"type": "yarn", "visual_window": 512, "scope": "all"},
    "yarn, scope visual, s=4": {"type": "yarn", "visual_window": 512, "scope": "visual"},
    "interpolate, scope all, s=4": {"type": "interpolate", "visual_window": 512, "scope": "all"},
}


def _time(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def _hook_cost(model, handle, inputs, token) -> float:
    """One rotary call (the decoder makes one per forward) with the plan active, minus the stock call."""
    rotary = model.model.language_model.rotary_emb
    length = inputs["input_ids"].shape[1]
    x = torch.zeros(1, length, model.config.text_config.hidden_size)
    positions = torch.arange(length)[None]
    plan = handle.rope.plan_for(inputs["input_ids"], token)
    handle.calls.rope_step = (plan, 0)
    hooked = _time(lambda: rotary(x, positions), repeat=20)
    handle.calls.rope_step = (None, 0)
    plain = _time(lambda: rotary(x, positions), repeat=20)
    return hooked - plain


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, inputs = prefill_case()
    prefill(model, inputs)  # warm-up
    ratios = {name: [] for name in VARIANTS}
    stock_times, plan_times, hook_times = [], [], []
    token = model.config.video_token_id
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        stock = _time(lambda: prefill(model, inputs))
        stock_times.append(stock)
        for name in order:
            with apply_adapter(model, pooling=None, rope=VARIANTS[name]) as handle:
                ratios[name].append(_time(lambda: prefill(model, inputs)) / stock)
                if name == "yarn, scope all, s=4":
                    plan_times.append(_time(lambda: handle.rope.plan_for(inputs["input_ids"], token), repeat=20))
                    hook_times.append(_hook_cost(model, handle, inputs, token))
    stock_ms = statistics.median(stock_times) * 1e3
    print(
        f"tiny random LLaVA-OneVision, 128 frames, {inputs['input_ids'].shape[1]} tokens, CPU, "
        f"{args.threads} thread(s), {args.rounds} interleaved rounds; stock prefill median {stock_ms:.1f} ms\n"
    )
    print("| variant | prefill time / stock (median) | IQR |")
    print("|---|---|---|")
    for name, values in ratios.items():
        q = statistics.quantiles(values, n=4)
        print(f"| {name} | {statistics.median(values):.3f} | {q[0]:.3f} - {q[2]:.3f} |")
    hook_us = statistics.median(hook_times) * 1e6
    print(
        f"| rotary call with the active hook minus without, per decoder forward | {hook_us:.0f} us "
        f"= {hook_us / 1e3 / stock_ms:.2%} of a stock prefill | |"
    )
    plan_us = statistics.median(plan_times) * 1e6
    print(
        f"| plan build (YaRN frequencies + masks) per call | {plan_us:.0f} us "
        f"= {plan_us / 1e3 / stock_ms:.2%} of a stock prefill | |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
