"""The workloads the benchmarks time, shared by the pytest-benchmark suites and `report.py`.

(a) prefill: one forward over the whole prompt of a tiny random LLaVA-OneVision (hand-built inputs, 128 frames),
    as `generate` runs it before decoding (`use_cache=True`, `logits_to_keep=1`): stock vs the adapter with pooling
    off. Two adapted variants (OVERHEAD_VARIANTS): everything off (`pooling=None, rope=None`: the call path alone),
    and `pooling=None` on top of the family preset, which keeps the preset's visual YaRN hooks installed (at 2,049
    visual tokens s = 2049 / 6272 < 1, so they leave every rotation stock but still run).
(b) pooling: `progressive_pool` (group 4, strides [2, 8], bilinear) on a (128, 27, 27, 896) float32 grid, the
    real LLaVA-OneVision-0.5B SigLIP grid and width, vs one `clone()` of the same tensor.
"""

from __future__ import annotations

import torch

from longctx_adapter.ops.pooling import progressive_pool
from longctx_adapter.testing.tiny import hand_inputs, tiny_model

MODEL_TYPE = "llava_onevision"
FRAMES = 128
POOL_SHAPE = (128, 27, 27, 896)
POOL_GROUP, POOL_STRIDES, POOL_MODE = 4, [2, 8], "bilinear"
#: label -> apply_adapter keyword overrides (on top of the family preset)
OVERHEAD_VARIANTS = {
    "pooling=None, rope=None": {"pooling": None, "rope": None},
    "pooling=None (preset rope hooks)": {"pooling": None},
}


def prefill_case(frames: int = FRAMES, device: str = "cpu", seed: int = 0):
    """(model, inputs): the tiny random model and one video of `frames` frames, batch 1."""
    model = tiny_model(MODEL_TYPE, seed=seed).to(device)
    inputs = {k: v.to(device) for k, v in hand_inputs(MODEL_TYPE, frames, batch=1, seed=seed + 1).items()}
    return model, inputs


def prefill(model, inputs):
    with torch.inference_mode():
        return model(**inputs, use_cache=True, logits_to_keep=1)


def pooling_grid(shape=POOL_SHAPE, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device)


def pool(grid: torch.Tensor):
    return progressive_pool(grid, POOL_GROUP, POOL_STRIDES, POOL_MODE)


def clone(grid: torch.Tensor) -> torch.Tensor:
    return grid.clone()
