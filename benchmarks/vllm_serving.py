"""Stock vs adapted vLLM CPU engines on tiny models at 32-128 frames: requests/s, time to first token, prompt tokens.

    make bench-vllm            # or: LONGCTX_HF_PYTHON=.venv/bin/python .venv-vllm/bin/python benchmarks/vllm_serving.py

Runs in the vLLM venv. The tiny checkpoints come from tests/vllm_env/hf_side.py (run with the main venv's python:
LLaVA-OneVision 7x7 SigLIP grid, Qwen2-VL 4x4 merged tokens per temporal patch; random weights, float32). Both
engines of a model live in this one process (in-process engines) and rounds alternate which engine goes first, so
machine noise hits both alike. "stock" is the plugin with no adapter config (bit-identical to vLLM without the
plugin, tests/test_vllm_plugin.py); "adapted" serves the family's progressive pooling (LLaVA-OneVision: group 4,
strides [2, 7] on the 7x7 grid; Qwen2-VL: group 4, strides [1, 4] on the merged grid) plus a fixed visual YaRN.

- TTFT: wall time of one request with max_tokens=1 on an idle engine (processor + encoder + prefill + one token),
  median of TTFT_REPEATS such requests per round.
- requests/s: a batch of BATCH requests (max_tokens=16) submitted together, divided by its wall time.
Every request has its own random video, so vLLM's multimodal caches never serve a repeat. Ratios are
adapted / stock per round (median over rounds); throughput ratios > 1 and TTFT ratios < 1 favour the adapter.
Writes docs/vllm_benchmark.json and docs/vllm_benchmark.md. No assertion on time: this only reports.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = ROOT / "tests" / "vllm_env"
sys.path.insert(0, str(ENV_DIR))

from shared import OV_PROMPT, QWEN_PROMPT  # noqa: E402
from vllm_side import ENGINE  # noqa: E402

FRAMES = (32, 64, 128)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
BATCH = int(os.environ.get("BENCH_BATCH", "8"))
TTFT_REPEATS = 3  # single requests per engine and round; their median is the round's TTFT
MODELS = {
    "llava_onevision": {
        "folder": "ov",
        "prompt": OV_PROMPT,
        "side": 28,
        "adapter": {
            "pooling": {"type": "progressive", "group": 4, "strides": [2, 7]},
            "rope": {"type": "yarn", "visual_window": 129, "factor": 16.0},
        },
    },
    "qwen2_vl": {
        "folder": "qwen",
        "prompt": QWEN_PROMPT,
        "side": 32,
        "adapter": {
            "pooling": {"type": "progressive", "group": 4, "strides": [1, 4]},
            "rope": {"type": "yarn", "visual_window": 8, "factor": 8.0},
        },
    },
}


def _checkpoints() -> Path:
    out = Path(tempfile.mkdtemp(prefix="vllm_bench_"))
    python = os.environ.get("LONGCTX_HF_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    subprocess.run([python, str(ENV_DIR / "hf_side.py"), str(out)], check=True, capture_output=True, cwd=ROOT)
    return out


def _requests(prompt: str, frames: int, side: int, count: int, seed: int) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        {"prompt": prompt, "multi_modal_data": {"video": rng.integers(0, 256, (frames, side, side, 3), dtype=np.uint8)}}
        for _ in range(count)
    ]


def _timed(llm, requests, params) -> tuple[float, list]:
    start = time.perf_counter()
    outs = llm.generate(requests, params, use_tqdm=False)
    return time.perf_counter() - start, outs


def _median_ratio(samples: dict, key: str) -> float:
    """Median over rounds of adapted / stock (each round's pair ran back to back)."""
    return statistics.median(a / s for a, s in zip(samples["adapted"][key], samples["stock"][key]))


def bench_model(name: str, spec: dict, folder: Path) -> list[dict]:
    from vllm import LLM, SamplingParams

    engines = {
        "stock": LLM(model=str(folder / spec["folder"]), **ENGINE),
        "adapted": LLM(model=str(folder / spec["folder"]), hf_overrides={"longctx_adapter": spec["adapter"]}, **ENGINE),
    }
    first, batch = SamplingParams(max_tokens=1, temperature=0.0), SamplingParams(max_tokens=16, temperature=0.0)
    for llm in engines.values():  # warm-up at every length: first-request kernel set-up is not what we measure
        for frames in FRAMES:
            _timed(llm, _requests(spec["prompt"], frames, spec["side"], 2, seed=99 + frames), batch)
    rows = []
    for frames in FRAMES:
        samples = {k: {"ttft": [], "rps": [], "prompt_tokens": None} for k in engines}
        for rnd in range(ROUNDS):
            order = list(engines) if rnd % 2 == 0 else list(reversed(engines))
            for kind in order:
                seed = 1000 * frames + 10 * rnd
                singles = [
                    _timed(engines[kind], _requests(spec["prompt"], frames, spec["side"], 1, seed + 100 + i), first)
                    for i in range(TTFT_REPEATS)
                ]
                ttft, outs = statistics.median(t for t, _ in singles), singles[0][1]
                wall, _ = _timed(engines[kind], _requests(spec["prompt"], frames, spec["side"], BATCH, seed + 1), batch)
                samples[kind]["ttft"].append(ttft)
                samples[kind]["rps"].append(BATCH / wall)
                samples[kind]["prompt_tokens"] = len(outs[0].prompt_token_ids)
        rows.append(
            {
                "model": name,
                "frames": frames,
                "prompt_tokens_stock": samples["stock"]["prompt_tokens"],
                "prompt_tokens_adapted": samples["adapted"]["prompt_tokens"],
                "ttft_s_stock": statistics.median(samples["stock"]["ttft"]),
                "ttft_s_adapted": statistics.median(samples["adapted"]["ttft"]),
                "ttft_ratio": _median_ratio(samples, "ttft"),
                "rps_stock": statistics.median(samples["stock"]["rps"]),
                "rps_adapted": statistics.median(samples["adapted"]["rps"]),
                "rps_ratio": _median_ratio(samples, "rps"),
                "samples": samples,
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "samples"}), flush=True)
    del engines
    gc.collect()
    return rows


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| model | frames | prompt tokens stock -> adapted | TTFT stock / adapted (s) | TTFT ratio | "
        "requests/s stock / adapted | requests/s ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['frames']} | {r['prompt_tokens_stock']:,} -> {r['prompt_tokens_adapted']:,} | "
            f"{r['ttft_s_stock']:.3f} / {r['ttft_s_adapted']:.3f} | **{r['ttft_ratio']:.2f}x** | "
            f"{r['rps_stock']:.2f} / {r['rps_adapted']:.2f} | **{r['rps_ratio']:.2f}x** |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch
    import vllm

    folder = _checkpoints()
    rows = []
    for name, spec in MODELS.items():
        rows += bench_model(name, spec, folder)
    meta = {
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "rounds": ROUNDS,
        "batch": BATCH,
        "engine": {k: v for k, v in ENGINE.items()},
        "adapters": {name: spec["adapter"] for name, spec in MODELS.items()},
    }
    docs = ROOT / "docs"
    (docs / "vllm_benchmark.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str) + "\n")
    table = _markdown(rows)
    (docs / "vllm_benchmark.md").write_text(
        "Stock vs adapted vLLM CPU engines (tiny random models, `make bench-vllm`; "
        f"vLLM {meta['vllm']}, torch {meta['torch']}, {meta['machine']}, {ROUNDS} interleaved rounds, "
        f"batch {BATCH}). Ratios are adapted / stock, median over rounds.\n\n" + table
    )
    print(table)


if __name__ == "__main__":
    main()
