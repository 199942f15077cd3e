"""The GPU check script (`make gpu-check`, benchmarks/gpu_check.py) on a machine without a GPU: its plan of checks is
well-formed and points at tests that exist, it stops with one line without CUDA, and the offloaded-cache tests it
runs are skipped here rather than failing."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pathlib

import pytest
import torch

from longctx_adapter.profiling.planner import plan
from longctx_adapter.profiling.sizes import real_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def planned(gpu_check):
    return gpu_check.checks()


def test_the_plan_runs_the_flash_and_offloaded_tests_then_every_profile_row(gpu_check, planned):
    names = [c["name"] for c in planned]
    assert len(names) == len(set(names))
    tests = [c for c in planned if c["kind"] == "pytest"]
    assert [c["target"] for c in tests] == ["tests/test_devices.py", gpu_check.OFFLOADED_TESTS]
    for check in tests:
        assert (ROOT / check["target"]).is_file()
        source = (ROOT / check["target"]).read_text()
        assert check["select"] is None or f"def test_{check['select']}" in source or f"_{check['select']}_" in source
    rows = [c["row"] for c in planned if c["kind"] == "profile"]
    assert {(r["frames"], r["run"].split(":")[0]) for r in rows} == {
        (n, run) for n in gpu_check.FRAMES for run in ("stock", "preset", f"plan {gpu_check.MEMORY}")
    }
    assert sum(c["timeout_s"] for c in planned) > gpu_check.BUDGET_S  # the budget, not the sum, bounds the run
    assert gpu_check.BUDGET_S < 8 * 60


def test_profile_rows_carry_the_planners_choice_and_the_estimate(gpu_check, planned):
    config = real_config(gpu_check.MODEL)
    for check in planned:
        if check["kind"] != "profile":
            continue
        row = check["row"]
        json.dumps(row)  # it travels to the child process as JSON
        weights = 7e9 * 2  # a 7B model in bf16: every peak holds the weights
        assert row["estimated_peak_bytes"] > weights and row["estimated_visual_tokens"] > 0
        if row["run"] == "stock":
            assert row["adapter_config"] is None and row["prefill_chunk_size"] is None and row["same_as"] is None
        if row["run"].startswith("plan"):
            chosen, _ = plan(config, row["frames"], gpu_check.MEMORY, streamed=False)  # what the profiler runs
            assert row["run"].endswith(chosen.step)
            assert (row["adapter_config"], row["prefill_chunk_size"], row["kv_bits"]) == (
                chosen.adapter_config, chosen.prefill_chunk_size, chosen.kv_bits)  # fmt: skip
            assert row["estimated_peak_bytes"] == chosen.peak_bytes
            assert row["estimated_peak_bytes"] <= 0.9 * 24 * 2**30
            assert (row["same_as"] == "stock") == (chosen.adapter_config is None and chosen.prefill_chunk_size is None)


def test_without_cuda_it_stops_with_one_line(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA" in err[0]
    with pytest.raises(SystemExit) as help_exit:
        gpu_check.main(["--help"])
    assert help_exit.value.code == 0


def test_the_offloaded_cache_tests_exist_and_skip_without_cuda():
    module = importlib.import_module("test_offloaded_cache")
    names = {n for n, f in inspect.getmembers(module, inspect.isfunction) if n.startswith("test_")}
    assert {"test_features_off_equals_stock_under_the_offloaded_cache",
            "test_pooled_equals_stock_fed_hand_pooled_features_under_the_offloaded_cache",
            "test_rope_extended_and_chunked_runs_equal_the_dynamic_cache",
            "test_continuation_from_an_offloaded_cache"} <= names  # fmt: skip
    mark = module.pytestmark.mark
    assert mark.name == "skipif" and mark.args[0] is (not torch.cuda.is_available())
    assert "CUDA" in mark.kwargs["reason"]


def test_the_report_table_has_a_line_per_row(gpu_check, planned):
    results = []
    for check in planned:
        outcome = {"status": "passed"} if check["kind"] == "pytest" else {"status": "ok"}
        if check["kind"] == "profile":
            outcome["measured"] = {"peak_bytes": check["row"]["estimated_peak_bytes"] // 2, "reserved_peak_bytes": 0}
        results.append({**check, **outcome})
    text = gpu_check.report(results, 1.0, {"device": "test"})
    table = [line for line in text.splitlines() if line.startswith("| ") and "GiB" not in line and "check" not in line]
    assert len(table) == len(planned)
    assert all("| 0.50 |" in line for line in table if "| ok |" in line)
