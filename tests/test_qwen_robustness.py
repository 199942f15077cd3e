"""Issue 10 for the Qwen-VL family: dtypes, CPU/disk offload, state between calls, threads."""

from __future__ import annotations

import threading

import pytest
import torch
from helpers import cast_inputs

import longctx_adapter
from longctx_adapter import apply_adapter, get_adapter
from longctx_adapter.ops.pooling import count_tokens, normalize_pooling
from longctx_adapter.testing.tiny_qwen import QWEN_TINY_TYPES, qwen_hand_inputs, qwen_tiny_model

POOLING = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}
ROPE = {"type": "yarn", "visual_window": 1}  # temporal span in M-RoPE t positions: s > 1 on every class
CONFIG = {"pooling": POOLING, "rope": ROPE}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("model_type", QWEN_TINY_TYPES)
def test_adapted_qwen_in_dtype(model_type, dtype):
    model = qwen_tiny_model(model_type, seed=0, dtype=dtype)
    inputs = cast_inputs(qwen_hand_inputs(model_type, 4, batch=2, seed=1), dtype)
    seen = []
    spy = model.model.register_forward_pre_hook(
        lambda m, a, kw: (
            seen.extend(kw["mm_encoder_outputs"]["video"].pooler_output) if kw.get("mm_encoder_outputs") else None
        ),
        with_kwargs=True,
    )
    with torch.no_grad(), apply_adapter(model, CONFIG) as handle:
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        stats = handle.last_stats
    spy.remove()
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert all(f.dtype == dtype and f.device == logits.device for f in seen)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    for stat in stats:
        assert stat["tokens_after"] == count_tokens(*stat["grid"], normalize_pooling(POOLING))
        assert stat["rope_factor"] > 1


def test_qwen_cpu_disk_offload_matches_in_memory_model(tmp_path):
    model_type = "qwen2_vl"
    reference = qwen_tiny_model(model_type, seed=0)
    reference.save_pretrained(tmp_path / "ckpt")
    size = sum(p.numel() * p.element_size() for p in reference.parameters())
    inputs = qwen_hand_inputs(model_type, 4, batch=2, seed=2)
    with torch.no_grad(), apply_adapter(reference, CONFIG):
        expected = reference(**inputs).logits
        expected_gen = reference.generate(**inputs, max_new_tokens=3, do_sample=False)
    model = longctx_adapter.from_pretrained(
        tmp_path / "ckpt",
        adapter=CONFIG,
        device_map="auto",
        max_memory={"cpu": size // 2, "disk": 100 * size},
        offload_folder=str(tmp_path / "offload"),
    )
    assert "disk" in set(model.hf_device_map.values())
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), expected_gen)
    get_adapter(model).remove()


@pytest.mark.parametrize("model_type", QWEN_TINY_TYPES)
def test_no_state_leaks_between_qwen_calls(model_type):
    calls = [
        qwen_hand_inputs(model_type, 8, batch=1, seed=3),
        qwen_hand_inputs(model_type, 2, batch=2, seed=4),
        qwen_hand_inputs(model_type, 4, batch=2, frame_counts=[2, 4], seed=5),
    ]
    model = qwen_tiny_model(model_type, seed=0)

    def run(inputs):
        with torch.no_grad():
            return model(**inputs).logits, model.generate(**inputs, max_new_tokens=2, do_sample=False)

    fresh = []
    for inputs in calls:
        with apply_adapter(model, CONFIG):
            fresh.append(run(inputs))
    with apply_adapter(model, CONFIG):
        for order in (range(3), reversed(range(3))):
            for i in order:
                logits, gen = run(calls[i])
                assert torch.equal(logits, fresh[i][0]) and torch.equal(gen, fresh[i][1])


def test_two_adapted_qwen_models_in_two_threads():
    inputs = {t: qwen_hand_inputs(t, 4, batch=2, seed=6) for t in ("qwen2_vl", "qwen3_vl")}
    models = {t: qwen_tiny_model(t, seed=0) for t in inputs}
    handles = [apply_adapter(m, CONFIG) for m in models.values()]
    with torch.no_grad():
        sequential = {t: models[t](**inputs[t]).logits for t in inputs}
    results, errors = {}, []

    def work(t):
        try:
            for _ in range(3):
                with torch.no_grad():
                    results[t] = models[t](**inputs[t]).logits
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in inputs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    for h in handles:
        h.remove()
    assert not errors
    for t in inputs:
        assert torch.equal(results[t], sequential[t])
