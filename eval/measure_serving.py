"""What serving with vLLM changes, measured on the HF path (main venv): the fixed RoPE factor and integer M-RoPE ids.

    python -m longctx_adapter.eval.measure_serving [--items 60]     # writes docs/vllm_rules.{json,md}

1. Fixed vs per-call RoPE factor, on the shipped tiny trained model (LLaVA-OneVision, 1-D RoPE, visual window 129
   tokens; see models/tiny_video_lm/README.md). Its saved config computes s = visual tokens / 129 per call; a vLLM
   engine needs one factor for every request. Rows: stock, the per-call config, and the same YaRN with a fixed
   factor stated for a maximum length of 16, 32 and 64 frames (factor = that length's visual tokens / 129),
   scored at 8, 16, 32 and 64 frames with the same held-out items (eval/measure_tiny.py's scoring).
2. The integer M-RoPE rule (vLLM keeps integer ids; the HF path uses fractional window centres). The trained model
   has 1-D RoPE, where pooled tokens get consecutive integer positions on both paths, so the rule cannot change
   it; no trained Qwen-VL model is available here. What can be measured: on tiny random Qwen2-VL models, the
   adapted HF forward with the HF ids vs the same forward with the ids rounded by the plugin's rule
   (`ceil(c - 0.5)`), for pooling configs whose window centres are fractional: the largest change of the
   next-token log-probabilities and whether the argmax moves. Random weights make this a bound on how much the
   rule perturbs the computation, not a statement about accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from unittest import mock

import torch
from longctx_adapter.eval.measure_tiny import CONFIGS, MULTIPLES, ROOT, TRAIN_FRAMES, VISUAL_WINDOW, load_model, measure

YARN_SAVED = {"type": "yarn", "visual_window": VISUAL_WINDOW, "scope": "all", "attention_factor": "yarn"}
FIXED_FOR = (2, 4, 8)  # stated maximum length, in multiples of the 8-frame training length
QWEN_CONFIGS = {
    "progressive [1,2] (centres x.5)": {"type": "progressive", "group": 2, "strides": [1, 2]},
    "progressive [1,4] bilinear (Qwen preset)": {"type": "progressive", "group": 4, "strides": [1, 4]},
    "temporal 2 (t centres x.5)": {"type": "temporal", "kernel": 2, "stride": 2},
    "conv3d [2,2,2]": {"type": "conv3d", "kernel": [2, 2, 2]},
}


HEADER = (
    "What serving with vLLM changes, measured on the HF path (`python -m longctx_adapter.eval.measure_serving`).\n\n"
    "Fixed vs per-call RoPE factor on the shipped tiny trained model (mean accuracy over its three tasks, {items} "
    "held-out items per task and cell, the same items in every row; s = the RoPE factor used):\n\n"
)
RULE_HEADER = (
    "\nThe integer M-RoPE rule (`ceil(c - 0.5)` of the HF path's window centres) on tiny random Qwen models, 16 "
    "frames (8 temporal patches of 4x4 merged tokens), 8 hand-built inputs per row; Qwen2.5-VL at 2 temporal ids per "
    "patch. Random weights: a bound on the perturbation, not an accuracy result.\n\n"
)


def _fixed_factor(multiple: int) -> float:
    return (TRAIN_FRAMES * multiple * 16 + 1) / VISUAL_WINDOW


def rope_rows(items: int, log=print) -> list[dict]:
    CONFIGS["serve_per_call"] = ("visual YaRN (the saved config): s per call", lambda m: {"rope": YARN_SAVED})
    names = ["stock", "serve_per_call"]
    for m in FIXED_FOR:
        name = f"serve_fixed_{TRAIN_FRAMES * m}"
        factor = _fixed_factor(m)
        CONFIGS[name] = (
            f"visual YaRN, fixed factor {factor:.2f} (max {TRAIN_FRAMES * m} frames)",
            lambda _m, f=factor: {"rope": {**YARN_SAVED, "factor": f}},
        )
        names.append(name)
    model, tokenizer = load_model()
    rows, _ = measure(model, tokenizer, names, items, MULTIPLES, log=log)
    return [{k: v for k, v in r.items() if k != "tasks"} | {"tasks": _accuracies(r)} for r in rows]


def _accuracies(row: dict) -> dict:
    return {t: round(v["accuracy"], 4) for t, v in row["tasks"].items()}


def _rounded(mrope_positions):
    """The HF patch's id function with the plugin's integer rule applied to its (fractional) centres."""

    def wrapped(*args, **kwargs):
        return torch.ceil(mrope_positions(*args, **kwargs) - 0.5)

    return wrapped


def rule_rows(videos: int = 8, frames: int = 16) -> list[dict]:
    from longctx_adapter.patches import qwen_vl

    from longctx_adapter import apply_adapter
    from longctx_adapter.testing.tiny_qwen import qwen_hand_inputs, qwen_tiny_model

    rows = []
    for model_type in ("qwen2_vl", "qwen2_5_vl"):
        model = qwen_tiny_model(model_type)
        for name, stages in QWEN_CONFIGS.items():
            gaps, flips = [], 0
            for seed in range(videos):
                inputs = qwen_hand_inputs(model_type, frames=frames, seed=seed, seconds_per_grid=0.5)
                with torch.inference_mode(), apply_adapter(model, pooling=stages):
                    exact = torch.log_softmax(model(**inputs, logits_to_keep=1).logits[0, -1].float(), -1)
                    with mock.patch.object(qwen_vl, "mrope_positions", _rounded(qwen_vl.mrope_positions)):
                        rounded = torch.log_softmax(model(**inputs, logits_to_keep=1).logits[0, -1].float(), -1)
                gaps.append(float((exact - rounded).abs().max()))
                flips += int(exact.argmax() != rounded.argmax())
            rows.append(
                {
                    "model": model_type,
                    "pooling": name,
                    "videos": videos,
                    "frames": frames,
                    "max_logprob_change": max(gaps),
                    "mean_max_logprob_change": sum(gaps) / len(gaps),
                    "argmax_changed": flips,
                }
            )
    return rows


def markdown(rope: list[dict], rule: list[dict]) -> str:
    lengths = sorted({r["frames"] for r in rope})
    lines = ["| config | " + " | ".join(f"{f} frames" for f in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for name in dict.fromkeys(r["config"] for r in rope):
        cells = {r["frames"]: r for r in rope if r["config"] == name}
        lines.append(
            f"| {CONFIGS[name][0]} | "
            + " | ".join(
                f"**{100 * cells[f]['mean_accuracy']:.1f}** (s={_factor(cells[f])})" if f in cells else "-"
                for f in lengths
            )
            + " |"
        )
    lines += [
        RULE_HEADER,
        "| model | pooling | max change of a next-token log-prob | mean of per-video max | argmax moved |",
    ]
    lines += ["|---|---|---|---|---|"]
    for r in rule:
        lines.append(
            f"| {r['model']} | {r['pooling']} | {r['max_logprob_change']:.2e} | {r['mean_max_logprob_change']:.2e} | "
            f"{r['argmax_changed']} of {r['videos']} |"
        )
    return "\n".join(lines) + "\n"


def _factor(row: dict) -> str:
    f = row.get("rope_factor")
    return "1" if f is None or (isinstance(f, float) and math.isclose(f, 1.0)) else f"{f:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=60, help="held-out items per task and cell (default 60)")
    p.add_argument("--json", default=os.path.join(ROOT, "docs", "vllm_rules.json"))
    p.add_argument("--md", default=os.path.join(ROOT, "docs", "vllm_rules.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rule = rule_rows()
    print(markdown([], rule))
    rope = rope_rows(args.items)
    table = markdown(rope, rule)
    print(table)
    with open(args.json, "w") as f:
        json.dump(
            {"items_per_task": args.items, "seconds": time.perf_counter() - start, "rope": rope, "rule": rule},
            f,
            indent=1,
        )
    with open(args.md, "w") as f:
        f.write(HEADER.format(items=args.items) + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
