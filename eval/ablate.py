"""Ablation runner: every (item, frame count, adapter config) of a grid in one model load, resumable.

    longctx-adapter ablate --model ./llava-onevision-7b --dataset ./vniah --frames 32,64,128 \
        --grid pooling=none,progressive:2,8,4 --grid rope=none,yarn-all,yarn-visual --out runs/ov7b

Loop: for each item, for each frame count, the video is decoded and the processor run once; then every grid cell
is evaluated on those inputs with its config applied (``apply_adapter`` ... ``handle.remove()``; the cell with
pooling and rope both off runs the stock model without an adapter).

Results: one JSON line per (item, frames, config) in ``<out>/results.jsonl``, appended and flushed as soon as it
is computed; a rerun reads every line that is there and computes only what is missing or ended in an error, so a
killed run loses at most the unit in flight (a partial last line is cut off on restart). The key of a line is
``(item, frames, config label)``; the config's JSON is stored too. Per line: the scored prediction and whether it
is right (``mode``: ``loglik`` teacher-forced option likelihood, ``generate`` greedy generation + answer matching, or
``both``), visual tokens before/after pooling, RoPE factor, peak memory and time of that cell.

Data parallel: started with ``accelerate launch --num_processes N``, every process loads the model once (on its
own device), takes its share of the pending items (``PartialState.split_between_processes``), writes
``<out>/results.rank<R>.jsonl``; at the end the main process merges every file into ``results.jsonl`` (one line per
key) and writes the summary. Resuming works with any number of processes.

Summary: ``summary.md`` (Markdown table: accuracy, n, errors, visual tokens, RoPE factor, KV-cache size, peak memory
and mean time per (frames, config)), ``summary.json``, ``accuracy.png`` (accuracy and the prompt's KV-cache size,
computed from token counts, against frames, one line per config), and for V-NIAH items ``niah_<config>.png`` heatmaps (depth x frames).
"""

from __future__ import annotations

import json
import os
import re
import traceback
from collections.abc import Sequence
from pathlib import Path

from longctx_adapter.eval.configs import GridCell

from longctx_adapter.errors import AdapterError

__all__ = [
    "MODES",
    "load_results",
    "merge_results",
    "result_key",
    "run_ablation",
    "summarize",
    "write_summary",
]

MODES = ("loglik", "generate", "both")
KV_AXIS_LABEL = "KV cache after prefill (MiB, computed from tokens)"
RESULTS = "results.jsonl"


def result_key(item_id, frames, label) -> tuple[str, int, str]:
    return (str(item_id), int(frames), str(label))


# ----------------------------------------------------------------------------------------------- results files


def _repair(path: Path) -> None:
    """Cut a partial last line (a run killed while writing) so appends start on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    if not path.is_file():
        return records
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: recomputed
            if isinstance(rec, dict) and "item" in rec and "frames" in rec and "config" in rec:
                records.append(rec)
    return records


def _result_files(out_dir: Path) -> list[Path]:
    return [out_dir / RESULTS, *sorted(out_dir.glob("results.rank*.jsonl"))]


def load_results(out_dir) -> dict[tuple, dict]:
    """Every result line under ``out_dir`` (merged file and per-process files), one per key: the first success,
    else the first error."""
    out: dict[tuple, dict] = {}
    for path in _result_files(Path(out_dir)):
        for rec in _read_jsonl(path):
            key = result_key(rec["item"], rec["frames"], rec["config"])
            if key not in out or (out[key].get("error") and not rec.get("error")):  # a later success wins
                out[key] = rec
    return out


def merge_results(out_dir) -> list[dict]:
    """Write the union of all result files to ``results.jsonl`` (atomically) and drop the per-process files."""
    out_dir = Path(out_dir)
    merged = load_results(out_dir)
    records = sorted(merged.values(), key=lambda r: (str(r["item"]), int(r["frames"]), str(r["config"])))
    tmp = out_dir / (RESULTS + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out_dir / RESULTS)
    for path in out_dir.glob("results.rank*.jsonl"):
        path.unlink()
    return records


class _Writer:
    def __init__(self, path: Path):
        _repair(path)
        self.path = path
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


# ----------------------------------------------------------------------------------------------- the run


def _to_model(inputs, model):
    import torch

    moved = inputs.to(model.device) if hasattr(inputs, "to") else {k: v.to(model.device) for k, v in inputs.items()}
    for key in ("pixel_values", "pixel_values_videos"):
        value = moved.get(key)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != model.dtype:
            moved[key] = value.to(model.dtype)
    return moved


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one prompt token adds to the decoder's cache: 2 x layers x KV heads x head dim x
    element size. The ablation's memory column: computed from the token count (deterministic per configuration,
    unlike a process's peak RSS, which creeps with run order on CPU)."""
    text = model.config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize


