"""Memory and time of long-video inference: the profiler, the analytic estimator, real-size model presets."""

from longctx_adapter.profiling.profiler import profile

__all__ = ["profile"]
