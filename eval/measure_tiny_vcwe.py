"""Does a model trained on long text but short videos have a separate visual context window? Measure it.

    python -m longctx_adapter.eval.measure_tiny_vcwe            # or: make measure-tiny-vcwe (not part of make test)
    python -m longctx_adapter.eval.measure_tiny_vcwe --items 10 --seeds 0 --out-dir /tmp/ev   # a quick look
    python -m longctx_adapter.eval.measure_tiny_vcwe --analyze-only   # re-write docs from out/evidence/seed*.json

Models: ``out/tiny_vcwe/seed{0,1,2}`` from ``make train-tiny-vcwe`` (videos of 4-8 frames = 129 visual tokens, text
items of 8-664 words = prompts up to 672 tokens). For every seed the script scores

- **sanity** (stock model): video items at 8 frames, text items from 64 words to twice the language window;
- **rows (a)-(g)** (:data:`ROWS`) on video items at 1x, 2x, 4x and 8x the longest training video (8-64 frames,
  137-1,033 prompt tokens; 4x = 521 tokens is still inside the 672-token language window), on two disjoint item
  streams: **validation** (picks the default configuration) and **test** (everything reported).

Every row sees the same items (paired), ``--items`` per task and cell. An answer is right when the argmax over the
vocabulary at the last prompt position (the first greedy token) is the answer word. Statistics (Wilson intervals,
exact McNemar tests, the verdict rule, recovery) are in :func:`analyze`. Raw per-seed results go to
``out/evidence/seed<N>.json`` (every item's outcome), the summary to ``docs/evidence.json``, tables to
``docs/evidence_results.md`` and plots to ``docs/evidence_accuracy.png`` / ``docs/evidence_examples.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

import torch
from longctx_adapter.eval.stats import mcnemar_exact, wilson_interval
from longctx_adapter.eval.synthetic_qa import TASKS, batch_inputs, make_item
from longctx_adapter.eval.synthetic_text import PROMPT_EXTRA, make_text_item, text_batch_inputs
from longctx_adapter.eval.train_tiny_vcwe import DEFAULT_OUT, SHIPPED_DIR, seed_dir

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RAW_DIR = os.path.join(ROOT, "out", "evidence")
DOCS = os.path.join(ROOT, "docs")
STREAMS = {"validation": 43, "test": 44}  # neither training (2000 + seed), nor the train-time check (7)
TRAIN_FRAMES = 8
TOKENS_PER_FRAME = 16
VISUAL_WINDOW = TRAIN_FRAMES * TOKENS_PER_FRAME + 1  # 129 visual tokens
MAX_WORDS = 664
LANGUAGE_WINDOW = MAX_WORDS + PROMPT_EXTRA  # 672 tokens: the longest training sequence
MULTIPLES = (1, 2, 4, 8)
#: text lengths (words): the shortest and longest trained, the video prompts' lengths at 1x-8x (a text item of
#: N words is exactly as long as a video with N visual tokens), and twice the language window
TEXT_LENGTHS = (64, 129, 257, 513, 664, 1025, 2 * LANGUAGE_WINDOW - PROMPT_EXTRA)
SEEDS = (0, 1, 2)

PROGRESSIVE_2_4 = {"type": "progressive", "group": 4, "strides": [2, 4], "mode": "bilinear"}
YARN_VISUAL_WINDOW = {"type": "yarn", "visual_window": VISUAL_WINDOW, "scope": "all"}
#: row -> (name, description, adapter config or None for the stock model); the same config at every length
ROWS: dict[str, tuple[str, str, dict | None]] = {
    "a": ("stock", "stock model: direct extrapolation", None),
    "b": (
        "yarn_language_window",
        f"YaRN with the language window ({LANGUAGE_WINDOW} tokens) as original length",
        {"pooling": None, "rope": {"type": "yarn", "visual_window": LANGUAGE_WINDOW, "scope": "all"}},
    ),
    "c": (
        "yarn_visual_window",
        f"YaRN with the visual window ({VISUAL_WINDOW} tokens): the paper's method",
        {"pooling": None, "rope": YARN_VISUAL_WINDOW},
    ),
    "d": (
        "yarn_visual_window_temp",
        "(c) + YaRN's attention temperature 0.1 ln s + 1",
        {"pooling": None, "rope": {**YARN_VISUAL_WINDOW, "attention_factor": "yarn"}},
    ),
    "e": (
        "yarn_visual_window+progressive",
        "(c) + progressive pooling, group 4, strides [2, 4]",
        {"pooling": PROGRESSIVE_2_4, "rope": YARN_VISUAL_WINDOW},
    ),
    "f": (
        "yarn_visual_window_scope_visual",
        "(c) with scope visual (text rows keep stock RoPE)",
        {"pooling": None, "rope": {**YARN_VISUAL_WINDOW, "scope": "visual"}},
    ),
    "g": (
        "linear_visual_window",
        "linear position interpolation (frequencies / s) from the visual window",
        {"pooling": None, "rope": {"type": "linear", "visual_window": VISUAL_WINDOW, "scope": "all"}},
    ),
}
#: paired comparisons reported at every length on the test stream: (row, against)
COMPARISONS = (("c", "b"), ("c", "a"), ("b", "a"), ("d", "c"), ("e", "c"), ("f", "c"), ("g", "c"))
CLAIM_MARGIN = 0.10  # (c) - (b) at 8x must be at least 10 points ...
CLAIM_ALPHA = 0.01  # ... with McNemar p below this
SEEDS_NEEDED = 2  # ... on at least this many of the three seeds
IN_WINDOW_TOLERANCE = 0.02  # a default may lose at most 2 points at 1x on validation (pooled over seeds)


# ------------------------------------------------------------------------------------------------- measuring


def load_model(path: str):
    from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise SystemExit(f"no trained model in {path}: run `make train-tiny-vcwe` first")
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _bits(flags) -> str:
    return "".join("1" if f else "0" for f in flags)


@torch.no_grad()
def score(model, tokenizer, items, inputs_fn, batch: int, check_eos: bool = False, prepared=None) -> dict:
    """Outcome string (one 0/1 per item), predicted-word counts, adapter stats, and (optionally) how often greedy
    decoding gives exactly ``answer </s>``. ``prepared``: the chunks' inputs, built once and shared by every row."""
    from longctx_adapter import get_adapter

    correct, predicted, eos = [], [], []
    stats = {}
    handle = get_adapter(model)
    for number, start in enumerate(range(0, len(items), batch)):
        chunk = items[start : start + batch]
        inputs = dict(prepared[number]) if prepared is not None else inputs_fn(chunk, tokenizer)
        logits = model(**inputs, logits_to_keep=1).logits[:, -1]
        pred = logits.argmax(-1)
        words = tokenizer.convert_ids_to_tokens(pred.tolist())
        predicted += words
        right = [w == it.answer for w, it in zip(words, chunk)]
        correct += right
        if check_eos:
            follow = dict(inputs)
            follow["input_ids"] = torch.cat([inputs["input_ids"], pred[:, None]], dim=1)
            follow["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(pred[:, None])], dim=1)
            nxt = model(**follow, logits_to_keep=1).logits[:, -1].argmax(-1)
            eos += [r and int(n) == tokenizer.eos_token_id for r, n in zip(right, nxt)]
        if handle is not None and handle.last_stats:
            s = handle.last_stats[0]
            stats = {"visual_tokens": int(s["tokens_after"]), "rope_factor": s.get("rope_factor")}
    out = {"correct": _bits(correct), "predicted": dict(Counter(predicted).most_common())}
    if stats:
        out.update(stats)
    if check_eos:
        out["answer_then_eos"] = _bits(eos)
    return out


def prepare(items, batch: int, tokenizer) -> list[dict]:
    """The model inputs of ``items`` in chunks of ``batch`` (video preprocessing is done once, not once per row)."""
    return [batch_inputs(items[start : start + batch], tokenizer) for start in range(0, len(items), batch)]


def measure_seed(
    model, tokenizer, items: int, rows, multiples, streams, text_lengths, batch: int, log=print,
    validation_items: int | None = None, checkpoint=None,
) -> dict:  # fmt: skip
    """Every cell of one model: sanity (text lengths, video at 8 frames with EOS) and rows x multiples x streams
    (``validation_items`` per task and cell on the validation stream, default ``items``).

    The test stream comes first, in the order the multiples are given, then the sanity cells, then validation;
    ``checkpoint(result)`` is called after every cell so that an interrupted run keeps what it measured."""
    from longctx_adapter import apply_adapter

    result = {"text": {}, "video": {s: {r: {} for r in rows} for s in streams}, "sanity_video": {}}
    test = STREAMS["test"]
    start = time.perf_counter()

    def save():
        result["seconds"] = time.perf_counter() - start
        if checkpoint is not None:
            checkpoint(result)

    def rows_on(stream: str) -> None:
        for m in multiples:
            frames = TRAIN_FRAMES * m
            n = items if stream != "validation" or validation_items is None else validation_items
            task_items = {t: [make_item(t, frames, STREAMS[stream], i) for i in range(n)] for t in TASKS}
            prepared = {t: prepare(task_items[t], batch, tokenizer) for t in TASKS}
            for row in rows:
                spec = ROWS[row][2]
                t0 = time.perf_counter()
                handle = apply_adapter(model, spec) if spec is not None else None
                try:
                    cells = {
                        t: score(model, tokenizer, task_items[t], batch_inputs, batch, prepared=prepared[t])
                        for t in TASKS
                    }
                finally:
                    if handle is not None:
                        handle.remove()
                result["video"][stream][row][str(m)] = cells
                accs = " ".join(f"{t}={cells[t]['correct'].count('1') / n:.2f}" for t in TASKS)
                log(
                    f"{stream:10s} {frames:3d} fr ({m}x) ({row}) {ROWS[row][0]:32s} {accs} ({time.perf_counter() - t0:.0f}s)"
                )
                save()

    ordered = sorted(streams, key=lambda s: s != "test")
    if ordered and ordered[0] == "test":
        rows_on("test")
    for words in text_lengths:
        cells = {}
        for task in TASKS:
            its = [make_text_item(task, words, test, i) for i in range(items)]
            cells[task] = score(model, tokenizer, its, text_batch_inputs, batch, check_eos=words <= MAX_WORDS)
        result["text"][str(words)] = cells
        log(f"text {words:5d} words: " + " ".join(f"{t}={cells[t]['correct'].count('1') / items:.2f}" for t in TASKS))
        save()
    for task in TASKS:
        its = [make_item(task, TRAIN_FRAMES, test, i) for i in range(items)]
        result["sanity_video"][task] = score(model, tokenizer, its, batch_inputs, batch, check_eos=True)
    save()
    for stream in ordered:
        if stream != "test":
            rows_on(stream)
    for per_row in result["video"].values():  # tables read the multiples in increasing order
        for row in per_row:
            per_row[row] = dict(sorted(per_row[row].items(), key=lambda kv: int(kv[0])))
    result["text"] = dict(sorted(result["text"].items(), key=lambda kv: int(kv[0])))
    save()
    return result


# ------------------------------------------------------------------------------------------------- analysis


def pooled(cells: dict) -> dict:
    """Accuracy of a cell over all tasks (equal items per task, so this is also the mean of the task accuracies)
    with its Wilson 95 % interval, and per task."""
    bits = "".join(cells[t]["correct"] for t in TASKS)
    k, n = bits.count("1"), len(bits)
    lo, hi = wilson_interval(k, n)
    per_task = {}
    for t in TASKS:
        b = cells[t]["correct"]
        tlo, thi = wilson_interval(b.count("1"), len(b))
        per_task[t] = {"acc": b.count("1") / len(b), "lo": tlo, "hi": thi, "n": len(b)}
    return {"acc": k / n, "lo": lo, "hi": hi, "k": k, "n": n, "tasks": per_task}


def outcomes_str(cells: dict) -> str:
    return "".join(cells[t]["correct"] for t in TASKS)


def outcomes(cells: dict) -> list[int]:
    return [int(c) for c in outcomes_str(cells)]


def paired(raw: dict, stream: str, row: str, other: str, m: str) -> dict:
    video = raw["video"][stream]
    first, second = outcomes(video[row][m]), outcomes(video[other][m])
    test = mcnemar_exact(first, second)
    return {**test, "diff": (sum(first) - sum(second)) / len(first), "n": len(first)}


def choose_default(raws: dict, rows) -> dict:
    """The row with the best validation accuracy at 8x (pooled over seeds) among those that lose at most
    IN_WINDOW_TOLERANCE against stock at 1x (a default must not hurt inputs the model was trained on)."""
    complete = {
        s: raw
        for s, raw in raws.items()
        if all(set(raw["video"]["validation"][r]) == set(raw["video"]["test"][r]) for r in rows)
    }
    if not complete:
        raise SystemExit("no seed has a complete validation stream: cannot choose a default")
    skipped = sorted(set(raws) - set(complete))
    raws = complete
    top = str(max(int(m) for m in next(iter(raws.values()))["video"]["validation"]["a"]))

    def acc(row, m):
        bits = "".join(outcomes_str(raws[s]["video"]["validation"][row][m]) for s in raws)
        return bits.count("1") / len(bits)

    table = {r: {m: acc(r, m) for m in next(iter(raws.values()))["video"]["validation"][r]} for r in rows}
    stock_1x = table["a"]["1"]
    eligible = [r for r in rows if table[r]["1"] >= stock_1x - IN_WINDOW_TOLERANCE]
    best = max(eligible, key=lambda r: (table[r][top], sum(table[r].values())))
    return {
        "row": best,
        "rule": " ".join(choose_default.__doc__.split()).replace(
            "IN_WINDOW_TOLERANCE", f"{100 * IN_WINDOW_TOLERANCE:g} points"
        ),
        "validation": table,
        "eligible": eligible,
        "at": top,
        "seeds": sorted(raws),
        "seeds_without_validation": skipped,
    }


def verdict(raws: dict) -> dict:
    """The verdict rule, applied to the test stream, seed by seed.

    Confirmed: on at least 2 of 3 seeds stock (a) at 4x is clearly below (a) at 1x (at least 10 points lower, and the
    Wilson 95 % intervals of the three-task accuracy do not overlap) although 4x is inside the language window, AND
    on at least 2 of 3 seeds (c) - (b) >= 10 points at 8x with exact McNemar p < 0.01.
    Refuted: on at least 2 of 3 seeds stock holds at 4x (not clearly below 1x: no separate visual window), OR on at
    least 2 of 3 seeds (b) >= (c) at 8x. Otherwise: inconclusive.
    """
    per_seed = {}
    for seed, raw in raws.items():
        video = raw["video"]["test"]
        one, four = pooled(video["a"]["1"]), pooled(video["a"]["4"])
        drop_clear = one["acc"] - four["acc"] >= CLAIM_MARGIN and four["hi"] < one["lo"]
        cb = paired(raw, "test", "c", "b", "8")
        per_seed[seed] = {
            "stock_1x": one,
            "stock_4x": four,
            "stock_4x_clearly_below_1x": drop_clear,
            "c_minus_b_8x": cb,
            "c_beats_b_clearly": cb["diff"] >= CLAIM_MARGIN and cb["p"] < CLAIM_ALPHA,
            "b_at_least_c": cb["diff"] <= 0,
        }
    count = lambda key: sum(1 for v in per_seed.values() if v[key])  # noqa: E731
    window = count("stock_4x_clearly_below_1x")
    holds = len(per_seed) - window
    beats = count("c_beats_b_clearly")
    b_ge_c = count("b_at_least_c")
    if window >= SEEDS_NEEDED and beats >= SEEDS_NEEDED:
        outcome = "confirmed"
    elif holds >= SEEDS_NEEDED or b_ge_c >= SEEDS_NEEDED:
        outcome = "refuted"
    else:
        outcome = "inconclusive"
    return {
        "outcome": outcome,
        "rule": " ".join(verdict.__doc__.split()),
        "seeds_stock_4x_clearly_below_1x": window,
        "seeds_c_beats_b_by_10_with_p_below_0.01": beats,
        "seeds_b_at_least_c": b_ge_c,
        "per_seed": per_seed,
    }


def recovery(raw: dict, row: str, stream: str = "test", m: str = "8") -> dict:
    """Share of the accuracy stock loses at ``m``x (against its own 1x) that ``row`` wins back."""
    video = raw["video"][stream]
    stock_1x, stock_m, row_m = (pooled(video[r][k])["acc"] for r, k in (("a", "1"), ("a", m), (row, m)))
    lost = stock_1x - stock_m
    return {
        "stock_1x": stock_1x,
        "stock": stock_m,
        "row": row_m,
        "lost": lost,
        "recovered": None if lost <= 0 else (row_m - stock_m) / lost,
    }


def sanity(raw: dict) -> dict:
    video = pooled(raw["sanity_video"])
    eos = "".join(raw["sanity_video"][t]["answer_then_eos"] for t in TASKS)
    text = {w: pooled(cells) for w, cells in raw["text"].items()}
    longest = text[str(MAX_WORDS)]
    beyond = text[str(max(int(w) for w in raw["text"]))]
    text_eos = "".join(raw["text"][str(MAX_WORDS)][t]["answer_then_eos"] for t in TASKS)
    return {
        "video_8_frames": video,
        "video_answer_then_eos": eos.count("1") / len(eos),
        "text": text,
        "text_answer_then_eos_at_longest": text_eos.count("1") / len(text_eos),
        "video_ok": video["acc"] >= 0.98,
        "text_ok": longest["acc"] >= 0.95,
        "text_falls_beyond": beyond["hi"] < longest["lo"],
    }


def analyze(raws: dict, rows=tuple(ROWS)) -> dict:
    raws = {str(k): v for k, v in raws.items()}
    chosen = choose_default(raws, rows)
    comparisons = {}
    for seed, raw in raws.items():
        comparisons[seed] = {
            f"{r}-{o}": {m: paired(raw, "test", r, o, m) for m in raw["video"]["test"][r]}
            for r, o in COMPARISONS
            if r in rows and o in rows
        }
        if chosen["row"] != "a":
            comparisons[seed][f"{chosen['row']}-a (chosen vs stock)"] = {
                m: paired(raw, "test", chosen["row"], "a", m) for m in raw["video"]["test"]["a"]
            }
    return {
        "rows": {r: {"name": ROWS[r][0], "description": ROWS[r][1], "config": ROWS[r][2]} for r in rows},
        "visual_window": VISUAL_WINDOW,
        "language_window": LANGUAGE_WINDOW,
        "streams": STREAMS,
        "sanity": {
            seed: sanity(raw) for seed, raw in raws.items() if raw["sanity_video"] and str(MAX_WORDS) in raw["text"]
        },
        "test": {
            seed: {r: {m: pooled(c) for m, c in raw["video"]["test"][r].items()} for r in rows}
            for seed, raw in raws.items()
        },
        "validation": {
            seed: {r: {m: pooled(c) for m, c in raw["video"]["validation"][r].items()} for r in rows}
            for seed, raw in raws.items()
        },
        "comparisons": comparisons,
        "verdict": verdict(raws),
        "chosen": chosen,
        "recovery": {seed: {r: recovery(raw, r) for r in rows} for seed, raw in raws.items()},
        "adapter_stats": {
            r: {m: {k: c[TASKS[0]].get(k) for k in ("visual_tokens", "rope_factor")} for m, c in v.items()}
            for r, v in next(iter(raws.values()))["video"]["test"].items()
        },
        "predicted_8x": {
            seed: {r: {t: raw["video"]["test"][r]["8"][t]["predicted"] for t in TASKS} for r in rows}
            for seed, raw in raws.items()
        },
        "seconds": {seed: raw.get("seconds") for seed, raw in raws.items()},
    }


# ------------------------------------------------------------------------------------------------- reporting


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _cell(c: dict) -> str:
    return f"**{_pct(c['acc'])}** [{_pct(c['lo'])}, {_pct(c['hi'])}]"


def _p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def markdown(summary: dict, items: int) -> str:
    seeds = list(summary["test"])
    rows = list(summary["rows"])
    multiples = list(next(iter(summary["test"].values()))["a"])
    out = []
    out.append("## Sanity (stock model, test stream)\n")
    text_lengths = list(next(iter(summary["sanity"].values()))["text"])
    out.append(
        "| seed | video, 8 frames | answer then EOS (video) | "
        + " | ".join(f"text {w} words" for w in text_lengths)
        + " | answer then EOS (text, 664) | video >= 98 % | text >= 95 % at 664 | text falls beyond |"
    )
    out.append("|---" * (7 + len(text_lengths)) + "|")
    for seed in seeds:
        if seed not in summary["sanity"]:
            out.append(f"| {seed} | not measured (interrupted run) |" + " |" * (5 + len(text_lengths)))
            continue
        s = summary["sanity"][seed]
        out.append(
            f"| {seed} | {_cell(s['video_8_frames'])} | {_pct(s['video_answer_then_eos'])} | "
            + " | ".join(_cell(s["text"][w]) if w in s["text"] else "not measured" for w in text_lengths)
            + f" | {_pct(s['text_answer_then_eos_at_longest'])} | {'yes' if s['video_ok'] else 'NO'} | "
            f"{'yes' if s['text_ok'] else 'NO'} | {'yes' if s['text_falls_beyond'] else 'NO'} |"
        )
    out.append(
        f"\nText items of N words are exactly as long as videos with N visual tokens: 129/257/513/1025 words = the "
        f"video prompts at 1x/2x/4x/8x. Language window: {summary['language_window']} tokens (664 words); "
        f"{text_lengths[-1]} words = twice that. Cells: accuracy over the three tasks in % [Wilson 95 % interval], "
        f"{items} items per task.\n"
    )
    header = "| row | " + " | ".join(f"{m}x ({TRAIN_FRAMES * int(m)} fr)" for m in multiples) + " |"
    rule = "|---" * (1 + len(multiples)) + "|"
    out.append("## Rows (a)-(g) on the test stream\n")
    for r in rows:
        out.append(f"- **({r})** `{summary['rows'][r]['name']}`: {summary['rows'][r]['description']}")
    out.append("")
    for seed in seeds:
        out.append(f"**Seed {seed}**\n")
        out.append(header)
        out.append(rule)
        for r in rows:
            cells = summary["test"][seed][r]
            out.append(
                f"| ({r}) {summary['rows'][r]['name']} | " + " | ".join(_cell(cells[m]) for m in multiples) + " |"
            )
        out.append("")
    out.append(
        f"Cells: accuracy over color/order/count ({3 * items} items) in % [Wilson 95 % interval]. Per-task numbers "
        "are in `docs/evidence.json`.\n"
    )
    stats = summary["adapter_stats"]
    out.append("Visual tokens reaching the decoder and the RoPE factor s per row:\n")
    out.append(header)
    out.append(rule)
    for r in rows:
        cells = []
        for m in multiples:
            st = stats[r][m]
            tok = st.get("visual_tokens") or TRAIN_FRAMES * int(m) * TOKENS_PER_FRAME + 1
            f = st.get("rope_factor")
            cells.append(f"{tok}" + (f", s={f:.2f}" if f else ""))
        out.append(f"| ({r}) | " + " | ".join(cells) + " |")
    out.append("")
    out.append("## Paired tests (exact McNemar, test stream)\n")
    out.append(
        "Difference in points (first minus second row) on the same items; (n1/n2) = items only the first / only "
        "the second row got right; p two-sided.\n"
    )
    out.append("| comparison | seed | " + " | ".join(f"{m}x" for m in multiples) + " |")
    out.append("|---|---" + "|---" * len(multiples) + "|")
    names = list(next(iter(summary["comparisons"].values())))
    for name in names:
        for seed in seeds:
            c = summary["comparisons"][seed][name]
            cells = [
                f"{100 * c[m]['diff']:+.1f} ({c[m]['only_first']}/{c[m]['only_second']}) p={_p(c[m]['p'])}"
                for m in multiples
            ]
            out.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
    out.append("")
    v = summary["verdict"]
    out.append("## Verdict\n")
    out.append(f"Rule: {v['rule']}\n")
    out.append(
        "| seed | stock 1x | stock 4x | 4x clearly below 1x | (c) - (b) at 8x | McNemar p | (c) beats (b) by >= 10, p < 0.01 |"
    )
    out.append("|---|---|---|---|---|---|---|")
    for seed, s in v["per_seed"].items():
        cb = s["c_minus_b_8x"]
        out.append(
            f"| {seed} | {_cell(s['stock_1x'])} | {_cell(s['stock_4x'])} | "
            f"{'yes' if s['stock_4x_clearly_below_1x'] else 'no'} | {100 * cb['diff']:+.1f} | {_p(cb['p'])} | "
            f"{'yes' if s['c_beats_b_clearly'] else 'no'} |"
        )
    decided = v["outcome"] if v["outcome"] != "inconclusive" else f"not decided with {len(v['per_seed'])} seed(s)"
    out.append(f"\n**Outcome: {decided}.**\n")
    ch = summary["chosen"]
    out.append("## Default chosen on the validation stream\n")
    out.append(f"Rule: {ch['rule']}\n")
    out.append("| row | " + " | ".join(f"{m}x" for m in multiples) + " | eligible |")
    out.append("|---" * (2 + len(multiples)) + "|")
    for r in rows:
        t = ch["validation"][r]
        mark = " (chosen)" if r == ch["row"] else ""
        out.append(
            f"| ({r}) {summary['rows'][r]['name']}{mark} | "
            + " | ".join(_pct(t[m]) for m in multiples)
            + f" | {'yes' if r in ch['eligible'] else 'no'} |"
        )
    n_val = summary.get("validation_items_per_task", items)
    val_seeds = ch.get("seeds", seeds)
    out.append(
        f"\nValidation accuracy pooled over seed(s) {', '.join(map(str, val_seeds))} ({3 * n_val * len(val_seeds)} "
        "items per cell).\n"
    )
    out.append("## Recovery at 8x on the test stream\n")
    out.append(
        "Share of the accuracy stock loses between 1x and 8x that a row wins back: (row - stock) / (stock 1x - stock 8x).\n"
    )
    out.append("| row | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    out.append("|---" * (1 + len(seeds)) + "|")
    for r in rows:
        cells = []
        for seed in seeds:
            rec = summary["recovery"][seed][r]["recovered"]
            cells.append("n/a" if rec is None else f"{100 * rec:.0f} %")
        mark = " (chosen)" if r == ch["row"] else ""
        out.append(f"| ({r}) {summary['rows'][r]['name']}{mark} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def _yerr(cells) -> list[list[float]]:
    return [[max(0.0, c["acc"] - c["lo"]) for c in cells], [max(0.0, c["hi"] - c["acc"]) for c in cells]]


def plot(summary: dict, path: str) -> None:
    """Accuracy vs length per row with Wilson 95 % intervals: one panel per seed, text at the same lengths dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(summary["test"])
    rows = list(summary["rows"])
    multiples = [int(m) for m in next(iter(summary["test"].values()))["a"]]
    fig, axes = plt.subplots(1, len(seeds), figsize=(5.2 * len(seeds), 4.4), sharey=True, squeeze=False)
    palette = plt.get_cmap("tab10").colors
    lang_multiple = (LANGUAGE_WINDOW - PROMPT_EXTRA) / VISUAL_WINDOW
    for ax, seed in zip(axes[0], seeds):
        for i, r in enumerate(rows):
            cells = [summary["test"][seed][r][str(m)] for m in multiples]
            ys = [c["acc"] for c in cells]
            err = _yerr(cells)
            jitter = [m * (1 + 0.025 * (i - len(rows) / 2)) for m in multiples]
            stock = r == "a"
            ax.errorbar(
                jitter, ys, yerr=err, marker="o", ms=3, capsize=2, lw=2.4 if stock else 1.3,
                color="black" if stock else palette[i % 10], label=f"({r}) {summary['rows'][r]['name']}",
                zorder=3 if stock else 2,
            )  # fmt: skip
        text = summary["sanity"].get(seed, {}).get("text", {})
        tm = [(int(w) / VISUAL_WINDOW, text[w]) for w in text if int(w) >= VISUAL_WINDOW]
        ax.errorbar(
            [x for x, _ in tm], [c["acc"] for _, c in tm],
            yerr=_yerr([c for _, c in tm]),
            color="gray", ls="--", marker="s", ms=3, capsize=2, lw=1.2, label="text items, same prompt length (stock)",
        )  # fmt: skip
        ax.axvline(lang_multiple, color="gray", lw=0.8, ls=":")
        ax.text(lang_multiple * 1.03, 0.03, "language\nwindow", fontsize=7, color="gray")
        ax.set_xscale("log", base=2)
        ticks = sorted(set(multiples) | {round(tm[-1][0], 1)}) if tm else multiples
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}x" for t in ticks], fontsize=8)
        ax.set_xlabel("prompt length, in multiples of the visual window (129 tokens)", fontsize=8)
        ax.set_title(f"seed {seed}", fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy, 3 tasks (Wilson 95 %)")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        "Tiny LLaVA-OneVision trained on 4-8 frame videos (129 visual tokens)\nand text up to 672 tokens", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_examples(path: str) -> None:
    """One item of each task as the model sees it: a video strip at 8 frames and a 64-word text item."""
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    frames, words = TRAIN_FRAMES, 64
    fig = plt.figure(figsize=(13, 2.0 * len(TASKS) + 0.4))
    grid = fig.add_gridspec(len(TASKS), frames + 7)
    for row, task in enumerate(TASKS):
        item = make_item(task, frames, STREAMS["test"], 0)
        for f in range(frames):
            ax = fig.add_subplot(grid[row, f])
            ax.imshow(item.frames[f], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if f in item.markers:
                for side in ax.spines.values():
                    side.set_color("black")
                    side.set_linewidth(2.5)
            if f == 0:
                ax.set_ylabel(task, fontsize=9)
            if f == frames // 2:
                ax.set_title(f'video: "{item.question}" -> {item.answer}', fontsize=8)
        text = make_text_item(task, words, STREAMS["test"], 0)
        ax = fig.add_subplot(grid[row, frames:])
        ax.axis("off")
        shown = [w.upper() if i in text.markers else w for i, w in enumerate(text.words)]
        body = textwrap.fill(" ".join(shown), 78)
        ax.text(0.0, 0.95, body, fontsize=6.5, family="monospace", va="top", transform=ax.transAxes)
        colours = ", ".join(f"{c} (word {p})" for p, c in zip(text.markers, text.marker_colors))
        ax.set_title(f'text ({words} words; markers: {colours}): "{text.question}" -> {text.answer}', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_preset(summary: dict, folder: str = SHIPPED_DIR) -> str | None:
    """Save the chosen row's config beside the shipped weights (longctx_adapter.json)."""
    from longctx_adapter import AdapterConfig
    from longctx_adapter.saving import ADAPTER_CONFIG_NAME

    if not os.path.isdir(folder):
        return None
    config = summary["rows"][summary["chosen"]["row"]]["config"] or {"pooling": None, "rope": None}
    path = os.path.join(folder, ADAPTER_CONFIG_NAME)
    with open(path, "w") as f:
        json.dump(AdapterConfig.from_dict(config).to_dict(), f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def _dump(obj, path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=DEFAULT_OUT, help="folder with seed<N>/ model folders (default out/tiny_vcwe)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--items", type=int, default=150, help="items per task and cell (default 150)")
    p.add_argument(
        "--validation-items", type=int, default=None, help="items per task and cell on the validation stream (default --items)"
    )
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--multiples", nargs="+", type=int, default=list(MULTIPLES))
    p.add_argument("--text-lengths", nargs="+", type=int, default=list(TEXT_LENGTHS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--raw-dir", default=RAW_DIR, help="per-seed raw results (default out/evidence)")
    p.add_argument("--out-dir", default=DOCS, help="where evidence.json / evidence_results.md / plots go (docs/)")
    p.add_argument("--analyze-only", action="store_true", help="skip measuring: read <raw-dir>/seed<N>.json")
    p.add_argument("--write-preset", action="store_true", help="write the chosen config beside the shipped weights")
    args = p.parse_args(argv)
    if "a" not in args.rows or not {1, 4, 8} <= set(args.multiples):
        p.error("the analysis needs row a and multiples 1, 4 and 8")
    if MAX_WORDS not in args.text_lengths:
        p.error(f"--text-lengths must include {MAX_WORDS} (the longest trained text)")
    torch.set_num_threads(args.threads)
    os.makedirs(args.raw_dir, exist_ok=True)
    raws = {}
    for seed in args.seeds:
        raw_path = os.path.join(args.raw_dir, f"seed{seed}.json")
        if args.analyze_only:
            partial = not os.path.isfile(raw_path)  # an interrupted run: the cells it finished
            with open(raw_path + ".partial" if partial else raw_path) as f:
                raws[seed] = json.load(f)
            if partial:
                n_val = args.validation_items or args.items
                raws[seed].update(partial=True, items=args.items, validation_items=n_val)
                print(f"seed {seed}: interrupted run, using the cells it finished")
            continue
        model, tokenizer = load_model(seed_dir(args.models, seed))
        print(f"--- seed {seed}", flush=True)
        raw = measure_seed(
            model, tokenizer, args.items, args.rows, args.multiples, list(STREAMS),
            args.text_lengths, args.batch, log=lambda s: print(s, flush=True), validation_items=args.validation_items,
            checkpoint=lambda partial, path=raw_path + ".partial": _dump(partial, path),
        )  # fmt: skip
        raw["items"] = args.items
        raw["validation_items"] = args.validation_items or args.items
        with open(os.path.join(seed_dir(args.models, seed), "train_summary.json")) as f:
            raw["train_seconds"] = json.load(f)["train_seconds"]
        with open(raw_path, "w") as f:
            json.dump(raw, f)
        raws[seed] = raw
    items = next(iter(raws.values()))["items"]
    summary = analyze(raws, tuple(args.rows))
    summary["items_per_task"] = items
    summary["validation_items_per_task"] = next(iter(raws.values())).get("validation_items", items)
    summary["train_seconds"] = {str(s): r.get("train_seconds") for s, r in raws.items()}
    table = markdown(summary, items)
    print(table)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "evidence.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(args.out_dir, "evidence_results.md"), "w") as f:
        f.write("# Visual context window in miniature: measured tables\n\n")
        f.write("Written by `make measure-tiny-vcwe`; the discussion is in [evidence.md](evidence.md).\n\n")
        f.write(table + "\n")
    plot(summary, os.path.join(args.out_dir, "evidence_accuracy.png"))
    plot_examples(os.path.join(args.out_dir, "evidence_examples.png"))
    if args.write_preset:
        print(f"wrote {write_preset(summary)}")
    print(f"wrote {args.out_dir}/evidence.json, evidence_results.md, evidence_accuracy.png, evidence_examples.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
