"""Small exact statistics for accuracy tables: Wilson intervals and the exact (binomial) McNemar test.

Written here rather than taken from scipy: each is a few lines of ``math``, and the evaluation extra stays free of a
60 MB dependency. ``tests/test_evidence.py`` checks both against independent references (brute-force enumeration of
the binomial, the closed-form Wilson bounds' defining equation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["wilson_interval", "mcnemar_exact", "binomial_two_sided"]


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default); ``(0, 1)`` when ``n == 0``.

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 % or 100 %.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 % and 100 % the bound is exactly 0 or 1 (the formula gives it up to rounding)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def binomial_two_sided(k: int, n: int) -> float:
    """Two-sided exact p-value of ``k`` successes in ``n`` fair coin flips: twice the smaller tail, capped at 1."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def mcnemar_exact(first: Sequence[bool | int], second: Sequence[bool | int]) -> dict:
    """Exact McNemar test of two paired 0/1 outcome lists on the same items.

    ``only_first`` = items the first got right and the second wrong, ``only_second`` the reverse; under the null
    hypothesis (same accuracy) each discordant item is a fair coin, so the p-value is the two-sided binomial one.
    """
    if len(first) != len(second):
        raise ValueError(f"paired outcomes need equal lengths, got {len(first)} and {len(second)}")
    only_first = sum(1 for a, b in zip(first, second) if a and not b)
    only_second = sum(1 for a, b in zip(first, second) if b and not a)
    return {
        "only_first": only_first,
        "only_second": only_second,
        "p": binomial_two_sided(only_first, only_first + only_second),
    }
