"""GPU check: what CI cannot run, in one command on one CUDA GPU (`make gpu-check`, meant to take under 8 minutes).

    python benchmarks/gpu_check.py              # run everything, write out/gpu_check/report.{md,json}
    python benchmarks/gpu_check.py --dry-run    # print the checks it would run (works without a GPU)

Checks, in order, each in a fresh process with a time limit:

1. the flash-attention tests (`tests/test_devices.py -k flash`: the flash_attention_2 run needs the flash_attn
   package as well as CUDA; without it pytest reports it skipped, and so does this report);
2. the offloaded-KV-cache tests (`tests/test_offloaded_cache.py`: features off equals stock under
   `cache_implementation="offloaded"`, pooled equals the stock model fed hand-pooled features, RoPE-extended and
   chunked runs equal the on-device cache, continuation);
3. peak memory of full-size random-init LLaVA-OneVision-7B (bf16, sdpa) at 64, 256 and 1024 frames for the stock
   model, the family preset (with `run`'s default chunked prefill) and the configuration `plan` picks for 24 GB, each
   row in its own process through `longctx_adapter.profiling.profile` (CUDA peaks are
   `torch.cuda.max_memory_allocated`, reset at each stage boundary), next to the estimator's peak
   (`profiling/estimate.py`). Rows whose estimate exceeds 90 % of the device are not run, and rows stop when the time
   budget is spent; the report says which and why.

Without a CUDA device it stops with one line (exit status 2); `--dry-run` and `--help` need none.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
MODEL = "llava-onevision-7b"
FRAMES = (64, 256, 1024)
MEMORY = "24GB"
BUDGET_S = 450  # the whole check; 8 minutes less the interpreter's start and the report
PYTEST_TIMEOUT_S = 150
ROW_TIMEOUT_S = 150
DEVICE_SHARE = 0.9  # rows estimated above this share of the device's memory are not run
OFFLOADED_TESTS = "tests/test_offloaded_cache.py"


def _pytest_check(name: str, target: str, select: str | None, purpose: str) -> dict:
    argv = [sys.executable, "-m", "pytest", target, "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:randomly"]
    if select:
        argv += ["-k", select]
    return {"name": name, "kind": "pytest", "purpose": purpose, "target": target, "select": select, "argv": argv,
            "timeout_s": PYTEST_TIMEOUT_S}  # fmt: skip


def profile_rows(model: str = MODEL, frames=FRAMES, memory: str = MEMORY) -> list[dict]:
    """One row per (frames, run): stock, the family preset, and `plan`'s choice for ``memory``, each with the
    estimator's peak for exactly what will run (CPU only: the estimator and the planner need no device)."""
    from longctx_adapter.config import AdapterConfig
    from longctx_adapter.profiling.estimate import estimate_memory
    from longctx_adapter.profiling.planner import auto_prefill_chunk, plan
    from longctx_adapter.profiling.sizes import real_config

    config = real_config(model)
    preset = AdapterConfig.preset(config.model_type).to_dict()
    rows = []
    for n in frames:
        chosen, _ = plan(config, n, memory, streamed=False)  # the profiler feeds every frame's pixels at once
        preset_seq = estimate_memory(config, n, preset, device="cuda")["seq_len"]
        runs = [
            ("stock", None, None, None),
            ("preset", preset, auto_prefill_chunk(preset_seq), None),
            (f"plan {memory}: {chosen.step}", chosen.adapter_config, chosen.prefill_chunk_size, chosen.kv_bits),
        ]
        done = {}
        for run, adapter, chunk, bits in runs:
            key = json.dumps([adapter, chunk, bits], sort_keys=True)
            est = estimate_memory(config, n, adapter, prefill_chunk_size=chunk, kv_bits=bits, kv_backend="hqq",
                                  device="cuda")  # fmt: skip
            rows.append({"model": model, "frames": n, "run": run, "adapter_config": adapter,
                         "prefill_chunk_size": chunk, "kv_bits": bits, "estimated_peak_bytes": est["peak_bytes"],
                         "estimated_visual_tokens": est["visual_tokens_after"], "seq_len": est["seq_len"],
                         "same_as": done.get(key)})  # fmt: skip
            done.setdefault(key, run)
    return rows


