"""`make demo`: the shipped tiny TRAINED model answers questions about a long video, stock vs adapted.

The model (``longctx_adapter/models/tiny_video_lm``, see its README.md) is a ~145k-parameter LLaVA-OneVision
trained here from scratch on synthetic videos of 4-8 frames. The demo asks it questions about videos of
``frames`` frames (default 64 = 8x its longest training video) as the stock model, with the adapter config shipped beside
the weights (visual YaRN), and with that config plus progressive pooling, each in a fresh process, and
prints the answers, accuracy, visual tokens, KV cache and peak memory side by side. Inputs come from the model's own processor (``AutoProcessor.from_pretrained`` on the
folder) and answers from ``generate`` (greedy, one new token), exactly as a user would run it.
"""

from __future__ import annotations

import json
import os
import sys
import time

from longctx_adapter import config_text
from longctx_adapter.config import AdapterConfig
from longctx_adapter.demo.common import print_table, run_each
from longctx_adapter.errors import AdapterError
from longctx_adapter.profiling.memory import lifetime_peak_rss_bytes
from longctx_adapter.profiling.profiler import kv_cache_bytes

#: the demo's third run when no --config is given: the shipped RoPE config plus the pooling that kept most accuracy
#: on this model (progressive, group 4, strides [2, 4]: 4 tokens on 3 of every 4 frames; docs/tiny-model.md)
DEMO_POOLING = {"type": "progressive", "group": 4, "strides": [2, 4], "mode": "bilinear"}
MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "tiny_video_lm")
DEMO_STREAM = 2024  # item seed of the demo's questions (not the training stream)


def model_dir() -> str:
    """The shipped model folder (a plain HF folder: config.json, model.safetensors, tokenizer, processor)."""
    if not os.path.isfile(os.path.join(MODEL_DIR, "model.safetensors")):
        raise AdapterError(
            f"the trained tiny model is missing from {MODEL_DIR}; reinstall the package or run `make train-tiny`"
        )
    return MODEL_DIR


def recommended_config() -> AdapterConfig:
    """The adapter config shipped beside the weights (longctx_adapter.json): what measured best on this model."""
    from longctx_adapter.saving import ADAPTER_CONFIG_NAME, read_adapter_config

    return read_adapter_config(os.path.join(model_dir(), ADAPTER_CONFIG_NAME))


def _items(frames: int, questions: int, seed: int):
    from longctx_adapter.eval.synthetic_qa import TASKS, make_item

    return [make_item(TASKS[i % len(TASKS)], frames, DEMO_STREAM + seed, i) for i in range(questions)]


def _measure(label: str, config_dict: dict | None, frames: int, questions: int, seed: int) -> dict:
    """One run in a fresh process: load the shipped model, (maybe) adapt it, answer every question."""
    import torch
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    from longctx_adapter import apply_adapter
    from longctx_adapter.eval.synthetic_qa import prompt_text

    torch.set_num_threads(1)
    path = model_dir()
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    handle = apply_adapter(model, config_dict) if config_dict is not None else None
    answers, seconds, kv, visual_after, seq_len = [], 0.0, 0, None, 0
    from tqdm.auto import tqdm

    with torch.inference_mode():
        # progress of its own per question (a run takes seconds to minutes); tqdm writes to stderr
        for item in tqdm(_items(frames, questions, seed), desc=f"{label}: questions", unit="question", leave=False,
                         mininterval=0.5, dynamic_ncols=True):
            inputs = processor(text=[prompt_text(item.question)], videos=[item.frames], return_tensors="pt")
            start = time.perf_counter()
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
            seconds += time.perf_counter() - start
            word = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :]).strip()
            answers.append(
                {"question": item.question, "truth": item.answer, "answer": word, "markers": list(item.markers)}
            )
        prefill = model(**inputs, logits_to_keep=1, use_cache=True)  # the last item once more, for its cache
        kv = kv_cache_bytes(prefill.cache)
        seq_len = prefill.cache.get_seq_length()
        visual_before = int((inputs["input_ids"] == model.config.video_token_id).sum())
        stats = list(handle.last_stats) if handle else []
        visual_after = sum(s["tokens_after"] for s in stats) if stats else visual_before
    return {
        "run": label,
        "frames": frames,
        "answers": answers,
        "accuracy": sum(a["answer"] == a["truth"] for a in answers) / len(answers),
        "visual_tokens_before": visual_before,
        "visual_tokens_after": visual_after,
        "sequence_length": seq_len,
        "kv_cache_bytes": kv,
        "generate_s": seconds,
        "peak_rss_mib": lifetime_peak_rss_bytes() / 2**20,
        "rope_factor": stats[0].get("rope_factor") if stats else None,
    }


