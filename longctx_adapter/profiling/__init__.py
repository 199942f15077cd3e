"""Memory and time of long-video inference: the profiler, the analytic estimator, real-size model presets, and the
measuring tools they share (memory probes, fresh-process runs, dtype names).

`profile` loads lazily, so the small modules here (`dtypes`, `memory`, `fresh`) import without the profiler."""

from __future__ import annotations

__all__ = ["profile"]


def __getattr__(name: str):
    if name == "profile":
        from longctx_adapter.profiling.profiler import profile

        return profile
    raise AttributeError(f"module 'longctx_adapter.profiling' has no attribute {name!r}")