def checks(model: str = MODEL, frames=FRAMES, memory: str = MEMORY) -> list[dict]:
    """Everything the check runs, in order (what `--dry-run` prints)."""
    out = [
        _pytest_check("flash-attention tests", "tests/test_devices.py", "flash",
                      "flash_attention_2 identity and pooled runs on CUDA; flash_attn never imported"),
        _pytest_check("offloaded KV cache tests", OFFLOADED_TESTS, None,
                      "features off == stock, pooled == hand-pooled stock, RoPE/chunked == on-device cache, "
                      "continuation, all under cache_implementation='offloaded'"),
    ]  # fmt: skip
    for row in profile_rows(model, frames, memory):
        name = f"profile {row['frames']} frames, {row['run']}"
        out.append({"name": name, "kind": "profile", "purpose": "measured vs estimated peak memory", "row": row,
                    "timeout_s": ROW_TIMEOUT_S})  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ running


def _junit_counts(path: Path) -> dict:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "skip_reasons": []}
    if not path.exists():
        return counts
    for case in ET.parse(path).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped")
        if failed:
            counts["failed"] += 1
        elif skipped is not None:
            counts["skipped"] += 1
            counts["skip_reasons"].append(f"{case.get('name')}: {skipped.get('message', '')}")
        else:
            counts["passed"] += 1
    return counts


def _run_pytest(check: dict, out: Path, timeout: float) -> dict:
    slug = check["target"].replace("/", "_").replace(".py", "")
    junit = out / f"{slug}.xml"
    argv = [*check["argv"], f"--junitxml={junit}"]
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        (out / f"{slug}.log").write_text(done.stdout + done.stderr)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: timed out after {timeout:.0f} s"}
    counts = _junit_counts(junit)
    if done.returncode not in (0, 5) or counts["failed"]:
        status = f"failed: {counts['failed']} failed (see {slug}.log)"
    elif counts["passed"] == 0:
        status = "skipped: " + "; ".join(counts["skip_reasons"][:2] or ["no test selected"])
    else:
        status = "passed" + (f" ({counts['skipped']} skipped)" if counts["skipped"] else "")
    return {"status": status, **counts}


def _run_profile(check: dict, out: Path, timeout: float, device_bytes: int, earlier: dict) -> dict:
    """One row in a fresh process; ``earlier`` maps (frames, run) to rows already measured."""
    row = check["row"]
    if row["same_as"] is not None:
        return {"status": f"same run as {row['same_as']}", "measured": earlier.get((row["frames"], row["same_as"]))}
    if row["estimated_peak_bytes"] > DEVICE_SHARE * device_bytes:
        return {"status": f"not run: estimated {row['estimated_peak_bytes'] / GIB:.1f} GiB > {DEVICE_SHARE:.0%} of "
                          f"the device's {device_bytes / GIB:.0f} GiB"}  # fmt: skip
    result = out / f"row_{row['frames']}_{check['name'].split(', ', 1)[1].split(':')[0].replace(' ', '_')}.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--row", json.dumps(row), "--row-out", str(result)]
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: timed out after {timeout:.0f} s"}
    if not result.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": f"failed: exit {done.returncode}: {tail[0][:200]}"}
    measured = json.loads(result.read_text())
    return {"status": measured.get("status", "ok"), "measured": measured}


def _profile_one(row: dict) -> dict:
    """The child's side: one profiler row on CUDA in this (fresh) process."""
    import torch

    from longctx_adapter.profiling.profiler import profile

    kwargs = {}
    if row["kv_bits"] is not None:  # hqq (in the dev extra); the row's estimate is hqq's too
        kwargs.update(kv_bits=row["kv_bits"], kv_backend="hqq")
    torch.cuda.reset_peak_memory_stats()
    (measured,) = profile(row["model"], frames=[row["frames"]], configs=[row["adapter_config"] or "none"],
                          dtype="bf16", device="cuda", prefill_chunk_size=row["prefill_chunk_size"], **kwargs)  # fmt: skip
    measured["reserved_peak_bytes"] = torch.cuda.max_memory_reserved()
    measured["device_name"] = torch.cuda.get_device_name()
    return measured


