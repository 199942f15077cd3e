"""The adapter under transformers' quantized KV cache (`cache_implementation="quantized"`).

References run under the same cache: the stock model (features off) and the stock model fed hand-pooled features
(pooling on), so quantization error is the same on both sides and the comparison is exact. The optional backends
(`pip install longctx-adapter[kv]`: hqq, optimum-quanto) are skipped with the reason when absent (both are in the dev extra, so CI runs them).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from reference import reference_embeds

from longctx_adapter import AdapterConfig, apply_adapter
from longctx_adapter.testing.tiny import hand_inputs, tiny_model

NEEDS_HQQ = pytest.mark.skipif(importlib.util.find_spec("hqq") is None, reason="hqq not installed (extra [kv])")
NEEDS_QUANTO = pytest.mark.skipif(
    importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.quanto") is None,
    reason="optimum-quanto not installed (extra [kv])",
)
POOLING = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}
NEW = 5
MODEL_TYPE = "llava_onevision"  # tiny: 2 KV heads x head_dim 16, so q_group_size 16 divides every cache tensor


def quantized(backend: str, nbits: int = 4) -> dict:
    # residual_length 1: every step re-quantizes, so decoding really reads quantized keys and values
    config = {"backend": backend, "nbits": nbits, "q_group_size": 16, "residual_length": 1}
    return {"cache_implementation": "quantized", "cache_config": config}


@pytest.fixture(scope="module")
def model():
    return tiny_model(MODEL_TYPE)


@pytest.fixture(scope="module")
def inputs():
    return hand_inputs(MODEL_TYPE, 4, seed=1)


def _generate(model, cache, **inputs):
    out = model.generate(**inputs, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                         return_dict_in_generate=True, output_scores=True, **cache)  # fmt: skip
    assert type(out.past_key_values).__name__ == "QuantizedCache"
    return out


@pytest.mark.parametrize("backend", [pytest.param("hqq", marks=NEEDS_HQQ), pytest.param("quanto", marks=NEEDS_QUANTO)])
def test_features_off_equals_stock_under_the_same_cache(model, inputs, backend):
    cache = quantized(backend)
    with torch.inference_mode():
        stock = _generate(model, cache, **inputs)
        with apply_adapter(model, AdapterConfig()):
            adapted = _generate(model, cache, **inputs)
    assert torch.equal(adapted.sequences, stock.sequences)
    for a, s in zip(adapted.scores, stock.scores):
        assert torch.equal(a, s)


@pytest.mark.parametrize("backend", [pytest.param("hqq", marks=NEEDS_HQQ), pytest.param("quanto", marks=NEEDS_QUANTO)])
@pytest.mark.parametrize("nbits", [4, 2])
def test_pooled_equals_stock_fed_hand_pooled_features_under_the_same_cache(model, inputs, nbits, backend):
    cache = quantized(backend, nbits)
    prompt = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        embeds, mask, _ = reference_embeds(model, MODEL_TYPE, inputs, POOLING, [4])
        reference = _generate(model, cache, inputs_embeds=embeds, attention_mask=mask)
        with apply_adapter(model, AdapterConfig(pooling=POOLING)) as handle:
            adapted = _generate(model, cache, **inputs)
    assert handle.last_stats[0]["tokens_after"] != handle.last_stats[0]["tokens_before"]
    assert torch.equal(adapted.sequences[:, prompt:], reference.sequences)
    for a, r in zip(adapted.scores, reference.scores):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


@NEEDS_HQQ
def test_rope_extended_run_prefills_exactly_and_decodes_close_to_the_full_precision_cache(model, inputs):
    """The quantized cache hands the layer its own full-precision keys on the first update, so the first token's
    scores equal the DynamicCache run's bit for bit; later steps read 4-bit keys and stay close."""
    config = AdapterConfig(pooling=POOLING, rope={"type": "yarn", "visual_window": 8, "scope": "all"})
    with torch.inference_mode(), apply_adapter(model, config) as handle:
        dynamic = model.generate(**inputs, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                 return_dict_in_generate=True, output_scores=True)  # fmt: skip
        quant = _generate(model, quantized("hqq"), **inputs)
        chunked = _generate(model, quantized("hqq"), **inputs, prefill_chunk_size=7)
    assert handle.last_stats[0]["rope_factor"] and handle.last_stats[0]["rope_factor"] > 1
    assert torch.equal(quant.scores[0], dynamic.scores[0])
    for q, d in zip(quant.scores[1:], dynamic.scores[1:]):
        assert (q.softmax(-1) - d.softmax(-1)).abs().max() < 0.05
    # chunked prefill under the quantized cache: later chunks attend to de-quantized keys, so it is close, not equal
    assert chunked.sequences.shape == quant.sequences.shape
    torch.testing.assert_close(chunked.scores[0].softmax(-1), quant.scores[0].softmax(-1), rtol=0, atol=0.05)


