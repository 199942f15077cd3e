"""`make demo`: stock vs adapted generation on a long synthetic video, measured side by side in one run.

The model is a TINY RANDOM LLaVA-OneVision built from a config (no weights are downloaded): its answers are
noise. What the demo shows is real: how many visual tokens reach the language model, what prefill costs,
the KV-cache size, and the peak memory of each run, each measured in its own fresh process.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time

MODEL_TYPE = "llava_onevision"


def _kv_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


def _measure(label: str, adapt: bool, frames: int, new_tokens: int, seed: int) -> dict:
    import torch

    from longctx_adapter import apply_adapter
    from longctx_adapter.tiny import processor_inputs, tiny_model, tiny_tokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = tiny_model(MODEL_TYPE, seed=seed)
    inputs = processor_inputs(MODEL_TYPE, frames=frames, prompt="what color is the frame", seed=seed)
    handle = apply_adapter(model) if adapt else None
    visual_before = int((inputs["input_ids"] == model.config.video_token_id).sum())
    with torch.inference_mode():
        start = time.perf_counter()
        prefill = model(**inputs, logits_to_keep=1, use_cache=True)
        prefill_s = time.perf_counter() - start
        kv = _kv_bytes(prefill.cache)
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    stats = handle.last_stats if handle else []
    visual_after = sum(s["tokens_after"] for s in stats) if handle else visual_before
    answer = tiny_tokenizer().decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return {
        "run": label,
        "frames": frames,
        "visual_tokens_before": visual_before,
        "visual_tokens_after": visual_after,
        "prefill_s": prefill_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "kv_cache_mib": kv / 2**20,
        "answer": answer,
    }


def _in_fresh_process(*args) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measure, args)


def run_demo(frames: int = 256, new_tokens: int = 8, seed: int = 0) -> list[dict]:
    print(f"longctx-adapter demo: TINY RANDOM {MODEL_TYPE} (built from a config, random weights: answers are noise)")
    print(f"synthetic video of {frames} frames; family preset = progressive pooling (group 4, strides 2/8)\n")
    rows = [
        _in_fresh_process("stock", False, frames, new_tokens, seed),
        _in_fresh_process("adapted", True, frames, new_tokens, seed),
    ]
    header = ["run", "frames", "visual tokens before", "after", "prefill s", "peak RSS MiB", "KV cache MiB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [
            r["run"],
            r["frames"],
            r["visual_tokens_before"],
            r["visual_tokens_after"],
            f"{r['prefill_s']:.3f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['kv_cache_mib']:.2f}",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    stock, adapted = rows
    print(
        f"\nvisual tokens x{adapted['visual_tokens_after'] / stock['visual_tokens_after']:.3f}, "
        f"prefill time x{adapted['prefill_s'] / stock['prefill_s']:.3f}, "
        f"KV cache x{adapted['kv_cache_mib'] / stock['kv_cache_mib']:.3f} (adapted / stock, measured in this run)"
    )
    for r in rows:
        print(f"{r['run']} answer (random model): {r['answer']!r}")
    return rows
