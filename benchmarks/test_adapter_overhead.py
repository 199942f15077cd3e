"""Adapter overhead with pooling off: prefill of a tiny LLaVA-OneVision at 128 frames, stock vs adapted.

Goal: < 1 % (read the ratio from `python benchmarks/report.py`, which interleaves the variants; nothing here
asserts a time). Not part of `make test`: run `make bench`.
"""

from __future__ import annotations

import pytest
import torch
from cases import FRAMES, OVERHEAD_VARIANTS, prefill, prefill_case

from longctx_adapter import apply_adapter, get_adapter


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    return prefill_case(FRAMES)


@pytest.mark.benchmark(group=f"prefill, tiny random llava_onevision, {FRAMES} frames", warmup=True)
@pytest.mark.parametrize("variant", ["stock", *OVERHEAD_VARIANTS])
def test_prefill(benchmark, case, variant):
    model, inputs = case
    handle = apply_adapter(model, **OVERHEAD_VARIANTS[variant]) if variant != "stock" else None
    try:
        assert get_adapter(model) is handle  # the variant under test is the one installed
        output = benchmark(prefill, model, inputs)
    finally:
        if handle is not None:
            handle.remove()
    assert output.logits.shape[1] == 1
