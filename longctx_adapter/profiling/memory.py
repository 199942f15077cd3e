"""Peak memory of a block of work: the one probe that the profiler, `run`, `ablate` and the demos use.

- CUDA: `torch.cuda.max_memory_allocated`, reset at every boundary (tensor bytes; the allocator's cache excluded).
- CPU, Linux: the kernel's resident-set high-water mark `VmHWM` (/proc/self/status), reset by writing "5" to
  /proc/self/clear_refs (Linux >= 4.0).
- CPU elsewhere (macOS, Windows), or where clear_refs is refused (some containers): a thread samples the resident
  set through psutil every 0.5 ms while a block runs; a peak shorter than that can be missed.
A probe's `method` says which of these it measures, so every report can print it.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

__all__ = ["CudaProbe", "RssProbe", "lifetime_peak_rss_bytes", "measure", "memory_probe", "rss_bytes"]

SAMPLE_SECONDS = 0.0005
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def rss_bytes() -> int:
    """The process's resident set now (psutil: every platform)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def lifetime_peak_rss_bytes() -> int:
    """The process's resident-set peak since it started (never goes down): getrusage's ru_maxrss, which is in KiB
    on Linux and in bytes on macOS; psutil's peak working set on Windows."""
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        return int(getattr(psutil.Process().memory_info(), "peak_wset", 0)) or rss_bytes()
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024


def _status_bytes(field: str) -> int:
    with open(_STATUS) as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in {_STATUS}")


def _clear_refs() -> None:
    """Reset VmHWM to the current resident set (Linux only; OSError elsewhere or where it is refused)."""
    with open(_CLEAR_REFS, "w") as fh:
        fh.write("5")


class RssProbe:
    """Peak resident set between `reset()` and `peak()`: VmHWM where the kernel lets us reset it, else sampled."""

    def __init__(self):
        try:
            _clear_refs()
            _status_bytes("VmHWM")
            self.method = "VmHWM+clear_refs"
        except OSError:
            self.method = f"RSS sampled every {SAMPLE_SECONDS * 1e3:g} ms"
        self._sampled = not self.method.startswith("VmHWM")
        self._peak = 0
        self._stop = threading.Event()
        self._thread = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(SAMPLE_SECONDS)

    def current(self) -> int:
        return rss_bytes()

    def reset(self) -> None:
        """Start a new peak window (starts the sampling thread where there is one)."""
        if not self._sampled:
            _clear_refs()
            return
        self._peak = self.current()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="rss-probe", daemon=True)
            self._thread.start()

    def peak(self) -> int:
        if not self._sampled:
            return _status_bytes("VmHWM")
        return max(self._peak, self.current())

    def sync(self) -> None:
        pass

    def close(self) -> None:
        """Stop the sampling thread (a later `reset()` starts it again)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


class CudaProbe:
    """Peak tensor bytes on one CUDA device between `reset()` and `peak()`."""

    method = "torch.cuda.max_memory_allocated"

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device

    def sync(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def current(self) -> int:
        return self.torch.cuda.memory_allocated(self.device)

    def reset(self) -> None:
        self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        return self.torch.cuda.max_memory_allocated(self.device)

    def close(self) -> None:
        pass


def memory_probe(device) -> RssProbe | CudaProbe:
    """The probe for `device` (a torch.device or its name): CUDA memory on a GPU, the process's RSS otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return CudaProbe(device)
    return RssProbe()


@contextmanager
def measure(probe):
    """Peak memory and wall time of the block: yields a dict that holds `peak_mem_bytes`, `time_s` and `mem_method`
    once the block ends."""
    box: dict = {}
    probe.sync()
    probe.reset()
    start = time.perf_counter()
    try:
        yield box
    finally:
        probe.sync()
        box["peak_mem_bytes"] = int(probe.peak())
        box["time_s"] = time.perf_counter() - start
        box["mem_method"] = probe.method
        probe.close()
