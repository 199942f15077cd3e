"""What does a 4-bit or 2-bit KV cache cost the shipped tiny model in accuracy? Measure it.

    python -m longctx_adapter.eval.measure_kv            # or: make measure-kv (not part of make test)
    python -m longctx_adapter.eval.measure_kv --items 20 --multiples 8   # a quick look

The model runs with its shipped adapter config (visual YaRN, scope all, with attention temperature) on held-out
items of every task of :mod:`longctx_adapter.eval.synthetic_qa` (the item stream of ``measure_tiny``) at 1x and 8x
its longest training video. Every row sees the same items, so rows are compared item by item: exact McNemar tests
against the full-precision (bf16) row, Wilson 95 % intervals per cell (:mod:`longctx_adapter.eval.stats`).

Why the prompt is prefilled in two pieces: transformers' quantized cache returns a layer's own full-precision keys
and values on its first update, so a one-word answer read at the end of a one-pass prefill never sees a quantized
value and scores exactly as full precision. The answer reads the quantized cache only when the prompt arrives in
pieces: ``video`` rows prefill the video first and then the question (as in a second question about a cached
video), ``chunked`` rows prefill 128 tokens at a time (chunked prefill, as ``plan`` pairs with a quantized cache:
later video tokens are computed from de-quantized earlier ones too). The answer is the argmax over the whole
vocabulary of the logits at the last prompt position (the first token greedy ``generate`` produces).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

import torch
from longctx_adapter.eval.measure_tiny import DEFAULT_MODEL, MEASURE_STREAM, ROOT, TRAIN_FRAMES, load_model
from longctx_adapter.eval.stats import mcnemar_exact, wilson_interval
from longctx_adapter.eval.synthetic_qa import TASKS, batch_inputs, make_item

MULTIPLES = (1, 8)
QUESTION_TOKENS = 7  # the question's 6 words and "assistant": the prompt's tail after the video
CHUNK = 128  # the chunked rows' prefill chunk, also transformers' default residual window
GROUP = 16  # hqq's q_group_size must divide every cache tensor; the tiny model's head size is 16
REFERENCE = "bf16"


def kv_cache(nbits: int | None) -> dict:
    """`generate` keyword arguments for an hqq-quantized cache of ``nbits`` bits (``{}``: the stock full-precision
    cache); every other setting is transformers' default (residual window 128, axis 0)."""
    if nbits is None:
        return {}
    return {"cache_implementation": "quantized",
            "cache_config": {"backend": "hqq", "nbits": nbits, "q_group_size": GROUP}}  # fmt: skip


#: name -> (description, model dtype, KV bits or None, prefill: "video" (video, then question) or a chunk size)
ROWS = {
    "fp32": ("float32 model, float32 KV", torch.float32, None, "video"),
    "bf16": ("bfloat16 model, bfloat16 KV (reference)", torch.bfloat16, None, "video"),
    "int4": ("bfloat16 model, 4-bit KV", torch.bfloat16, 4, "video"),
    "int2": ("bfloat16 model, 2-bit KV", torch.bfloat16, 2, "video"),
    "int4_chunked": (f"bfloat16 model, 4-bit KV, prefill chunks of {CHUNK}", torch.bfloat16, 4, CHUNK),
    "int2_chunked": (f"bfloat16 model, 2-bit KV, prefill chunks of {CHUNK}", torch.bfloat16, 2, CHUNK),
}


def prefill_chunk(prefill, prompt_length: int) -> int | None:
    """The ``prefill_chunk_size`` that realises a row's prefill on a prompt of ``prompt_length`` tokens: ``"video"``
    splits it into [everything up to the video's end, the question]."""
    if prefill == "video":
        return prompt_length - QUESTION_TOKENS
    return prefill


@torch.inference_mode()
def answer_logits(model, inputs: dict, nbits: int | None, prefill) -> torch.Tensor:
    """Logits at the last prompt position, the prompt prefilled as ``prefill`` says under a ``nbits`` KV cache
    (``prefill=None``: one pass)."""
    chunk = None if prefill is None else prefill_chunk(prefill, inputs["input_ids"].shape[1])
    out = model.generate(**inputs, max_new_tokens=1, do_sample=False, return_dict_in_generate=True,
                         output_logits=True, prefill_chunk_size=chunk, **kv_cache(nbits))  # fmt: skip
    if nbits is not None:
        assert type(out.past_key_values).__name__ == "QuantizedCache", type(out.past_key_values)
    return out.logits[0]


def load_models(path: str, dtypes) -> dict:
    """One copy of the model per dtype, each with its shipped adapter config applied (``from_pretrained``'s)."""
    from longctx_adapter import apply_adapter

    with open(os.path.join(path, "longctx_adapter.json")) as f:
        config = json.load(f)
    if config.get("pooling"):
        raise ValueError("the video/question split assumes an unpooled prompt; this model's config pools")
    models = {}
    for dtype in dtypes:
        model, tokenizer = load_model(path)
        model = model.to(dtype)
        apply_adapter(model, config)
        models[dtype] = model
    return {"models": models, "tokenizer": tokenizer, "adapter": config}


def score(model, tokenizer, items, nbits, prefill, batch: int = 16) -> tuple[list[bool], list[str]]:
    correct, predicted = [], []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        inputs = batch_inputs(chunk, tokenizer)
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
        words = tokenizer.convert_ids_to_tokens(answer_logits(model, inputs, nbits, prefill).argmax(-1).tolist())
        predicted += words
        correct += [w == it.answer for w, it in zip(words, chunk)]
    return correct, predicted