def _evaluate_cell(model, tokenizer, inputs, item, cell: GridCell, mode, target, reduce, max_new_tokens, probe):
    from longctx_adapter.eval.option_scoring import generate_answer, match_option, score_options
    from longctx_adapter.eval.runner import placeholder_count

    from longctx_adapter import apply_adapter
    from longctx_adapter.profiling.memory import measure

    record: dict = {}
    handle = apply_adapter(model, cell.config) if cell.config is not None else None
    try:
        with measure(probe) as measured:
            if mode in ("loglik", "both"):
                scored = score_options(model, tokenizer, inputs, item.options, target=target, reduce=reduce)
                record.update(pred=scored["pred"], scores=[round(s, 5) for s in scored["scores"]])
            if mode in ("generate", "both"):
                text = generate_answer(model, tokenizer, inputs, max_new_tokens=max_new_tokens)
                record.update(generated=text, gen_pred=match_option(text, item.options))
        stats = list(handle.last_stats) if handle is not None else []
    finally:
        if handle is not None:
            handle.remove()
    before = placeholder_count(model, inputs["input_ids"])
    after = sum(int(s["tokens_after"]) for s in stats) if stats else before
    factors = [s["rope_factor"] for s in stats if s.get("rope_factor") is not None]
    record.update(
        tokens_before=before,
        tokens_after=after,
        rope_factor=max(factors) if factors else None,
        kv_cache_bytes=kv_bytes_per_token(model) * (int(inputs["input_ids"].shape[1]) - before + after),
        **measured,
    )
    if item.answer is not None:
        if "pred" in record:
            record["correct"] = record["pred"] == item.answer
        if "gen_pred" in record:
            record["gen_correct"] = record["gen_pred"] == item.answer
    return record