def _config_from(spec) -> AdapterConfig:
    """--config in the config grammar (docs/configuration.md); `saved` is the config shipped beside the weights."""
    if spec is None:
        return recommended_config()
    if isinstance(spec, AdapterConfig):
        return spec
    return config_text.parse_config(spec, "llava_onevision", folder=model_dir()) or AdapterConfig()


def run_trained_demo(frames: int = 64, questions: int = 12, seed: int = 0, config=None) -> list[dict]:
    """Stock vs adapted answers of the shipped tiny trained model on ``questions`` long synthetic videos.

    Without ``config``: stock, the config shipped beside the weights, and that config plus progressive [2, 4]
    pooling; with ``config``: stock and that config. Returns one result dict per run.
    """
    if frames < 3:
        raise AdapterError(f"--frames must be >= 3 for the trained demo, got {frames}")
    if questions < 1:
        raise AdapterError(f"--questions must be >= 1, got {questions}")
    default = config is None
    config = _config_from(config)
    print(
        "longctx-adapter demo: the shipped tiny TRAINED LLaVA-OneVision (longctx_adapter/models/tiny_video_lm: ~145k\n"
        "parameters, trained from scratch on synthetic videos of 4-8 frames, i.e. at most 129 visual tokens).\n"
        f"Questions about synthetic videos of {frames} frames ({frames / 8:g}x its longest training video); each\n"
        "run is a fresh process; inputs from the model's own processor, answers from generate().\n"
        f"adapter config ({'shipped beside the weights, longctx_adapter.json' if default else 'from --config'}): "
        f"{config.to_json()}\n"
    )
    runs = [("stock", None), ("adapted", config)]
    if default:
        runs.append(("adapted+pooling", config.replace(pooling=DEMO_POOLING)))
        print(f"adapted+pooling: the same plus pooling {json.dumps(DEMO_POOLING)}\n")
    rows = run_each(_measure, [(label, (label, cfg.to_dict() if cfg else None, frames, questions, seed))
                               for label, cfg in runs])

    def mark(x):
        return x["answer"] + (" ok" if x["answer"] == x["truth"] else " WRONG")

    print_table(["question", "marker frames", "truth", *(r["run"] for r in rows)], [
        [answers[0]["question"], answers[0]["markers"], answers[0]["truth"], *(mark(a) for a in answers)]
        for answers in zip(*(r["answers"] for r in rows))
    ])
    print()
    header = ["run", "accuracy", "visual tokens before", "visual tokens after", "RoPE factor", "prefill seq len",
              "KV cache bytes", "generate s (all questions)", "peak RSS MiB"]
    print_table(header, [
        [r["run"], f"{r['accuracy']:.0%} ({sum(a['answer'] == a['truth'] for a in r['answers'])}/{len(r['answers'])})",
         f"{r['visual_tokens_before']:,}", f"{r['visual_tokens_after']:,}",
         f"{r['rope_factor']:.2f}" if r["rope_factor"] else "-", f"{r['sequence_length']:,}",
         f"{r['kv_cache_bytes']:,}", f"{r['generate_s']:.2f}", f"{r['peak_rss_mib']:.0f}"]
        for r in rows
    ])
    print(
        f"\nA {questions}-question demo is a small sample (one question is {100 / questions:.0f} points); the measured "
        "accuracies on hundreds of held-out\nitems per length and configuration are in docs/tiny-model.md (make measure-tiny). "
        "Peak RSS is mostly the Python/torch process itself\nat this model size; the KV cache is what scales with "
        "visual tokens."
    )
    sys.stdout.flush()
    return rows