def _gib(value) -> str:
    return "" if value is None else f"{value / GIB:.2f}"


def report(results: list[dict], seconds: float, environment: dict) -> str:
    lines = [f"# GPU check ({environment.get('device', '?')}, {seconds:.0f} s)", "",
             f"torch {environment.get('torch')}, transformers {environment.get('transformers')}", "",
             "| check | status |", "|---|---|"]  # fmt: skip
    for r in results:
        if r["kind"] == "pytest":
            lines.append(f"| {r['name']} | {r['status']} |")
    lines += ["", "Peak memory, full-size random-init LLaVA-OneVision-7B, bf16, sdpa, one video, `generate` of 2 tokens "
              "(measured: `max_memory_allocated`; reserved: the allocator's peak, whole process):", "",
              "| frames | run | prefill chunk | KV bits | visual tokens | measured peak GiB | estimated peak GiB | "
              "measured / estimated | reserved peak GiB | status |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in results:
        if r["kind"] != "profile":
            continue
        row, measured = r["row"], r.get("measured") or {}
        peak, est = measured.get("peak_bytes"), row["estimated_peak_bytes"]
        ratio = f"{peak / est:.2f}" if peak else ""
        tokens = measured.get("visual_tokens_after") or row["estimated_visual_tokens"]
        lines.append(f"| {row['frames']} | {row['run']} | {row['prefill_chunk_size'] or ''} | {row['kv_bits'] or ''} | "
                     f"{tokens:,} | {_gib(peak)} | {_gib(est)} | {ratio} | "
                     f"{_gib(measured.get('reserved_peak_bytes'))} | {r['status']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def run(args) -> int:
    import torch
    import transformers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device_bytes = torch.cuda.get_device_properties(0).total_memory
    environment = {"device": torch.cuda.get_device_name(0), "device_bytes": device_bytes,
                   "torch": torch.__version__, "transformers": transformers.__version__}  # fmt: skip
    start = time.monotonic()
    results, measured = [], {}
    for check in checks(args.model, tuple(args.frames), args.memory):
        left = args.budget_s - (time.monotonic() - start)
        if left < 20:
            results.append({**check, "status": "not run: time budget spent"})
            continue
        timeout = min(check["timeout_s"], left)
        print(f"[{time.monotonic() - start:5.0f} s] {check['name']} ...", flush=True)
        if check["kind"] == "pytest":
            outcome = _run_pytest(check, out, timeout)
        else:
            outcome = _run_profile(check, out, timeout, device_bytes, measured)
            if outcome.get("measured"):
                measured[(check["row"]["frames"], check["row"]["run"])] = outcome["measured"]
        results.append({**check, **outcome})
        print(f"        {outcome['status']}", flush=True)
    seconds = time.monotonic() - start
    text = report(results, seconds, environment)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps({"environment": environment, "seconds": seconds,
                                                 "results": results}, indent=1, default=str))  # fmt: skip
    print(text)
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}")
    return 1 if any(r["status"].startswith("failed") for r in results) else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the checks as JSON and exit (no GPU needed)")
    p.add_argument("--out", default=str(ROOT / "out" / "gpu_check"), help="folder for the report and logs")
    p.add_argument("--model", default=MODEL, help=f"real-size preset to profile (default {MODEL})")
    p.add_argument("--frames", nargs="+", type=int, default=list(FRAMES))
    p.add_argument("--memory", default=MEMORY, help=f"memory size the planned run must fit (default {MEMORY})")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"time budget in seconds (default {BUDGET_S})")
    p.add_argument("--row", help=argparse.SUPPRESS)  # child mode: one profile row (JSON)
    p.add_argument("--row-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.row:
        measured = _profile_one(json.loads(args.row))
        Path(args.row_out).write_text(json.dumps(measured, default=str))
        return 0
    if args.dry_run:
        print(json.dumps(checks(args.model, tuple(args.frames), args.memory), indent=1, default=str))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check needs a CUDA device and torch.cuda.is_available() is False here "
              "(--dry-run lists the checks without one)", file=sys.stderr)  # fmt: skip
        return 2
    return run(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