@pytest.mark.parametrize("backend", [pytest.param("hqq", marks=NEEDS_HQQ), pytest.param("quanto", marks=NEEDS_QUANTO)])
def test_continuation_from_a_quantized_cache(model, inputs, backend):
    """Continuing from the adapted run's quantized cache equals the stock model continuing its own hand-pooled run
    from its quantized cache: the cache lines up with the caller's (stock-length) ids."""
    cache = quantized(backend)
    more = torch.tensor([[7, 8, 9]])
    with torch.inference_mode():
        embeds, mask, _ = reference_embeds(model, MODEL_TYPE, inputs, POOLING, [4])
        ref_first = _generate(model, cache, inputs_embeds=embeds, attention_mask=mask)
        ref_embeds = torch.cat([embeds, model.get_input_embeddings()(torch.cat([ref_first.sequences, more], 1))], 1)
        ref_mask = torch.ones(1, ref_embeds.shape[1], dtype=torch.long)
        ref_ids = torch.zeros(1, ref_embeds.shape[1], dtype=torch.long)
        ref_next = model.generate(inputs_embeds=ref_embeds, input_ids=ref_ids, attention_mask=ref_mask,
                                  cache=ref_first.past_key_values, max_new_tokens=3, min_new_tokens=3,
                                  do_sample=False)  # fmt: skip
        with apply_adapter(model, AdapterConfig(pooling=POOLING)):
            first = _generate(model, cache, **inputs)
            ids = torch.cat([first.sequences, more], 1)
            grow = ids.shape[1] - inputs["input_ids"].shape[1]
            mask = torch.cat([inputs["attention_mask"], torch.ones(1, grow, dtype=torch.long)], 1)
            continued = model.generate(input_ids=ids, attention_mask=mask, cache=first.past_key_values,
                                       max_new_tokens=3, min_new_tokens=3, do_sample=False)  # fmt: skip
    assert type(first.past_key_values).__name__ == "QuantizedCache"
    assert torch.equal(continued[:, : ids.shape[1]], ids)
    assert torch.equal(continued[:, ids.shape[1] :], ref_next[:, -3:])


@NEEDS_HQQ
@pytest.mark.parametrize("nbits", [4, 2])
def test_the_estimators_quantized_kv_term_equals_the_bytes_the_cache_holds(model, inputs, nbits):
    from longctx_adapter.profiling.estimate import quantized_kv_bytes_per_token

    with torch.inference_mode():
        out = _generate(model, quantized("hqq", nbits), **inputs)
    held, tokens = 0, None
    for layer in out.past_key_values.layers:
        for packed, meta in (layer._quantized_keys, layer._quantized_values):
            held += packed.numel() * packed.element_size()
            held += sum(meta[k].numel() * meta[k].element_size() for k in ("scale", "zero"))
            tokens = meta["shape"][-2]
    per_token = quantized_kv_bytes_per_token(model.config, nbits, model.dtype, group=16)
    assert held == per_token * tokens
    # the profiler's reading of a cache counts the quantized part and the full-precision residual window
    from longctx_adapter.profiling.profiler import kv_cache_bytes

    residual = sum(t.numel() * t.element_size() for layer in out.past_key_values.layers for t in (layer.keys, layer.values))
    assert kv_cache_bytes(out.past_key_values) == held + residual


@NEEDS_QUANTO
@pytest.mark.parametrize("nbits", [4, 2])
def test_profiler_counts_a_quanto_cache_by_its_packed_storage(nbits):
    """quanto's quantized tensors are wrapper subclasses that report their logical dtype's size; the profiler's
    KV-bytes count reads the tensors they flatten to: packed bits plus a scale and a shift per group."""
    from transformers.cache_utils import QuantoQuantizedLayer

    from longctx_adapter.profiling.profiler import _tensor_bytes

    layer = QuantoQuantizedLayer(nbits=nbits, q_group_size=16, residual_length=1)
    keys = torch.randn(1, 2, 64, 16, dtype=torch.bfloat16)
    layer.update(keys, keys.clone())
    values, groups = keys.numel(), keys.numel() // 16
    assert _tensor_bytes(layer._quantized_keys) == values * nbits // 8 + 2 * groups * keys.element_size()
    assert _tensor_bytes(keys) == values * 2
