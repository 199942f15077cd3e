"""The adapter under transformers' offloaded KV cache (`cache_implementation="offloaded"`). CUDA only.

The offloaded cache is a DynamicCache that moves each layer's keys and values to host memory after the layer's
update and prefetches the next layer back on a side stream; on CPU transformers fails with a CUDA driver error, so
every test here is skipped without CUDA and runs in `make gpu-check` (benchmarks/gpu_check.py). They mirror the
quantized-cache tests: references run under the same cache, so the comparisons are exact where the devices agree.
The hand-pooled reference is built on a CPU twin of the model (tests/reference.py builds CPU tensors), with TF32 off
so CPU and CUDA float32 agree to rounding.
"""

from __future__ import annotations

import pytest
import torch
from reference import reference_embeds

from longctx_adapter import AdapterConfig, apply_adapter
from longctx_adapter.testing.tiny import hand_inputs, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the offloaded KV cache needs a CUDA device")

POOLING = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}
ROPE = {"type": "yarn", "visual_window": 8, "scope": "all"}
NEW = 5
MODEL_TYPE = "llava_onevision"
OFFLOADED = {"cache_implementation": "offloaded"}


@pytest.fixture(scope="module", autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def cpu_model():
    return tiny_model(MODEL_TYPE)


@pytest.fixture(scope="module")
def model():
    return tiny_model(MODEL_TYPE).cuda()


@pytest.fixture(scope="module")
def cpu_inputs():
    return hand_inputs(MODEL_TYPE, 4, seed=1)


@pytest.fixture(scope="module")
def inputs(cpu_inputs):
    return {k: v.cuda() for k, v in cpu_inputs.items()}


def _generate(model, cache: dict, **inputs):
    out = model.generate(**inputs, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                         return_dict_in_generate=True, output_scores=True, **cache)  # fmt: skip
    if cache:
        assert getattr(out.past_key_values, "offloading", False), type(out.past_key_values)
        assert any(layer.keys.device.type == "cpu" for layer in out.past_key_values.layers), "nothing was offloaded"
    return out


def _hand_pooled(cpu_model, cpu_inputs):
    embeds, mask, _ = reference_embeds(cpu_model, MODEL_TYPE, cpu_inputs, POOLING, [4])
    return embeds.cuda(), mask.cuda()


def test_features_off_equals_stock_under_the_offloaded_cache(model, inputs):
    with torch.inference_mode():
        stock = _generate(model, OFFLOADED, **inputs)
        with apply_adapter(model, AdapterConfig()):
            adapted = _generate(model, OFFLOADED, **inputs)
    assert torch.equal(adapted.sequences, stock.sequences)
    for a, s in zip(adapted.scores, stock.scores):
        assert torch.equal(a, s)


def test_pooled_equals_stock_fed_hand_pooled_features_under_the_offloaded_cache(model, cpu_model, inputs, cpu_inputs):
    prompt = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        embeds, mask = _hand_pooled(cpu_model, cpu_inputs)
        reference = _generate(model, OFFLOADED, inputs_embeds=embeds, attention_mask=mask)
        with apply_adapter(model, AdapterConfig(pooling=POOLING)) as handle:
            adapted = _generate(model, OFFLOADED, **inputs)
    assert handle.last_stats[0]["tokens_after"] != handle.last_stats[0]["tokens_before"]
    assert torch.equal(adapted.sequences[:, prompt:], reference.sequences)
    for a, r in zip(adapted.scores, reference.scores):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_rope_extended_and_chunked_runs_equal_the_dynamic_cache(model, inputs):
    """Offloading only moves tensors between devices, so a pooled, RoPE-extended run (one-pass or chunked
    prefill) gives what the same run gives with the cache kept on the device."""
    config = AdapterConfig(pooling=POOLING, rope=ROPE)
    with torch.inference_mode(), apply_adapter(model, config) as handle:
        for chunk in (None, 7):
            on_device = _generate(model, {}, **inputs, prefill_chunk_size=chunk)
            offloaded = _generate(model, OFFLOADED, **inputs, prefill_chunk_size=chunk)
            assert torch.equal(offloaded.sequences, on_device.sequences)
            for o, d in zip(offloaded.scores, on_device.scores):
                torch.testing.assert_close(o, d)
    assert handle.last_stats[0]["rope_factor"] and handle.last_stats[0]["rope_factor"] > 1


def test_continuation_from_an_offloaded_cache(model, cpu_model, inputs, cpu_inputs):
    """Continuing from the adapted run's offloaded cache equals the stock model continuing its own hand-pooled run
    from its offloaded cache."""
    more = torch.tensor([[7, 8, 9]], device="cuda")
    with torch.inference_mode():
        embeds, mask = _hand_pooled(cpu_model, cpu_inputs)
        ref_first = _generate(model, OFFLOADED, inputs_embeds=embeds, attention_mask=mask)
        ref_embeds = torch.cat([embeds, model.get_input_embeddings()(torch.cat([ref_first.sequences, more], 1))], 1)
        ref_mask = torch.ones(1, ref_embeds.shape[1], dtype=torch.long, device="cuda")
        ref_ids = torch.zeros(1, ref_embeds.shape[1], dtype=torch.long, device="cuda")
        ref_next = model.generate(inputs_embeds=ref_embeds, input_ids=ref_ids, attention_mask=ref_mask,
                                  cache=ref_first.past_key_values, max_new_tokens=3, min_new_tokens=3,
                                  do_sample=False)  # fmt: skip
        with apply_adapter(model, AdapterConfig(pooling=POOLING)):
            first = _generate(model, OFFLOADED, **inputs)
            ids = torch.cat([first.sequences, more], 1)
            grow = ids.shape[1] - inputs["input_ids"].shape[1]
            mask = torch.cat([inputs["attention_mask"], torch.ones(1, grow, dtype=torch.long, device="cuda")], 1)
            continued = model.generate(input_ids=ids, attention_mask=mask, cache=first.past_key_values,
                                       max_new_tokens=3, min_new_tokens=3, do_sample=False)  # fmt: skip
    assert torch.equal(continued[:, : ids.shape[1]], ids)
    assert torch.equal(continued[:, ids.shape[1] :], ref_next[:, -3:])