def run_ablation(
    model,
    processor,
    items: Sequence,
    frames: Sequence[int],
    cells: Sequence[GridCell],
    out_dir,
    *,
    mode: str = "loglik",
    target: str = "letter",
    reduce: str = "sum",
    max_new_tokens: int = 16,
    progress: bool = True,
    summary: bool = True,
    fps: float | None = None,
    backend: str = "pyav",
    stop_after: int | None = None,
) -> list[dict]:
    """Evaluate every (item, frames, cell) not yet in ``out_dir``'s results; returns the merged results (on the main
    process; other processes return their own). ``stop_after`` (tests) stops after that many new units, as if
    the run were killed. ``fps`` samples at that rate with the frame count as the cap."""
    from accelerate import PartialState
    from longctx_adapter.eval.video import VideoDecodeError, video_inputs
    from tqdm.auto import tqdm

    from longctx_adapter.profiling.memory import memory_probe

    if mode not in MODES:
        raise AdapterError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if not cells:
        raise AdapterError("the grid has no cells")
    out_dir = Path(out_dir)
    state = PartialState()
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "run.json").write_text(json.dumps({
            "frames": list(frames), "cells": {c.label: c.config_dict for c in cells}, "mode": mode, "target": target,
            "reduce": reduce, "items": len(items), "model_type": model.config.model_type}, indent=2) + "\n")
    state.wait_for_everyone()
    done = {key: rec for key, rec in load_results(out_dir).items() if not rec.get("error")}  # errors: recomputed
    labels = [c.label for c in cells]
    pending = [it for it in items if any(result_key(it.id, n, lab) not in done for n in frames for lab in labels)]
    state.wait_for_everyone()  # every process has read the same results before anyone writes

    tokenizer = getattr(processor, "tokenizer", processor)
    model_type = model.config.model_type
    probe = memory_probe(model.device)
    path = out_dir / (RESULTS if state.num_processes == 1 else f"results.rank{state.process_index}.jsonl")
    writer = _Writer(path)
    new = 0
    try:
        with state.split_between_processes(pending) as mine:
            units = sum(1 for it in mine for n in frames for lab in labels if result_key(it.id, n, lab) not in done)
            bar = tqdm(total=units, desc=f"ablate [{state.process_index}]", disable=not progress or not
                       state.is_local_main_process, dynamic_ncols=True)
            for item in mine:
                for n in frames:
                    todo = [c for c in cells if result_key(item.id, n, c.label) not in done]
                    if not todo:
                        continue
                    base = {"item": item.id, "frames": int(n), "answer": item.answer}
                    if "niah" in item.meta:
                        base["depth"] = item.meta["niah"]["depth"]
                    for key in ("task", "duration"):
                        if key in item.meta:
                            base[key] = item.meta[key]
                    try:
                        clip = item.load_clip(None if fps else n, fps=fps, max_frames=n if fps else None,
                                              backend=backend)
                        inputs = _to_model(video_inputs(processor, clip, item.prompt(), model_type=model_type), model)
                        error = None
                    except VideoDecodeError as exc:
                        error = f"{type(exc).__name__}: {exc}"
                    for cell in todo:
                        record = {**base, "config": cell.label, "config_json": cell.config_dict,
                                  "rank": state.process_index}
                        if error is not None:
                            record.update(error=error, correct=False if mode != "generate" else None)
                        else:
                            try:
                                record.update(_evaluate_cell(model, tokenizer, inputs, item, cell, mode, target,
                                                             reduce, max_new_tokens, probe))
                            except AdapterError as exc:  # a config this input cannot take (e.g. stride > grid)
                                record.update(error=f"AdapterError: {exc}")
                        record["frames_sampled"] = None if error else len(clip)
                        writer.write(record)
                        done[result_key(item.id, n, cell.label)] = record
                        bar.update(1)
                        new += 1
                        if stop_after is not None and new >= stop_after:
                            raise _Stop
            bar.close()
    except _Stop:
        writer.close()
        return list(done.values())
    except Exception:
        writer.close()
        traceback.print_exc()
        raise
    writer.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return [r for r in load_results(out_dir).values() if r.get("rank") == state.process_index]
    records = merge_results(out_dir)
    if summary:
        write_summary(records, out_dir, labels=labels)
    return records


class _Stop(Exception):
    pass


# ----------------------------------------------------------------------------------------------- summary


