"""Option scoring (the harness's `loglik` mode): one prompt prefill shared by every option vs one forward per option.

    .venv/bin/python benchmarks/option_scoring.py [--frames 16] [--options 4] [--rounds 3] [--skip-real]

Rows (CPU, random weights, batch 1, adapter with the family preset pooling unless the row says stock):
- tiny: `tiny.tiny_model("llava_onevision")` at 32 frames; `tiny_qwen.qwen_tiny_model("qwen2_5_vl")` at 64 frames;
- real-size, truncated: `real_configs.real_model("qwen2-vl-7b", layers=1)` (the 7B's widths, vocabulary and
  vision tower width; 1 decoder and 1 vision layer), bfloat16, `--frames` frames at its preset frame size.
Each option is 2 tokens. "shared" = `option_logprobs(..., share_prompt=True)` (the default), "per option" =
`share_prompt=False`. Both are timed in the same run, alternating, median of `--rounds` after a warm-up; the
ratio is per-option / shared (higher = the shared path saves more). The scores agree to float rounding (tested).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longctx_adapter.eval.option_scoring import option_logprobs  # noqa: E402

from longctx_adapter import AdapterConfig, apply_adapter  # noqa: E402


def _row(name, model, inputs, options, rounds, pooling):
    inputs = {k: v[:1] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in inputs.items()}
    conts = [[7 + 2 * i, 8 + 2 * i] for i in range(options)]
    times = {True: [], False: []}
    with apply_adapter(model, pooling=pooling) if pooling else contextlib.nullcontext():
        for share in (True, False):  # warm-up
            option_logprobs(model, inputs, conts, share_prompt=share)
        for _ in range(rounds):
            for share in (True, False):
                start = time.perf_counter()
                option_logprobs(model, inputs, conts, share_prompt=share)
                times[share].append(time.perf_counter() - start)
    shared, plain = statistics.median(times[True]), statistics.median(times[False])
    print(f"| {name} | {options} | {shared * 1e3:.1f} | {plain * 1e3:.1f} | {plain / shared:.2f}x |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--options", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args(argv)
    from longctx_adapter.testing.tiny import hand_inputs, tiny_model
    from longctx_adapter.testing.tiny_qwen import qwen_hand_inputs, qwen_tiny_model

    print(f"torch threads {torch.get_num_threads()}, CPU, batch 1, {args.options} options of 2 tokens\n")
    print("| model | options | shared (ms) | per option (ms) | per option / shared |")
    print("|---|---|---|---|---|")
    ov_pooling = {"type": "progressive", "group": 2, "strides": [2, 4], "mode": "avg"}
    qwen_pooling = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}
    with torch.inference_mode():
        _row("tiny LLaVA-OneVision, 32 frames, stock", tiny_model("llava_onevision"),
             hand_inputs("llava_onevision", 32), args.options, args.rounds, None)  # fmt: skip
        _row("tiny LLaVA-OneVision, 32 frames, adapted", tiny_model("llava_onevision"),
             hand_inputs("llava_onevision", 32), args.options, args.rounds, ov_pooling)  # fmt: skip
        _row("tiny Qwen2.5-VL, 64 frames, adapted", qwen_tiny_model("qwen2_5_vl"),
             qwen_hand_inputs("qwen2_5_vl", 64, batch=1), args.options, args.rounds, qwen_pooling)  # fmt: skip
        if not args.skip_real:
            from longctx_adapter.profiling.sizes import real_model, video_inputs

            model = real_model("qwen2-vl-7b", layers=1)
            inputs = video_inputs(model.config, args.frames)
            preset = AdapterConfig.preset("qwen2_vl").pooling
            name = f"Qwen2-VL-7B widths, 1+1 layers, bf16, {args.frames} frames, preset pooling"
            _row(name, model, inputs, args.options, args.rounds, preset)


if __name__ == "__main__":
    main()
