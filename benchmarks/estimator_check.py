"""The estimator's KV-cache and chunked-prefill terms against measurements on CPU (a benchmark: prints tables).

    .venv/bin/python benchmarks/estimator_check.py [--only layer|model] [--tokens 8192] [--frames 4]

Two parts, every measurement in a fresh process (`profiling/fresh.py`) with glibc's mmap threshold at 1 MiB, peaks
from the kernel's VmHWM reset at each boundary (`profiling/memory.py`):

- `layer`: one decoder layer's KV cache at true 7B width (4 KV heads x head_dim 128, bf16, the same for
  LLaVA-OneVision-7B's and Qwen2-VL-7B's Qwen2 decoders) under transformers' hqq-quantized cache (4 and 2 bits,
  q_group_size 64, which divides every tensor here), a long prompt of `--tokens` tokens: the first update (prefill),
  a later prefill chunk (the layer already holds tokens - 4096, 4096 arrive), a decode step that flushes the
  residual window into the quantized part, and one that does not. Measured: peak above what existed before the
  update (inputs, the layer's earlier storage). Estimated: the estimator's per-layer terms for that update.
- `model`: `generate(max_new_tokens=2)` of truncated true-width models (1 decoder + 1 vision layer, real widths from
  `profiling/sizes.py`, random weights, float32 because this CPU has no fast bf16 matmul), one synthetic video of
  `--frames` frames: stock cache, hqq 4 bits, chunked prefill (256-token chunks), chunked prefill under a 4-bit
  cache. The quantized rows use `residual_length=1`, so the measured first decode step is one that flushes (the step the
  estimator counts). Stage peaks are measured minus the warmed runtime (the profiler's method), compared with
  `estimate_memory` at the same truncation, in total and above the weights.

The offloaded cache (`cache_implementation="offloaded"`) needs CUDA and cannot be measured here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MIB = 2**20
_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
CHUNK = 4096


# ------------------------------------------------------------------------------------------------ one cache layer


def layer_peaks(tokens: int, bits: int, kv_heads: int = 4, head_dim: int = 128, chunk: int = CHUNK,
                backend: str = "hqq") -> dict:  # fmt: skip
    """In a fresh process: peak bytes above the start of each kind of update of one quantized cache layer."""
    import torch
    from transformers.cache_utils import HQQQuantizedLayer, QuantoQuantizedLayer

    layer_class = {"hqq": HQQQuantizedLayer, "quanto": QuantoQuantizedLayer}[backend]

    from longctx_adapter.profiling.memory import RssProbe

    probe = RssProbe()
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(0)

    def states(n):
        return [torch.randn(1, kv_heads, n, head_dim, generator=gen).to(dtype) for _ in range(2)]

    def update(layer, k, v):
        before = probe.current()
        probe.reset()
        out = layer.update(k, v)
        peak = probe.peak() - before
        del out
        return peak

    def stored(layer):
        from longctx_adapter.profiling.profiler import _tensor_bytes

        return sum(_tensor_bytes(getattr(layer, n)) for n in ("_quantized_keys", "_quantized_values", "keys", "values"))

    out = {"method": probe.method}
    layer = layer_class(nbits=bits, q_group_size=64, residual_length=128)
    update(layer, *states(256))  # first-call allocations: not part of any update's peak
    del layer
    layer = layer_class(nbits=bits, q_group_size=64, residual_length=128)
    out["prefill"] = update(layer, *states(tokens))
    out["stored"] = stored(layer)
    out["decode_no_flush"] = update(layer, *states(1))
    del layer
    layer = layer_class(nbits=bits, q_group_size=64, residual_length=1)
    update(layer, *states(tokens))
    out["decode_flush"] = update(layer, *states(1))
    del layer
    layer = layer_class(nbits=bits, q_group_size=64, residual_length=128)
    update(layer, *states(tokens - chunk))
    out["chunk"] = update(layer, *states(chunk))
    return out


def layer_estimates(tokens: int, bits: int, kv_heads: int = 4, head_dim: int = 128, backend: str = "hqq") -> dict:
    """The estimator's per-layer terms for the same updates (estimate.py, quantized branch)."""
    from longctx_adapter.profiling.estimate import KV_GROUP, quantize_transient_bytes

    b = 2
    values = kv_heads * head_dim * tokens  # one of keys / values
    kv_layer = 2 * values * b
    stored = 2 * (values * bits / 8 + values / KV_GROUP * 2 * b)
    q = quantize_transient_bytes(values, "bfloat16", "cpu", backend)
    # prefill: the layer's new storage + the quantizer's scratch; later updates: + the dequantized layer and the
    # concatenation returned to attention (the cat copy every cache makes)
    return {
        "prefill": stored + q,
        "chunk": stored + kv_layer * (tokens - CHUNK) // tokens + kv_layer + q,
        "decode_flush": stored + kv_layer + kv_layer + q,
        "decode_no_flush": kv_layer + kv_layer,
        "stored": stored,
        "kv_layer": kv_layer,
    }


