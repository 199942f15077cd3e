"""The shipped tiny trained video LM (issue 9): it loads, answers a short item right, and the adapter's identity
path leaves its logits bit-identical. Fast (a ~145k-parameter model on 8-frame, 28 px videos)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from longctx_adapter.eval.synthetic_qa import TASKS, batch_inputs, make_item, prompt_text
from transformers import AutoProcessor, AutoTokenizer, LlavaOnevisionForConditionalGeneration

import longctx_adapter
from longctx_adapter import AdapterConfig, apply_adapter
from longctx_adapter.demo.trained import MODEL_DIR, recommended_config

# Held-out items (stream 7 is never used in training) the shipped model answers right at its training length.
SHORT_ITEMS = [("color", 8, 7, 0), ("order", 8, 7, 0), ("count", 6, 7, 1)]


@pytest.fixture(scope="module")
def shipped():
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    return model, tokenizer


def _answers(model, tokenizer, items):
    with torch.no_grad():
        logits = model(**batch_inputs(items, tokenizer), logits_to_keep=1).logits[:, -1]
    return tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())


def test_folder_is_a_small_documented_hf_checkpoint():
    names = set(os.listdir(MODEL_DIR))
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
        "README.md",
        "longctx_adapter.json",
        "train_summary.json",
    } <= names
    assert os.path.getsize(os.path.join(MODEL_DIR, "model.safetensors")) < 4 * 2**20
    with open(os.path.join(MODEL_DIR, "config.json")) as f:
        assert json.load(f)["model_type"] == "llava_onevision"
    with open(os.path.join(MODEL_DIR, "train_summary.json")) as f:
        summary = json.load(f)
    assert summary["args"]["max_frames"] == 8  # the visual training window the docs and measurements assume
    if sys.version_info >= (3, 11):  # the folder ships as package data
        import tomllib

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "pyproject.toml"), "rb") as f:
            data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["longctx_adapter"]
        assert "models/tiny_video_lm/*" in data


@pytest.mark.parametrize("task,frames,seed,index", SHORT_ITEMS)
def test_shipped_model_answers_a_short_item(shipped, task, frames, seed, index):
    model, tokenizer = shipped
    item = make_item(task, frames, seed, index)
    assert _answers(model, tokenizer, [item]) == [item.answer]


def test_processor_inputs_equal_the_fast_path_and_generate_answers(shipped):
    model, tokenizer = shipped
    processor = AutoProcessor.from_pretrained(MODEL_DIR)
    item = make_item(*SHORT_ITEMS[0])
    inputs = processor(text=[prompt_text(item.question)], videos=[item.frames], return_tensors="pt")
    fast = batch_inputs([item], tokenizer)
    for key in fast:
        assert torch.equal(inputs[key], fast[key]), key
    out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert tokenizer.decode(out[0, inputs["input_ids"].shape[1] :]).strip() == item.answer


def test_identity_adapter_is_bit_identical_on_the_trained_model(shipped):
    model, tokenizer = shipped
    items = [make_item(task, 8, 7, 3) for task in TASKS]
    inputs = batch_inputs(items, tokenizer)
    with torch.no_grad():
        stock = model(**inputs).logits
        stock_gen = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        with apply_adapter(model, AdapterConfig(pooling=None, rope=None)):
            adapted = model(**inputs).logits
            adapted_gen = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert torch.equal(stock, adapted)
    assert torch.equal(stock_gen, adapted_gen)


def test_shipped_adapter_config_loads_and_is_a_noop_at_training_length(shipped):
    """longctx_adapter.from_pretrained(folder) applies the config saved beside the weights."""
    model, tokenizer = shipped
    adapted = longctx_adapter.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    handle = longctx_adapter.get_adapter(adapted)
    assert handle is not None and handle.config == recommended_config()
    items = [make_item(*it) for it in SHORT_ITEMS[:2]]
    assert _answers(adapted, tokenizer, items) == [it.answer for it in items]
    if recommended_config().pooling is None:  # RoPE-only: s <= 1 at the training length, so stock logits exactly
        inputs = batch_inputs(items, tokenizer)
        with torch.no_grad():
            assert torch.equal(model(**inputs).logits, adapted(**inputs).logits)
    handle.remove()


def test_trained_demo_measure_runs_in_process(capsys):
    """The demo's per-run worker (normally in a spawned process) answers through the processor and generate(), and
    shows its own progress per question."""
    from longctx_adapter.demo.trained import DEMO_POOLING, _measure

    config = recommended_config().replace(pooling=DEMO_POOLING)
    threads = torch.get_num_threads()
    try:
        row = _measure("adapted+pooling", config.to_dict(), 16, 3, 0)
    finally:
        torch.set_num_threads(threads)  # the worker pins one thread (it normally owns its process)
    assert len(row["answers"]) == 3 and 0.0 <= row["accuracy"] <= 1.0
    assert row["visual_tokens_before"] == 16 * 16 + 1
    assert row["visual_tokens_after"] < row["visual_tokens_before"]
    assert row["kv_cache_bytes"] > 0
    assert "adapted+pooling: questions" in capsys.readouterr().err  # tqdm's line, question by question