def summarize(records, labels: Sequence[str] | None = None) -> list[dict]:
    """One row per (frames, config): n, errors, accuracy (loglik and/or generation), tokens, RoPE factor, peak
    memory (max) and mean time per item."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for rec in records:
        groups.setdefault((int(rec["frames"]), str(rec["config"])), []).append(rec)
    order = {lab: i for i, lab in enumerate(labels or [])}
    rows = []
    for (frames, label), recs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 1e9),
                                                                          kv[0][1])):
        def mean(key, recs=recs):
            vals = [float(r[key]) for r in recs if r.get(key) is not None]
            return sum(vals) / len(vals) if vals else None

        scored = [r for r in recs if r.get("correct") is not None]
        gen = [r for r in recs if r.get("gen_correct") is not None]
        mems = [int(r["peak_mem_bytes"]) for r in recs if r.get("peak_mem_bytes") is not None]
        rows.append({
            "frames": frames,
            "config": label,
            "n": len(recs),
            "errors": sum(1 for r in recs if r.get("error")),
            "accuracy": sum(bool(r["correct"]) for r in scored) / len(scored) if scored else None,
            "gen_accuracy": sum(bool(r["gen_correct"]) for r in gen) / len(gen) if gen else None,
            "tokens_before": mean("tokens_before"),
            "tokens_after": mean("tokens_after"),
            "rope_factor": mean("rope_factor"),
            "kv_cache_bytes": mean("kv_cache_bytes"),
            "peak_mem_bytes": max(mems) if mems else None,
            "mem_method": next((r["mem_method"] for r in recs if r.get("mem_method")), None),
            "time_s": mean("time_s"),
        })
    return rows


def _cell(value, fmt) -> str:
    return "-" if value is None else fmt.format(value)


def to_markdown(rows) -> str:
    has_gen = any(r["gen_accuracy"] is not None for r in rows)
    has_acc = any(r["accuracy"] is not None for r in rows)
    head = ["frames", "config", "n"]
    head += ["accuracy"] if has_acc else []
    head += ["gen. accuracy"] if has_gen else []
    head += ["errors", "visual tokens", "RoPE factor", "KV cache (MiB)", "peak memory (MiB)", "time / item (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["frames"]), f"`{r['config']}`", str(r["n"])]
        cells += [_cell(r["accuracy"], "{:.3f}")] if has_acc else []
        cells += [_cell(r["gen_accuracy"], "{:.3f}")] if has_gen else []
        tokens = "-" if r["tokens_before"] is None else f"{r['tokens_before']:.0f} -> {r['tokens_after']:.0f}"
        mem = None if r["peak_mem_bytes"] is None else r["peak_mem_bytes"] / 2**20
        kv = None if r.get("kv_cache_bytes") is None else r["kv_cache_bytes"] / 2**20
        cells += [str(r["errors"]), tokens, _cell(r["rope_factor"], "{:.2f}"), _cell(kv, "{:.3f}"), _cell(mem, "{:.1f}"),
                  _cell(r["time_s"], "{:.3f}")]
        lines.append("| " + " | ".join(cells) + " |")
    method = next((r["mem_method"] for r in rows if r.get("mem_method")), None)
    if method:
        lines.append("")
        lines.append(f"KV cache: keys and values of the prompt after prefill, computed from its token count (mean "
                     f"per item); peak memory: {method} (max over the cell's items); time: mean per item of the "
                     "cell's scoring.")
    return "\n".join(lines) + "\n"


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_") or "cell"


def write_summary(records, out_dir, labels: Sequence[str] | None = None) -> dict:
    """summary.md, summary.json, accuracy.png and (V-NIAH) niah_<config>.png; returns the paths."""
    out_dir = Path(out_dir)
    rows = summarize(records, labels)
    paths = {"markdown": out_dir / "summary.md", "json": out_dir / "summary.json"}
    paths["markdown"].write_text(to_markdown(rows))
    paths["json"].write_text(json.dumps(rows, indent=2) + "\n")
    if rows:
        paths["plot"] = plot_summary(rows, out_dir / "accuracy.png")
    niah = [r for r in records if r.get("depth") is not None]
    if niah:
        from longctx_adapter.eval.niah import plot_heatmap

        value = "correct" if any(r.get("correct") is not None for r in niah) else "gen_correct"
        for label in dict.fromkeys(r["config"] for r in niah):
            subset = [r for r in niah if r["config"] == label]
            paths[f"niah:{label}"] = plot_heatmap(subset, out_dir / f"niah_{_slug(label)}.png",
                                                  title=f"V-NIAH: {label}", value=value)
    return paths


def plot_summary(rows, path) -> Path:
    """Accuracy (left) and the prompt's KV-cache size (right, computed from token counts) against frames, one line
    per config. Not peak memory: on CPU a process's peak RSS creeps with run order and barely moves with a tiny
    model's cache, so it would not mean what its label says."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    key = "accuracy" if any(r["accuracy"] is not None for r in rows) else "gen_accuracy"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label in configs:
        sub = sorted((r for r in rows if r["config"] == label), key=lambda r: r["frames"])
        xs = [r["frames"] for r in sub]
        left.plot(xs, [r[key] if r[key] is not None else float("nan") for r in sub], marker="o", label=label)
        right.plot(xs, [r["kv_cache_bytes"] / 2**20 if r.get("kv_cache_bytes") else float("nan") for r in sub],
                   marker="o", label=label)
    for ax, name in ((left, "accuracy"), (right, KV_AXIS_LABEL)):
        ax.set_xlabel("frames")
        ax.set_ylabel(name)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    left.set_ylim(-0.02, 1.02)
    left.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
