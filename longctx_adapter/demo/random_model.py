"""`make demo`: stock vs adapted generation on a long synthetic video, measured side by side in one run.

The model is a TINY RANDOM LLaVA-OneVision built from a config (no weights are downloaded): its answers are
noise. What the demo shows is real: how many visual tokens reach the language model, what prefill costs,
the KV-cache size, and the peak memory of each run, each measured in its own freshly spawned process.

Why the demo does not use the family preset: the preset (progressive, group 4, strides [2, 8]) is sized for the
real 27x27 SigLIP grid, and the tiny model's grid is 7x7, where apply_adapter rightly refuses stride 8. The demo
uses strides [2, 7] instead, which keeps the same share of tokens (19/64 on 7x7 vs 244/784 on 27x27).
"""

from __future__ import annotations

import statistics
import sys
import time

from longctx_adapter import config_text
from longctx_adapter.config import AdapterConfig
from longctx_adapter.demo.common import print_table, run_each
from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.pooling import count_tokens
from longctx_adapter.profiling.memory import lifetime_peak_rss_bytes
from longctx_adapter.profiling.profiler import kv_cache_bytes

MODEL_TYPE = "llava_onevision"
PROMPT = "what color is the frame"
#: the paper's progressive pooling re-scaled to the tiny 7x7 grid (the preset's stride 8 does not fit in 7)
DEMO_POOLING = {"type": "progressive", "group": 4, "strides": [2, 7], "mode": "bilinear"}
#: what the stock model does to every frame (its built-in bilinear 2x), written as a pooling stage
_STOCK_POOLING = {"type": "progressive", "group": 1, "strides": [2], "mode": "bilinear"}
PREFILL_REPEATS = 5
_REAL_GRID = 27  # LLaVA-OneVision's SigLIP-384 grid (384 px / patch 14)


def demo_config(spec: str | None = None) -> AdapterConfig:
    """The demo's AdapterConfig: `spec` in the config grammar (docs/configuration.md); `none`/null = pooling off."""
    if spec is None:
        return AdapterConfig(pooling=DEMO_POOLING)
    return config_text.parse_config(spec, MODEL_TYPE) or AdapterConfig()


def _tiny_grid() -> int:
    from longctx_adapter.testing.tiny import tiny_spec

    return tiny_spec(MODEL_TYPE).grid


def _measure(label: str, config_dict: dict | None, frames: int, new_tokens: int, seed: int) -> dict:
    """One run in a fresh process: build the model, (maybe) adapt it, time the prefill (median), then generate."""
    import torch

    from longctx_adapter import apply_adapter
    from longctx_adapter.testing.tiny import processor_inputs, tiny_model, tiny_tokenizer

    model = tiny_model(MODEL_TYPE, seed=seed)
    handle = apply_adapter(model, config_dict) if config_dict is not None else None
    inputs = processor_inputs(MODEL_TYPE, frames=frames, prompt=PROMPT, seed=seed)
    warmup = processor_inputs(MODEL_TYPE, frames=min(frames, 8), prompt=PROMPT, seed=seed)
    visual_before = int((inputs["input_ids"] == model.config.video_token_id).sum())
    with torch.inference_mode():
        # first-call costs (allocator, kernels) stay out of the timing
        model(**warmup, logits_to_keep=1, use_cache=True)
        times = []
        for _ in range(PREFILL_REPEATS):
            start = time.perf_counter()
            prefill = model(**inputs, logits_to_keep=1, use_cache=True)
            times.append(time.perf_counter() - start)
        prefill_s = statistics.median(times)
        kv = kv_cache_bytes(prefill.cache)
        seq_len = prefill.cache.get_seq_length()
        stats = list(handle.last_stats) if handle else []
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    visual_after = sum(s["tokens_after"] for s in stats) if stats else visual_before  # no stats: nothing pooled
    return {
        "run": label,
        "frames": frames,
        "visual_tokens_before": visual_before,
        "visual_tokens_after": visual_after,
        "sequence_length": seq_len,
        "prefill_s": prefill_s,
        "peak_rss_mib": lifetime_peak_rss_bytes() / 2**20,
        "kv_cache_bytes": kv,
        "last_stats": stats,
        "prompt_kept": bool(torch.equal(out[:, :prompt_len], inputs["input_ids"])),
        "answer": tiny_tokenizer().decode(out[0, prompt_len:], skip_special_tokens=True),
    }