def run_layers(tokens: int, backends: list[str]) -> list[str]:
    import estimator_check

    from longctx_adapter.profiling.fresh import run_fresh

    lines = [
        f"One true-width cache layer (4 KV heads x 128, bf16), {tokens:,} tokens, q_group_size 64; "
        f"bf16 layer K+V = {4 * 128 * tokens * 4 / MIB:.0f} MiB; estimated = the estimator's terms for that backend",
        "",
        "| backend | bits | update | measured MiB | estimated MiB | measured / estimated |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for backend in backends:
        for bits in (4, 2):
            meas = run_fresh(estimator_check.layer_peaks, (tokens, bits), {"backend": backend}, env=_MMAP)
            est = layer_estimates(tokens, bits, backend=backend)
            for key, label in (("stored", "storage after prefill (exact bytes)"), ("prefill", "prefill (first update)"),
                               ("chunk", f"prefill chunk of {CHUNK} after {tokens - CHUNK:,}"),
                               ("decode_flush", "decode step that flushes"),
                               ("decode_no_flush", "decode step, no flush (estimator counts the flush)")):
                m, e = meas[key], est[key]
                lines.append(f"| {backend} | {bits} | {label} | {m / MIB:.1f} | {e / MIB:.1f} | {m / e:.2f} |")
            print("\n".join(lines[-5:]) + f"\n(probe: {meas['method']})", file=sys.stderr, flush=True)
    return lines


# ------------------------------------------------------------------------------------------------ whole models


ROWS = (  # label, kv bits, prefill chunk (2-bit differs from 4-bit only in storage, checked by the layer part)
    ("stock cache", None, None),
    ("hqq 4-bit", 4, None),
    ("chunked prefill 256", None, 256),
    ("chunked prefill 256 + hqq 4-bit", 4, 256),
)


def run_models(frames: int, presets: list[str], rows=ROWS) -> list[str]:
    from longctx_adapter.profiling.estimate import estimate_memory
    from longctx_adapter.profiling.profiler import _spawned
    from longctx_adapter.profiling.sizes import real_config

    lines = [
        f"Truncated true-width models (1 decoder + 1 vision layer, random weights, float32, CPU), one synthetic video "
        f"of {frames} frames, generate(max_new_tokens=2); MiB above the warmed runtime; 'above w.' = minus weights",
        "",
        "| model | cache / prefill | tokens | stage | measured | estimated | ratio | measured above w. | est. above w. "
        "| ratio above w. |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in presets:
        config = real_config(name, 1, 1)
        for label, bits, chunk in rows:
            gen = None
            if bits is not None:
                gen = {"cache_implementation": "quantized",
                       "cache_config": {"backend": "hqq", "nbits": bits, "q_group_size": 64, "residual_length": 1}}
            spec = {
                "kind": "preset", "model": name, "layers": 1, "vision_layers": 1, "dtype": "float32", "device": "cpu",
                "attn": "sdpa", "frame_size": None, "text_before": 14, "text_after": 20, "prefill_chunk_size": chunk,
                "seed": 0, "load_weights": False, "frames": frames, "config": None, "generate_kwargs": gen,
            }
            got = _spawned(spec)
            est = estimate_memory(config, frames, None, dtype="float32", text_tokens=34, prefill_chunk_size=chunk,
                                  device="cpu", kv_bits=bits, kv_backend="hqq")
            if got.get("status") != "ok":
                lines.append(f"| {name} | {label} | | | {got.get('status')} | | | | | |")
                print(got.get("traceback", ""), file=sys.stderr)
                continue
            weights = got["weights_bytes_run"]
            for stage in ("prefill", "decode"):
                m, e = got[f"{stage}_peak_bytes_run"], est[f"{stage}_peak_bytes"]
                lines.append(
                    f"| {name} | {label} | {got['seq_len']:,} | {stage} | {m / MIB:,.0f} | {e / MIB:,.0f} | {m / e:.3f} "
                    f"| {(m - weights) / MIB:,.0f} | {(e - weights) / MIB:,.0f} | {(m - weights) / (e - weights):.2f} |"
                )
            kv = got.get("kv_bytes_measured")
            if kv is not None:
                lines.append(f"| {name} | {label} | | KV after prefill (bytes held) | {kv / MIB:.2f} "
                             f"| {est['kv_bytes'] / MIB:.2f} | {kv / est['kv_bytes']:.3f} | | | |")
            print("\n".join(lines[-3:]), file=sys.stderr, flush=True)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("layer", "model"), default=None)
    parser.add_argument("--tokens", type=int, default=8192, help="prompt length of the one-layer part")
    parser.add_argument("--backends", default="hqq,quanto", help="quantized cache backends of the one-layer part")
    parser.add_argument("--frames", type=int, default=4, help="video frames of the whole-model part")
    parser.add_argument("--models", default="llava-onevision-7b,qwen2-vl-7b")
    parser.add_argument("--rows", default=None, help="whole-model rows to run, by number (1-4, comma-separated)")
    args = parser.parse_args(argv)
    rows = ROWS if args.rows is None else [ROWS[int(i) - 1] for i in args.rows.split(",")]
    if args.only in (None, "layer"):
        print("\n".join(run_layers(args.tokens, args.backends.split(","))) + "\n", flush=True)
    if args.only in (None, "model"):
        print("\n".join(run_models(args.frames, args.models.split(","), rows)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
