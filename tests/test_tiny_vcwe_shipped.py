"""The shipped visual-window model (seed 0 of the experiment in docs/evidence.md): a small packaged HF folder that
loads, answers the sanity items at its training lengths (8-frame video, 664-word text), carries the configuration
chosen on the validation stream, and gains from it beyond its visual window on the items it was measured on."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from longctx_adapter.eval.synthetic_qa import TASKS, batch_inputs, make_item
from longctx_adapter.eval.synthetic_text import make_text_item, text_batch_inputs
from longctx_adapter.eval.train_tiny_vcwe import SHIPPED_DIR
from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration

import longctx_adapter
from longctx_adapter import AdapterConfig

TEST_STREAM = 44  # the evidence's test stream (never trained on)
ITEMS = 8  # per task


@pytest.fixture(scope="module")
def shipped():
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(SHIPPED_DIR, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(SHIPPED_DIR)


def _accuracy(model, tokenizer, items, inputs_fn) -> float:
    with torch.no_grad():
        logits = model(**inputs_fn(items, tokenizer), logits_to_keep=1).logits[:, -1]
    words = tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
    return sum(w == it.answer for w, it in zip(words, items)) / len(items)


def test_folder_is_small_documented_and_packaged():
    names = set(os.listdir(SHIPPED_DIR))
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "longctx_adapter.json",
            "train_summary.json"} <= names  # fmt: skip
    assert os.path.getsize(os.path.join(SHIPPED_DIR, "model.safetensors")) < 2**20
    with open(os.path.join(SHIPPED_DIR, "train_summary.json")) as f:
        args = json.load(f)["args"]
    assert args["max_frames"] == 8 and args["max_words"] == 664 and args["seed"] == 0
    if sys.version_info >= (3, 11):
        import tomllib

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "pyproject.toml"), "rb") as f:
            data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["longctx_adapter"]
        assert "models/tiny_video_lm_vcwe/*" in data


def test_answers_the_sanity_items_at_both_training_lengths(shipped):
    model, tokenizer = shipped
    video = [make_item(t, 8, TEST_STREAM, i) for t in TASKS for i in range(ITEMS)]
    text = [make_text_item(t, 664, TEST_STREAM, i) for t in TASKS for i in range(ITEMS)]
    assert _accuracy(model, tokenizer, video, batch_inputs) >= 23 / 24  # measured on 450 items: 99.1 %
    assert _accuracy(model, tokenizer, text, text_batch_inputs) >= 22 / 24  # measured: 99.3 %


def test_shipped_config_is_the_validation_choice_and_helps_at_8x(shipped):
    """The saved config is YaRN from the 129-token visual window with attention temperature; at 64 frames it must
    beat the stock model on the same items (measured on 450 test items: 89.1 % vs 79.1 %)."""
    model, tokenizer = shipped
    config = AdapterConfig.from_json(open(os.path.join(SHIPPED_DIR, "longctx_adapter.json")).read())
    assert config.pooling is None
    assert config.rope["visual_window"] == 129 and config.rope["attention_factor"] == "yarn"
    assert config.rope["scope"] == "all"
    items = [make_item(t, 64, TEST_STREAM, i) for t in TASKS for i in range(ITEMS)]
    stock = _accuracy(model, tokenizer, items, batch_inputs)
    with longctx_adapter.apply_adapter(model, config):
        adapted = _accuracy(model, tokenizer, items, batch_inputs)
    assert adapted > stock