def _explain(config: AdapterConfig, frames: int, grid: int, default: bool) -> None:
    real_stock = count_tokens(4, _REAL_GRID, _REAL_GRID, _STOCK_POOLING)
    real_paper = count_tokens(4, _REAL_GRID, _REAL_GRID, AdapterConfig.preset(MODEL_TYPE).pooling)
    tiny_stock = count_tokens(4, grid, grid, _STOCK_POOLING)
    tiny_demo = count_tokens(4, grid, grid, DEMO_POOLING)
    print(
        f"longctx-adapter demo: a TINY RANDOM {MODEL_TYPE} (built from a config, random weights, nothing downloaded:\n"
        f"its answers are noise). What is real: token counts, prefill time, memory and KV cache, measured below.\n"
    )
    print(
        "Why not the family preset: it (progressive, group 4, strides [2, 8]) is sized for the real 27x27 SigLIP grid;\n"
        f"the tiny model's grid is {grid}x{grid}, where stride 8 does not fit and apply_adapter refuses it. The demo's\n"
        f"default therefore uses strides [2, {grid}], which keeps the same share of tokens:\n"
        f"  real {_REAL_GRID}x{_REAL_GRID}, strides [2, 8]: {real_paper} of {real_stock} tokens per 4 frames "
        f"({real_paper / real_stock:.2f})\n"
        f"  tiny {grid}x{grid},   strides [2, {grid}]: {tiny_demo} of {tiny_stock} tokens per 4 frames "
        f"({tiny_demo / tiny_stock:.2f})"
    )
    source = "the demo default" if default else "from --config"
    print(f"adapter config ({source}): {config.to_json()}")
    print(f"synthetic video: {frames} frames; each run below is a freshly spawned process.\n")


def _table(rows: list[dict]) -> None:
    header = ["run", "frames", "visual tokens before", "visual tokens after", "prefill seq len", "prefill s",
              "peak RSS MiB", "KV cache bytes"]
    print_table(header, [
        [r["run"], r["frames"], f"{r['visual_tokens_before']:,}", f"{r['visual_tokens_after']:,}",
         f"{r['sequence_length']:,}", f"{r['prefill_s']:.3f}", f"{r['peak_rss_mib']:.0f}", f"{r['kv_cache_bytes']:,}"]
        for r in rows
    ])


def run_demo(frames: int = 256, new_tokens: int = 8, seed: int = 0, config: str | AdapterConfig | None = None):
    """Run stock and adapted generate in two fresh processes and print what each cost; returns the two rows."""
    if frames < 1:
        raise AdapterError(f"--frames must be >= 1, got {frames}")
    default = config is None
    if not isinstance(config, AdapterConfig):
        config = demo_config(config)
    grid = _tiny_grid()
    if config.pooling:
        count_tokens(frames, grid, grid, config.pooling)  # refuse a config the tiny grid cannot hold, before spawning
    _explain(config, frames, grid, default)
    rows = run_each(_measure, [(label, (label, cfg, frames, new_tokens, seed))
                               for label, cfg in (("stock", None), ("adapted", config.to_dict()))])
    _table(rows)
    stock, adapted = rows
    print(
        f"\nadapted / stock, measured in this run: visual tokens x{adapted['visual_tokens_after'] / stock['visual_tokens_after']:.3f}, "
        f"prefill time x{adapted['prefill_s'] / stock['prefill_s']:.3f}, "
        f"KV cache x{adapted['kv_cache_bytes'] / stock['kv_cache_bytes']:.3f}"
    )
    print(
        f"prefill s = median of {PREFILL_REPEATS} forwards over the whole prompt (vision encoder + pooling + language "
        "model), after a short warm-up;\npeak RSS = the process's high-water mark (model, processor, prefill and generate)."
    )
    for stat in adapted["last_stats"]:
        print(f"adapted handle.last_stats: {stat}")
    for r in rows:
        print(
            f"{r['run']} answer (random model, {new_tokens} new tokens): {r['answer']!r}; "
            f"prompt part of generate output == caller's input_ids: {r['prompt_kept']}"
        )
    sys.stdout.flush()
    return rows
