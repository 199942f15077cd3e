"""Does the adapter help the shipped tiny model on videos longer than it was trained on? Measure it.

    python -m longctx_adapter.eval.measure_tiny          # or: make measure-tiny (not part of make test)
    python -m longctx_adapter.eval.measure_tiny --items 20 --configs stock yarn_all   # a quick look

For each adapter configuration and each length (1x, 2x, 4x, 8x the longest training video, i.e. 8, 16, 32,
64 frames) the script scores held-out items of every task of :mod:`longctx_adapter.eval.synthetic_qa` (an item
stream never used in training). An answer is correct when the argmax over the whole vocabulary of the logits at
the last prompt position (= the first greedily generated token) is the answer word. The same items are used for
every configuration, so differences between rows are paired. Results go to ``--json`` (every cell, with the visual
tokens that reached the decoder and the RoPE factor the adapter used), a markdown table on stdout and ``--md``,
and a plot ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter

import torch
from longctx_adapter.eval.synthetic_qa import TASKS, answer_words, batch_inputs, make_item

from longctx_adapter.ops.stages import stage_from_dict
from longctx_adapter.ops.stages.progressive import Progressive

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_MODEL = os.path.join(ROOT, "longctx_adapter", "models", "tiny_video_lm")
MEASURE_STREAM = 42  # item seed for measurement: neither the training stream (1000 + seed) nor train-time eval (7)
TRAIN_FRAMES = 8  # the longest training video; visual window = 8 * 16 + 1 = 129 tokens
TOKENS_PER_FRAME = 16
VISUAL_WINDOW = TRAIN_FRAMES * TOKENS_PER_FRAME + 1
MULTIPLES = (1, 2, 4, 8)

#: the stock model's own spatial step (bilinear 2x on the 7x7 grid) written as a pooling stage; temporal stages are
#: followed by it, so they only merge frames and keep the stock 16 tokens per frame
STOCK_SPATIAL = {"type": "progressive", "group": 1, "strides": [2], "mode": "bilinear"}
PROGRESSIVE_PAPER = {"type": "progressive", "group": 4, "strides": [2, 7], "mode": "bilinear"}  # paper: [2, 8] on 27x27
PROGRESSIVE_MILD = {"type": "progressive", "group": 4, "strides": [2, 4], "mode": "bilinear"}
YARN_ALL = {"type": "yarn", "visual_window": VISUAL_WINDOW, "scope": "all"}
YARN_VISUAL = {"type": "yarn", "visual_window": VISUAL_WINDOW, "scope": "visual"}
YARN_ALL_TEMP = {**YARN_ALL, "attention_factor": "yarn"}  # YaRN's 0.1 ln s + 1 (config None means 1.0)


def _temporal(stride: int) -> list[dict]:
    return [{"type": "temporal", "kernel": stride, "stride": stride}, STOCK_SPATIAL]


#: name -> (description, function(multiple) -> AdapterConfig dict or None for the stock model)
CONFIGS = {
    "stock": ("stock model, direct extrapolation", lambda m: None),
    "prog_2_7": (
        "progressive K=4 strides [2,7] (paper's [2,8] on the 7x7 grid)",
        lambda m: {"pooling": PROGRESSIVE_PAPER, "rope": None},
    ),
    "prog_2_7_avg": (
        "progressive K=4 strides [2,7], mode avg (stride-7 frames = mean of all 49 patches)",
        lambda m: {"pooling": {**PROGRESSIVE_PAPER, "mode": "avg"}, "rope": None},
    ),
    "prog_2_4": ("progressive K=4 strides [2,4]", lambda m: {"pooling": PROGRESSIVE_MILD, "rope": None}),
    "temporal_2": ("temporal kernel=stride=2 (+ stock 2x spatial)", lambda m: {"pooling": _temporal(2), "rope": None}),
    "temporal_matched": (
        "temporal kernel=stride=test/train length (+ stock 2x spatial)",
        lambda m: {"pooling": _temporal(m), "rope": None},
    ),
    "yarn_all": ("visual YaRN, scope all, window 129", lambda m: {"pooling": None, "rope": YARN_ALL}),
    "yarn_visual": ("visual YaRN, scope visual, window 129", lambda m: {"pooling": None, "rope": YARN_VISUAL}),
    "yarn_all_temp": (
        "visual YaRN, scope all, with YaRN's 0.1 ln s + 1 attention temperature",
        lambda m: {"pooling": None, "rope": YARN_ALL_TEMP},
    ),
    "interp_all": (
        "position interpolation of the visual span into 129 positions, text after it shifted back",
        lambda m: {"pooling": None, "rope": {"type": "interpolate", "visual_window": VISUAL_WINDOW, "scope": "all"}},
    ),
    "prog_2_7+yarn_all": (
        "progressive [2,7] + visual YaRN scope all",
        lambda m: {"pooling": PROGRESSIVE_PAPER, "rope": YARN_ALL},
    ),
    "prog_2_7+yarn_visual": (
        "progressive [2,7] + visual YaRN scope visual",
        lambda m: {"pooling": PROGRESSIVE_PAPER, "rope": YARN_VISUAL},
    ),
    "prog_2_4+yarn_all": (
        "progressive [2,4] + visual YaRN scope all",
        lambda m: {"pooling": PROGRESSIVE_MILD, "rope": YARN_ALL},
    ),
    "prog_2_4+yarn_all_temp": (
        "progressive [2,4] + visual YaRN scope all with YaRN's attention temperature",
        lambda m: {"pooling": PROGRESSIVE_MILD, "rope": YARN_ALL_TEMP},
    ),
}


def load_model(path: str = DEFAULT_MODEL):
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


@torch.no_grad()
def score(model, tokenizer, items, batch: int = 16) -> tuple[list[bool], list[str], dict]:
    """Correct/incorrect per item, the predicted words, and what the adapter did on the last batch."""
    from longctx_adapter import get_adapter

    correct, predicted = [], []
    stats = {}
    handle = get_adapter(model)
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        logits = model(**batch_inputs(chunk, tokenizer), logits_to_keep=1).logits[:, -1]
        pred = logits.argmax(-1).tolist()
        words = tokenizer.convert_ids_to_tokens(pred)
        predicted += words
        correct += [w == it.answer for w, it in zip(words, chunk)]
        if handle is not None and handle.last_stats:
            s = handle.last_stats[0]
            stats = {"visual_tokens": int(s["tokens_after"]), "rope_factor": s.get("rope_factor")}
    if not stats:
        n = items[0].num_frames * TOKENS_PER_FRAME + 1
        stats = {"visual_tokens": n, "rope_factor": None}
    return correct, predicted, stats


def measure(
    model, tokenizer, configs, items_per_task: int, multiples=MULTIPLES, batch: int = 16, log=print
) -> tuple[list, dict]:
    """Rows (one per configuration and length) and, per length and task, the marker frames of every item."""
    from longctx_adapter import apply_adapter

    rows, markers = [], {}
    for m in multiples:
        frames = TRAIN_FRAMES * m
        items = {t: [make_item(t, frames, MEASURE_STREAM, i) for i in range(items_per_task)] for t in TASKS}
        markers[str(m)] = {t: [list(it.markers) for it in items[t]] for t in TASKS}
        for name in configs:
            spec = CONFIGS[name][1](m)
            start = time.perf_counter()
            handle = apply_adapter(model, spec) if spec is not None else None
            try:
                row = {"config": name, "multiple": m, "frames": frames, "adapter": spec, "tasks": {}}
                for task in TASKS:
                    correct, predicted, stats = score(model, tokenizer, items[task], batch=batch)
                    row["tasks"][task] = {
                        "accuracy": sum(correct) / len(correct),
                        "n": len(correct),
                        "correct": [int(c) for c in correct],
                        "predicted": dict(Counter(predicted).most_common()),
                    }
                    row.update(stats)
            finally:
                if handle is not None:
                    handle.remove()
            row["mean_accuracy"] = sum(v["accuracy"] for v in row["tasks"].values()) / len(TASKS)
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            accs = " ".join(f"{t}={row['tasks'][t]['accuracy']:.2f}" for t in TASKS)
            log(
                f"{frames:3d} frames ({m}x) {name:22s} tokens={row['visual_tokens']:5d} "
                f"rope_factor={row['rope_factor']} {accs} mean={row['mean_accuracy']:.3f} ({row['seconds']:.0f}s)"
            )
    return rows, markers


def keyframe_breakdown(rows, markers, group: int = 4) -> list[str]:
    """Colour-task accuracy of progressive configs split by whether the marker sits on a group's first
    (high-resolution) frame: shows whether the model can read the low-resolution frames at all."""
    lines = []
    for r in rows:
        pooling = (r["adapter"] or {}).get("pooling")
        if not isinstance(pooling, dict) or not isinstance(stage_from_dict(pooling), Progressive):
            continue
        correct, where = r["tasks"]["color"]["correct"], markers[str(r["multiple"])]["color"]
        on = [c for c, mk in zip(correct, where) if mk[0] % group == 0]
        off = [c for c, mk in zip(correct, where) if mk[0] % group != 0]
        if on and off:
            lines.append(
                f"{r['config']:22s} {r['multiple']}x color: marker on a key frame {100 * sum(on) / len(on):5.1f} % "
                f"(n={len(on)}), on a pooled frame {100 * sum(off) / len(off):5.1f} % (n={len(off)})"
            )
    return lines


def chance() -> dict:
    return {t: 1.0 / len(answer_words(t)) for t in TASKS}


def ci95(p: float, n: int) -> float:
    """Half-width of the normal-approximation 95 % interval of a proportion."""
    return 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / n)


def markdown(rows, configs) -> str:
    multiples = sorted({r["multiple"] for r in rows})
    by = {(r["config"], r["multiple"]): r for r in rows}
    n = rows[0]["tasks"][TASKS[0]]["n"]
    lines = [
        "| configuration | "
        + " | ".join(f"{m}x ({TRAIN_FRAMES * m} fr)" for m in multiples)
        + f" | visual tokens at {max(multiples)}x |",
        "|---|" + "---|" * len(multiples) + "---|",
    ]
    for name in configs:
        cells = []
        for m in multiples:
            r = by.get((name, m))
            if r is None:
                cells.append("")
                continue
            parts = "/".join(f"{100 * r['tasks'][t]['accuracy']:.0f}" for t in TASKS)
            cells.append(f"**{100 * r['mean_accuracy']:.1f}** ({parts})")
        last = by.get((name, max(multiples)))
        tokens = f"{last['visual_tokens']:,}" + (
            f", s={last['rope_factor']:.2f}" if last and last["rope_factor"] else ""
        )
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {tokens} |")
    c = chance()
    lines.append("")
    lines.append(
        f"Cells: mean accuracy over the three tasks in % (bold), then {'/'.join(TASKS)}; {n} held-out items per "
        f"task and cell (95 % interval of one task cell: about +-{100 * ci95(0.5, n):.0f} points at 50 %, of a "
        f"mean: about +-{100 * ci95(0.5, 3 * n):.0f}). Chance: "
        + ", ".join(f"{t} {100 * v:.0f} %" for t, v in c.items())
        + "."
    )
    return "\n".join(lines)


def _family(name: str) -> str:
    if name == "stock":
        return "stock"
    if "+" in name:
        return "pooling + RoPE"
    return "RoPE only" if name.startswith(("yarn", "interp")) else "pooling only"


def plot(rows, configs, path: str) -> None:
    """One row of panels per family (pooling only, RoPE only, both), stock drawn in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    multiples = sorted({r["multiple"] for r in rows})
    by = {(r["config"], r["multiple"]): r for r in rows}
    panels = ["mean", *TASKS]
    families = [f for f in ("pooling only", "RoPE only", "pooling + RoPE") if any(_family(c) == f for c in configs)]
    families = families or ["stock"]
    fig, axes = plt.subplots(
        len(families), len(panels), figsize=(4.0 * len(panels), 3.3 * len(families)), sharey=True, squeeze=False
    )
    palette = plt.get_cmap("tab10").colors
    for row_axes, family in zip(axes, families):
        members = [c for c in configs if _family(c) == family]
        names = (["stock"] if "stock" in configs else []) + [c for c in members if c != "stock"]
        for ax, panel in zip(row_axes, panels):
            for i, name in enumerate(names):
                ys = []
                for m in multiples:
                    r = by.get((name, m))
                    ys.append(
                        None
                        if r is None
                        else (r["mean_accuracy"] if panel == "mean" else r["tasks"][panel]["accuracy"])
                    )
                stock = name == "stock"
                ax.plot(
                    multiples,
                    ys,
                    label=name,
                    marker="o",
                    ms=3,
                    color="black" if stock else palette[i % 10],
                    lw=2.6 if stock else 1.5,
                    zorder=3 if stock else 2,
                )
            if panel != "mean":
                ax.axhline(chance()[panel], color="gray", lw=0.8, ls=":")
            ax.set_xscale("log", base=2)
            ax.set_xticks(multiples)
            ax.set_xticklabels([f"{m}x ({TRAIN_FRAMES * m} fr)" for m in multiples], fontsize=8)
            ax.set_title(f"{family}: {'mean of 3 tasks' if panel == 'mean' else panel}", fontsize=10)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        row_axes[0].set_ylabel("held-out accuracy")
        row_axes[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(
        "Tiny LLaVA-OneVision trained on 4-8 frame videos: held-out accuracy at 1x-8x the longest training "
        "video (dotted: chance)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_examples(path: str, frames: int = TRAIN_FRAMES) -> None:
    """One training-length item of each task as a strip of frames (what the model sees, before the processor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TASKS), frames, figsize=(1.1 * frames, 1.35 * len(TASKS)), squeeze=False)
    for row, task in zip(axes, TASKS):
        item = make_item(task, frames, MEASURE_STREAM, 0)
        for f, ax in enumerate(row):
            ax.imshow(item.frames[f], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if f in item.markers:
                for side in ax.spines.values():
                    side.set_color("black")
                    side.set_linewidth(2.5)
        row[0].set_ylabel(task, fontsize=9)
        row[frames // 2].set_title(f'"{item.question}"  ->  {item.answer}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--items", type=int, default=150, help="held-out items per task and cell (default 150)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--multiples", nargs="+", type=int, default=list(MULTIPLES))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=os.path.join(ROOT, "docs", "tiny_extrapolation.json"))
    p.add_argument("--md", default=os.path.join(ROOT, "docs", "tiny_extrapolation.md"))
    p.add_argument("--plot", default=os.path.join(ROOT, "docs", "tiny_extrapolation.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    start = time.perf_counter()
    rows, markers = measure(model, tokenizer, args.configs, args.items, tuple(args.multiples), batch=args.batch)
    table = markdown(rows, args.configs)
    print(table)
    breakdown = keyframe_breakdown(rows, markers)
    print("\n".join(breakdown))
    for path in (args.json, args.md, args.plot):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(
            {
                "model": os.path.relpath(args.model, ROOT),
                "items_per_task": args.items,
                "measure_stream": MEASURE_STREAM,
                "train_frames": TRAIN_FRAMES,
                "visual_window": VISUAL_WINDOW,
                "configs": {k: CONFIGS[k][0] for k in args.configs},
                "seconds": time.perf_counter() - start,
                "keyframe_breakdown": breakdown,
                "rows": rows,
                "item_markers": markers,
            },
            f,
            indent=1,
        )
    with open(args.md, "w") as f:
        f.write(table + "\n")
    plot(rows, args.configs, args.plot)
    plot_examples(os.path.join(os.path.dirname(os.path.abspath(args.plot)), "tiny_task_examples.png"))
    print(f"wrote {args.json}, {args.md}, {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