def measure(loaded: dict, rows, items_per_task: int, multiples=MULTIPLES, batch: int = 16, log=print) -> list[dict]:
    """One result per row and length: per task the 0/1 outcome of every item (the same items in every row)."""
    results = []
    for m in multiples:
        frames = TRAIN_FRAMES * m
        items = {t: [make_item(t, frames, MEASURE_STREAM, i) for i in range(items_per_task)] for t in TASKS}
        for name in rows:
            _, dtype, nbits, prefill = ROWS[name]
            start = time.perf_counter()
            result = {"row": name, "multiple": m, "frames": frames, "tasks": {}}
            for task in TASKS:
                model = loaded["models"][dtype]
                correct, predicted = score(model, loaded["tokenizer"], items[task], nbits, prefill, batch)
                result["tasks"][task] = {"correct": [int(c) for c in correct],
                                         "predicted": dict(Counter(predicted).most_common())}  # fmt: skip
            result["seconds"] = round(time.perf_counter() - start, 1)
            results.append(result)
            accs = " ".join(f"{t}={_accuracy(result['tasks'][t]['correct']):.3f}" for t in TASKS)
            log(f"{frames:3d} frames ({m}x) {name:13s} {accs} ({result['seconds']:.0f}s)")
    return results


def _accuracy(outcomes) -> float:
    return sum(outcomes) / len(outcomes)


def _all(result: dict) -> list[int]:
    return [c for t in TASKS for c in result["tasks"][t]["correct"]]


def summarize(results: list[dict], reference: str = REFERENCE) -> list[dict]:
    """Per row and length: accuracy with its Wilson 95 % interval per task and over all items, and the exact
    McNemar test against ``reference`` at the same length on the same items (absent for the reference itself)."""
    by = {(r["row"], r["multiple"]): r for r in results}
    out = []
    for r in results:
        ref = by.get((reference, r["multiple"]))
        cells = {}
        for key in (*TASKS, "all"):
            outcomes = _all(r) if key == "all" else r["tasks"][key]["correct"]
            lo, hi = wilson_interval(sum(outcomes), len(outcomes))
            cell = {"accuracy": _accuracy(outcomes), "n": len(outcomes), "ci95": [lo, hi]}
            if ref is not None and r["row"] != reference:
                ref_outcomes = _all(ref) if key == "all" else ref["tasks"][key]["correct"]
                test = mcnemar_exact(ref_outcomes, outcomes)
                cell["vs_reference"] = {"only_reference": test["only_first"], "only_this": test["only_second"],
                                        "p": test["p"]}  # fmt: skip
            cells[key] = cell
        out.append({"row": r["row"], "multiple": r["multiple"], "frames": r["frames"], "cells": cells})
    return out


def markdown(summary: list[dict], rows, items_per_task: int) -> str:
    multiples = sorted({s["multiple"] for s in summary})
    by = {(s["row"], s["multiple"]): s for s in summary}
    head = "| KV cache | " + " | ".join(f"{m}x ({TRAIN_FRAMES * m} frames)" for m in multiples) + " |"
    lines = [head, "|---|" + "---|" * len(multiples)]
    for name in rows:
        cells = []
        for m in multiples:
            s = by.get((name, m))
            if s is None:
                cells.append("")
                continue
            c = s["cells"]
            lo, hi = c["all"]["ci95"]
            text = f"**{100 * c['all']['accuracy']:.1f}** [{100 * lo:.1f}, {100 * hi:.1f}] ("
            text += "/".join(f"{100 * c[t]['accuracy']:.0f}" for t in TASKS) + ")"
            test = c["all"].get("vs_reference")
            if test is not None:
                text += f"; {test['only_reference']}-{test['only_this']}, p={_p(test['p'])}"
            cells.append(text)
        lines.append(f"| {name}: {ROWS[name][0]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Cells: accuracy over all {len(TASKS) * items_per_task} items in % (bold) with its Wilson 95 % interval, then "
        f"{'/'.join(TASKS)} ({items_per_task} items each); against the {REFERENCE} row on the same items, the "
        "discordant counts (items only the reference got right - items only this row got right) and the exact "
        "McNemar p-value.",
    ]
    return "\n".join(lines)


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--items", type=int, default=200, help="held-out items per task and cell (default 200)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--multiples", nargs="+", type=int, default=list(MULTIPLES))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=os.path.join(ROOT, "docs", "kv_accuracy.json"))
    p.add_argument("--md", default=os.path.join(ROOT, "docs", "kv_accuracy.md"))
    args = p.parse_args(argv)
    if REFERENCE not in args.rows:
        p.error(f"--rows must include the reference row {REFERENCE!r}")
    torch.set_num_threads(args.threads)
    loaded = load_models(args.model, sorted({ROWS[r][1] for r in args.rows}, key=str))
    start = time.perf_counter()
    results = measure(loaded, args.rows, args.items, tuple(args.multiples), batch=args.batch)
    summary = summarize(results)
    table = markdown(summary, args.rows, args.items)
    print(table)
    for path in (args.json, args.md):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({
            "model": os.path.relpath(args.model, ROOT),
            "adapter": loaded["adapter"],
            "items_per_task": args.items,
            "measure_stream": MEASURE_STREAM,
            "reference": REFERENCE,
            "rows": {k: {"description": ROWS[k][0], "dtype": str(ROWS[k][1]), "kv_bits": ROWS[k][2],
                         "prefill": ROWS[k][3], "cache": kv_cache(ROWS[k][2])} for k in args.rows},
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "hqq": __import__("importlib.metadata").metadata.version("hqq"),
            "threads": args.threads,
            "seconds": round(time.perf_counter() - start, 1),
            "summary": summary,
            "results": results,
        }, f, indent=1)  # fmt: skip
    with open(args.md, "w") as f:
        f.write(table + "\n")
    print(f"wrote {args.json}, {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
