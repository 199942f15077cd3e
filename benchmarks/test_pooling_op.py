"""Progressive pooling (group 4, strides [2, 8], bilinear) on a (128, 27, 27, 896) float32 grid vs one clone().

Goal: pooling <= 2x clone (read the ratio from `python benchmarks/report.py`; nothing here asserts a time).
Not part of `make test`: run `make bench`.
"""

from __future__ import annotations

import pytest
from cases import POOL_SHAPE, clone, pool, pooling_grid

GROUP = "progressive pool vs clone, {} float32".format("x".join(map(str, POOL_SHAPE)))


@pytest.fixture(scope="module")
def grid():
    return pooling_grid()


@pytest.mark.benchmark(group=GROUP, warmup=True)
def test_clone(benchmark, grid):
    out = benchmark(clone, grid)
    assert out.shape == grid.shape


@pytest.mark.benchmark(group=GROUP, warmup=True)
def test_progressive_pool(benchmark, grid):
    out = benchmark(pool, grid)
    assert out.num_tokens == 32 * 14 * 14 + 96 * 4 * 4  # 128 frames: 32 at stride 2, 96 at stride 8
