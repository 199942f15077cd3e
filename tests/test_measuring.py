"""The measuring tools the profiler, the eval commands and the demos share: dtype names, the memory probe (both the
Linux VmHWM path and the sampled path other platforms get), and the fresh-process runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from longctx_adapter.demo.common import print_table, run_each
from longctx_adapter.errors import AdapterError
from longctx_adapter.profiling import memory
from longctx_adapter.profiling.dtypes import DTYPE_ALIASES, dtype_bytes, dtype_name, torch_dtype
from longctx_adapter.profiling.fresh import FreshProcessError, run_fresh

MIB = 1 << 20

# ----------------------------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("alias", sorted(DTYPE_ALIASES))
def test_every_alias_names_its_torch_dtype(alias):
    dtype = torch_dtype(alias)
    assert isinstance(dtype, torch.dtype) and str(dtype) == f"torch.{DTYPE_ALIASES[alias]}"
    assert dtype_bytes(alias) == torch.empty(0, dtype=dtype).element_size()
    assert torch_dtype(alias.upper()) is dtype and torch_dtype(f" torch.{alias} ") is dtype


def test_dtype_objects_and_the_usual_spellings():
    assert dtype_name(torch.bfloat16) == "bfloat16" and torch_dtype(torch.float16) is torch.float16
    assert [dtype_name(n) for n in ("bf16", "fp16", "half", "fp32", "float")] == [
        "bfloat16", "float16", "float16", "float32", "float32"]


@pytest.mark.parametrize("bad", ["int8", "bf17", "", "auto", None])
def test_unknown_dtype_is_refused_listing_the_choices(bad):
    with pytest.raises(AdapterError, match=r"unknown dtype .*bf16/bfloat16, fp16/float16/half, fp32/float32/float"):
        dtype_name(bad)


def test_profiler_estimator_and_run_share_the_table():
    from longctx_adapter.eval.runner import resolve_dtype

    from longctx_adapter.profiling.estimate import estimate_memory
    from longctx_adapter.profiling.profiler import profile
    from longctx_adapter.profiling.sizes import real_config

    config = real_config("llava-onevision-7b")
    half, full = (estimate_memory(config, 8, None, dtype=d)["weights_bytes"] for d in ("half", "float32"))
    assert half < full < 2 * half + (1 << 20)  # float32 buffers are counted at 4 bytes either way
    for call in (lambda: estimate_memory(config, 8, None, dtype="int8"),
                 lambda: profile("llava-onevision-7b", frames=[8], dtype="int8", measure=False),
                 lambda: resolve_dtype("int8", torch.device("cpu"))):
        with pytest.raises(AdapterError, match="unknown dtype 'int8'"):
            call()
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == "auto"
    assert resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16


# ----------------------------------------------------------------------------------------------- memory


def _touch(nbytes: int, hold_s: float = 0.0) -> None:
    block = np.ones(nbytes, dtype=np.uint8)  # written, so every page is resident
    time.sleep(hold_s)
    del block


def _check_probe(probe, hold_s: float) -> None:
    probe.reset()
    before = probe.current()
    _touch(96 * MIB, hold_s)
    high = probe.peak()
    assert high - before >= 90 * MIB
    probe.reset()
    assert probe.peak() < high - 64 * MIB  # a new window forgets the old peak
    probe.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux only")
def test_rss_probe_on_linux_reads_the_kernel_high_water_mark():
    probe = memory.RssProbe()
    if probe.method != "VmHWM+clear_refs":
        pytest.skip("clear_refs is refused here")
    _check_probe(probe, hold_s=0.0)  # the kernel's mark catches even a peak that lasts no time at all


def test_rss_probe_samples_where_there_is_no_proc(monkeypatch, tmp_path):
    """macOS / Windows / a container refusing clear_refs: a thread samples the RSS (psutil) while a window is open."""
    monkeypatch.setattr(memory, "_STATUS", str(tmp_path / "no_status"))
    monkeypatch.setattr(memory, "_CLEAR_REFS", str(tmp_path / "no_dir" / "clear_refs"))
    probe = memory.RssProbe()
    assert probe.method == "RSS sampled every 0.5 ms"
    _check_probe(probe, hold_s=0.05)
    assert not [t for t in threading.enumerate() if t.name == "rss-probe"]  # close() stopped the sampler


def _refused():
    raise OSError("refused")


def test_measure_reports_peak_time_and_method(monkeypatch):
    monkeypatch.setattr(memory, "_clear_refs", _refused)
    probe = memory.memory_probe("cpu")
    with memory.measure(probe) as box:
        before = memory.rss_bytes()
        _touch(64 * MIB, 0.05)
    assert box["mem_method"] == "RSS sampled every 0.5 ms" and box["time_s"] >= 0.05
    assert box["peak_mem_bytes"] - before >= 60 * MIB
    assert not [t for t in threading.enumerate() if t.name == "rss-probe"]


@pytest.mark.parametrize(("platform", "scale"), [("linux", 1024), ("darwin", 1)])
def test_lifetime_peak_in_the_platform_units(monkeypatch, platform, scale):
    import resource

    class Usage:
        ru_maxrss = 123_456

    monkeypatch.setattr(resource, "getrusage", lambda who: Usage())
    monkeypatch.setattr(memory.sys, "platform", platform)
    assert memory.lifetime_peak_rss_bytes() == 123_456 * scale


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_probe_counts_tensor_bytes():
    probe = memory.memory_probe("cuda")
    assert isinstance(probe, memory.CudaProbe)
    with memory.measure(probe) as box:
        start = probe.current()
        block = torch.empty(64 * MIB, dtype=torch.uint8, device="cuda")
        del block
    assert box["peak_mem_bytes"] - start >= 64 * MIB


# ----------------------------------------------------------------------------------------------- fresh processes


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def _noisy(text):
    print(text)
    print(text, file=sys.stderr)
    return text.upper()


def test_run_fresh_runs_elsewhere_and_returns_the_result():
    assert run_fresh(os.getpid) != os.getpid()
    assert run_fresh(os.getenv, ("LONGCTX_FRESH_TEST",), env={"LONGCTX_FRESH_TEST": "yes"}) == "yes"
    assert run_fresh(int, ("ff",), {"base": 16}) == 255
    assert run_fresh(_noisy, ("quiet",), quiet=True) == "QUIET"  # printing does not disturb the result


def test_run_fresh_reraises_what_the_function_raised():
    with pytest.raises(ValueError, match="invalid literal"):
        run_fresh(int, ("not a number",))
    with pytest.raises(AdapterError, match="unknown dtype"):  # the library's own error keeps its type
        run_fresh(dtype_name, ("int8",))


def test_run_fresh_reports_a_killed_child():
    with pytest.raises(FreshProcessError) as info:
        run_fresh(_kill_self, quiet=True)
    assert info.value.killed and info.value.returncode == -signal.SIGKILL


def test_run_fresh_refuses_functions_it_cannot_import():
    def local():
        return 1

    with pytest.raises(AdapterError, match="module-level function"):
        run_fresh(local)


def test_run_fresh_works_from_a_script_without_a_main_guard(tmp_path):
    """What multiprocessing's spawn cannot do; and nothing is left for its resource tracker to warn about."""
    script = tmp_path / "script.py"
    script.write_text(
        "import os\nfrom longctx_adapter.profiling.fresh import run_fresh\n"
        "print(run_fresh(os.getpid) != os.getpid())\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True" and out.stderr == ""


def test_demo_runs_print_progress_and_tables(capsys):
    rows = run_each(divmod, [("first", (7, 2)), ("second", (9, 4))])
    assert rows == [(3, 1), (2, 1)]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[1/2] first: running in a fresh process ..." and out[1].startswith("[1/2] first: done in ")
    assert out[2] == "[2/2] second: running in a fresh process ..." and out[3].endswith(" s")
    print_table(["a", "b"], [[1, "x"], [2, "y"]])
    assert capsys.readouterr().out == "| a | b |\n|---|---|\n| 1 | x |\n| 2 | y |\n"
