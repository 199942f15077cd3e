"""The vLLM side of the vLLM tests and benchmark: run engines on the cases hf_side.py built (vLLM venv only).

    python tests/vllm_env/vllm_side.py CASES_DIR RUNS_JSON OUT_JSON

RUNS_JSON: a list of runs, each {"name", "model" (folder under CASES_DIR), "overrides" (hf_overrides dict, or
absent), "prompts": [{"case", "prompt", "video"}]}. One in-process engine per run (VLLM_ENABLE_V1_MULTIPROCESSING=0),
closed before the next; an engine that fails to start records its error (refusal tests read it). Writes, per prompt, the greedy tokens, vLLM's
top-k log-probabilities per step and the prompt token ids; per run, the model class the engine built; and the
longctx_adapter modules this process imported. Whether the plugin loads is the caller's choice (VLLM_PLUGINS).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

STEPS = 4
TOP_K = 20
ENGINE = dict(
    dtype="float32",
    max_model_len=4096,
    max_num_batched_tokens=4096,
    max_num_seqs=8,
    enforce_eager=True,
    seed=0,
    kv_cache_memory_bytes=128 << 20,  # the CPU backend otherwise reserves a share of all memory
    limit_mm_per_prompt={"video": 1},
)


def model_class_name(llm) -> str:
    """The class of the model an in-process engine built (uniprocess executor, CPU worker)."""
    try:
        executor = llm.llm_engine.model_executor
        return type(executor.driver_worker.worker.model_runner.model).__name__
    except AttributeError:
        return "unknown"


def run_one(cases_dir: Path, run: dict) -> dict:
    import numpy as np
    from vllm import LLM, SamplingParams

    kwargs = dict(ENGINE)
    if "overrides" in run:
        kwargs["hf_overrides"] = run["overrides"]
    started = time.perf_counter()
    try:
        llm = LLM(model=str(cases_dir / run["model"]), **kwargs)
    except Exception as err:  # noqa: BLE001 - reported to the test, which decides
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
    result = {"model_class": model_class_name(llm), "engine_s": time.perf_counter() - started, "prompts": {}}
    params = SamplingParams(max_tokens=STEPS, temperature=0.0, logprobs=TOP_K)
    for item in run["prompts"]:
        video = np.load(cases_dir / item["video"])
        try:
            (out,) = llm.generate(
                {"prompt": item["prompt"], "multi_modal_data": {"video": video}}, params, use_tqdm=False
            )
        except Exception as err:  # noqa: BLE001
            result["prompts"][item["case"]] = {"error": f"{type(err).__name__}: {err}"}
            continue
        completion = out.outputs[0]
        result["prompts"][item["case"]] = {
            "tokens": list(completion.token_ids),
            "logprobs": [{str(k): v.logprob for k, v in step.items()} for step in completion.logprobs],
            "prompt_token_ids": list(out.prompt_token_ids),
        }
    del llm
    gc.collect()
    return result


def main(cases_dir: str, runs_json: str, out_json: str) -> None:
    cases = Path(cases_dir)
    runs = json.loads(Path(runs_json).read_text())
    results = {run["name"]: run_one(cases, run) for run in runs}
    modules = sorted(m for m in sys.modules if m.startswith("longctx_adapter"))
    Path(out_json).write_text(json.dumps({"runs": results, "modules": modules}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
