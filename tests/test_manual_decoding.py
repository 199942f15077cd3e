"""docs/manual-decoding.md: its Python blocks run as written, and its loop equals generate() on both families."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

from longctx_adapter import apply_adapter
from longctx_adapter.testing.tiny import hand_inputs, tiny_model
from longctx_adapter.testing.tiny_qwen import qwen_hand_inputs, qwen_tiny_model

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "manual-decoding.md"


def page_blocks() -> list[str]:
    blocks = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)
    assert len(blocks) >= 2, "the page shows the loop and an example run"
    return blocks


@pytest.fixture(scope="module")
def loop():
    namespace: dict = {}
    exec(compile(page_blocks()[0], str(PAGE), "exec"), namespace)
    return namespace["greedy_decode"]


def test_every_block_of_the_page_runs():
    """The page's own example: batches of two videos on LLaVA-OneVision and Qwen2-VL (padded), against generate."""
    namespace: dict = {}
    for block in page_blocks():
        exec(compile(block, str(PAGE), "exec"), namespace)


@pytest.mark.parametrize(
    "model_type, config",
    [
        ("llava", {"pooling": {"type": "progressive", "group": 1, "strides": [2]}}),
        ("llava_next_video", {"pooling": None, "rope": {"type": "yarn", "visual_window": 8, "scope": "all"}}),
        ("qwen2_5_vl", {"pooling": None}),
        ("qwen3_vl", {"pooling": {"type": "temporal", "kernel": 2, "stride": 2}}),
        ("qwen2_vl", {"rope": {"type": "yarn", "visual_window": 2, "scope": "visual"}}),
    ],
)
def test_the_loop_equals_generate(loop, model_type, config):
    """Left-padded rows (LLaVA frames as images, Qwen videos of different lengths), stock calls (no rewrite:
    last_attention_mask stays None), RoPE only, and frame-merging pooling."""
    if model_type.startswith("qwen"):
        model, inputs = qwen_tiny_model(model_type), qwen_hand_inputs(model_type, 8, batch=2, frame_counts=[8, 4])
    else:
        counts = [2, 1] if model_type == "llava" else None  # frames as images: rows of different lengths
        model, inputs = tiny_model(model_type), hand_inputs(model_type, 2, batch=2, frame_counts=counts, seed=3)
    with apply_adapter(model, **config) as handle:
        tokens = loop(model, handle, inputs, max_new_tokens=4)
        expected = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(tokens, expected[:, inputs["input_ids"].shape[1] :])
