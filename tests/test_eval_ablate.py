"""Ablation runner: every cell in one model load, resumable JSONL (killed runs continue), summary, data parallel."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from longctx_adapter.eval import ablate as ablate_mod
from longctx_adapter.eval.ablate import load_results, run_ablation
from longctx_adapter.eval.configs import expand_grid
from longctx_adapter.eval.datasets import load_dataset
from longctx_adapter.eval.niah import write_niah
from longctx_adapter.eval.option_scoring import score_options
from longctx_adapter.eval.video import video_inputs

from longctx_adapter import get_adapter
from longctx_adapter.cli.main import main
from longctx_adapter.errors import AdapterError
from longctx_adapter.profiling.profiler import kv_cache_bytes
from longctx_adapter.testing.tiny import tiny_model, tiny_processor

MODEL_TYPE = "llava_onevision"
GRID = ["pooling=none,progressive:2,4,2", "rope=none,yarn-visual"]
FRAMES = [2, 4]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def niah_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("niah")
    write_niah(out, 3, haystack_frames=16, size=32, num_options=2, depths=(0.0, 0.5, 1.0), seed=1)
    return out


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_grid_in_one_load_resumes_without_recomputing(tmp_path, niah_dir, monkeypatch):
    model, processor = tiny_model(MODEL_TYPE), tiny_processor(MODEL_TYPE)
    items = load_dataset(niah_dir, limit=2)
    cells = expand_grid(GRID, MODEL_TYPE, visual_window=8)
    total = len(items) * len(FRAMES) * len(cells)
    calls = []
    real = ablate_mod._evaluate_cell
    monkeypatch.setattr(ablate_mod, "_evaluate_cell", lambda *a, **k: calls.append(a[3].id) or real(*a, **k))

    run_ablation(model, processor, items, FRAMES, cells, tmp_path, progress=False, stop_after=5)  # "killed"
    results = tmp_path / "results.jsonl"
    first = _lines(results)
    assert len(first) == 5 and len(calls) == 5
    with open(results, "a") as fh:
        fh.write('{"item": "niah-0001", "frames": 4, "conf')  # the line being written when the kill came
    records = run_ablation(model, processor, items, FRAMES, cells, tmp_path, progress=False)
    final = _lines(results)
    assert len(calls) == total  # the 5 done units were not recomputed
    assert len(final) == len(records) == total
    keys = {(r["item"], r["frames"], r["config"]) for r in map(json.loads, final)}
    assert len(keys) == total
    assert set(first) <= set(final)  # nothing lost: earlier lines kept verbatim
    assert get_adapter(model) is None  # every config was removed again

    # a third run has nothing to do
    run_ablation(model, processor, items, FRAMES, cells, tmp_path, progress=False, summary=False)
    assert len(calls) == total and _lines(results) == final

    # a record equals scoring that cell by hand
    rec = next(r for r in records if r["config"] == cells[3].label and r["frames"] == 4)
    item = next(it for it in items if it.id == rec["item"])
    from longctx_adapter import apply_adapter

    inputs = video_inputs(processor, item.load_clip(4), item.prompt(), model_type=MODEL_TYPE)
    with apply_adapter(model, cells[3].config):
        scored = score_options(model, processor.tokenizer, inputs, item.options)
    assert rec["pred"] == scored["pred"] and rec["scores"] == pytest.approx(scored["scores"], abs=1e-4)
    assert rec["correct"] == (scored["pred"] == item.answer)
    assert rec["tokens_before"] == 4 * 16 + 1 and rec["tokens_after"] < rec["tokens_before"]
    assert rec["rope_factor"] is not None and rec["peak_mem_bytes"] > 0 and rec["time_s"] > 0
    with apply_adapter(model, cells[3].config), torch.inference_mode():  # the KV-cache column: the real cache's size
        cache = model(**inputs, use_cache=True).past_key_values
    assert rec["kv_cache_bytes"] == kv_cache_bytes(cache) > 0

    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("\n| ") == len(FRAMES) * len(cells)
    assert (tmp_path / "accuracy.png").exists()
    assert len(list(tmp_path.glob("niah_*.png"))) == len(cells)


def test_cli_ablate_loads_the_model_once(tmp_path, niah_dir, checkpoint, monkeypatch, capsys):
    from transformers import AutoModelForImageTextToText

    loads = []
    original = AutoModelForImageTextToText.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", classmethod(counting))
    argv = ["ablate", "--model", str(checkpoint), "--dataset", str(niah_dir), "--frames", "2", "--grid", GRID[0],
            "--grid", "rope=none,yarn-all", "--visual-window", "8", "--out", str(tmp_path), "--no-progress",
            "--mode", "both", "--max-new-tokens", "2", "--limit", "2"]
    assert main(argv) == 0
    assert len(loads) == 1
    out = capsys.readouterr().out
    assert "| 2 | `pooling=progressive:2,4,2 rope=yarn-all` | 2 |" in out
    records = list(load_results(tmp_path).values())
    assert len(records) == 2 * 1 * 4 and all("gen_pred" in r and "pred" in r for r in records)


def test_bad_grid_is_refused_before_loading(tmp_path, niah_dir, checkpoint, capsys):
    argv = ["ablate", "--model", str(checkpoint), "--dataset", str(niah_dir), "--grid", "size=1", "--out",
            str(tmp_path)]
    assert main(argv) == 2
    assert "AXIS=V1" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


def test_cell_the_model_cannot_take_is_refused_before_anything_runs(tmp_path, niah_dir, checkpoint, monkeypatch,
                                                                      capsys):
    """Stride 8 on the tiny model's 7x7 frame grid: one line naming the cell, before the model loads, no results."""
    from transformers import AutoModelForImageTextToText

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", classmethod(never))
    argv = ["ablate", "--model", str(checkpoint), "--dataset", str(niah_dir), "--grid", "pooling=none,progressive:2,8,4",
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "grid cell 'pooling=progressive:2,8,4'" in err and "nothing was run" in err
    assert not (tmp_path / "out").exists()
    # a frame count the stages cannot take (temporal group of 4 on 2 frames) is refused too, naming the value
    argv[argv.index("pooling=none,progressive:2,8,4")] = 'pooling={"type":"temporal","kernel":4}'
    assert main([*argv, "--frames", "2"]) == 2
    assert "grid cell" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_resume_recomputes_units_that_ended_in_an_error(tmp_path, niah_dir, monkeypatch):
    model, processor = tiny_model(MODEL_TYPE), tiny_processor(MODEL_TYPE)
    items = load_dataset(niah_dir, limit=1)
    cells = expand_grid(GRID[:1], MODEL_TYPE)
    real = ablate_mod._evaluate_cell

    def failing(*args, **kwargs):
        raise AdapterError("a transient refusal")

    monkeypatch.setattr(ablate_mod, "_evaluate_cell", failing)
    first = run_ablation(model, processor, items, [2], cells, tmp_path, progress=False, summary=False)
    assert len(first) == 2 and all(r["error"] == "AdapterError: a transient refusal" for r in first)
    monkeypatch.setattr(ablate_mod, "_evaluate_cell", real)
    again = run_ablation(model, processor, items, [2], cells, tmp_path, progress=False, summary=False)
    assert len(again) == 2 and not any(r.get("error") for r in again) and all("pred" in r for r in again)
    merged = [json.loads(line) for line in _lines(tmp_path / "results.jsonl")]
    assert len(merged) == 2 and not any(r.get("error") for r in merged)  # one line per unit: the success


def test_memory_panel_plots_the_kv_cache_it_names(tmp_path, monkeypatch):
    import matplotlib.figure

    rows = [{"frames": f, "config": c, "accuracy": 0.5, "gen_accuracy": None, "kv_cache_bytes": kv,
             "peak_mem_bytes": 10**9 - f} for f, c, kv in [(2, "a", 2**20), (4, "a", 2**21), (2, "b", 2**19),
                                                              (4, "b", 2**20)]]
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    ablate_mod.plot_summary(rows, tmp_path / "x.png")
    right = figures[0].axes[1]
    assert right.get_ylabel() == ablate_mod.KV_AXIS_LABEL == "KV cache after prefill (MiB, computed from tokens)"
    assert [list(line.get_ydata()) for line in right.get_lines()] == [[1.0, 2.0], [0.5, 1.0]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "longctx_adapter.cli.main", *args]


@pytest.mark.slow
def test_two_processes_killed_then_resumed(tmp_path, niah_dir, checkpoint):
    """`accelerate launch` with 2 CPU processes (torchrun-style launcher, gloo): the items are split between the
    processes, each writes its own results file. The launch is SIGKILLed mid-run; the same command in one process
    then computes only what is missing, merges every file, and the answers equal scoring by hand."""
    out = tmp_path / "dp"
    common = ["--model", str(checkpoint), "--dataset", str(niah_dir), "--frames", "2,3,4", "--grid", GRID[0],
              "--grid", GRID[1], "--visual-window", "8", "--no-progress", "--device", "cpu", "--out", str(out)]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(_free_port()), "-m", "longctx_adapter.cli.main", "ablate", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(launch, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    rank_files = [out / "results.rank0.jsonl", out / "results.rank1.jsonl"]
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if all(f.exists() and len(_lines(f)) >= 2 for f in rank_files):
            break
        time.sleep(0.2)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert killed or proc.returncode == 0, err[-3000:]
    before = [line for f in [out / "results.jsonl", *rank_files] if f.exists() for line in _lines(f) if
              line.endswith("}")]
    ranks = {json.loads(line)["rank"] for line in before}
    assert ranks == {0, 1}  # both processes worked, on different items
    by_rank = {r: {json.loads(x)["item"] for x in before if json.loads(x)["rank"] == r} for r in ranks}
    assert not by_rank[0] & by_rank[1]

    assert main(["ablate", *common]) == 0  # resume in one process
    after = _lines(out / "results.jsonl")
    assert not list(out.glob("results.rank*.jsonl"))  # merged
    records = [json.loads(x) for x in after]
    keys = [(r["item"], r["frames"], r["config"]) for r in records]
    assert len(keys) == len(set(keys)) == 3 * 3 * 4
    assert {x for x in before if json.loads(x)["frames"]} <= set(after)  # nothing lost or recomputed

    from longctx_adapter import apply_adapter

    model, processor = tiny_model(MODEL_TYPE), tiny_processor(MODEL_TYPE)
    cells = {c.label: c for c in expand_grid(GRID, MODEL_TYPE, visual_window=8)}
    items = {it.id: it for it in load_dataset(niah_dir)}
    for rank in (0, 1):  # a record of each process equals scoring that cell by hand
        rec = next(json.loads(x) for x in before if json.loads(x)["rank"] == rank)
        item, cell = items[rec["item"]], cells[rec["config"]]
        inputs = video_inputs(processor, item.load_clip(rec["frames"]), item.prompt(), model_type=MODEL_TYPE)
        if cell.config is None:
            scored = score_options(model, processor.tokenizer, inputs, item.options)
        else:
            with apply_adapter(model, cell.config):
                scored = score_options(model, processor.tokenizer, inputs, item.options)
        assert rec["pred"] == scored["pred"] and rec["scores"] == pytest.approx(scored["scores"], abs=1e-4)
