"""Fixed log-spaced latency buckets: bounded memory whatever the traffic, ~5 % resolution."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

GROWTH = 1.1
LOWEST = 0.0005  # seconds
HIGHEST = 300.0
# Upper bounds of the buckets; a last, open bucket catches anything slower.
BOUNDS: tuple[float, ...] = tuple(
    LOWEST * GROWTH**i for i in range(math.ceil(math.log(HIGHEST / LOWEST, GROWTH)) + 1)
)
SIZE = len(BOUNDS) + 1


def bucket_of(seconds: float) -> int:
    """The bucket index of a latency."""
    return bisect.bisect_left(BOUNDS, seconds)


def value_of(index: int) -> float:
    """A representative latency of bucket `index`: the geometric middle of its bounds."""
    if index == 0:
        return BOUNDS[0]
    if index >= len(BOUNDS):
        return BOUNDS[-1]
    return math.sqrt(BOUNDS[index - 1] * BOUNDS[index])


def value_at_rank(counts: Sequence[int], rank: int) -> float:
    """The latency of the `rank`-th smallest observation (1-based, clamped to the sample)."""
    running = list(itertools.accumulate(counts))  # observations up to each bucket
    if not running or running[-1] == 0:
        raise ValueError("empty histogram")
    rank = min(max(rank, 1), running[-1])
    return value_of(bisect.bisect_left(running, rank))  # the first bucket holding that rank


def quantile(counts: Sequence[int], q: float) -> float:
    """The `q`-quantile of the observations (nearest rank)."""
    return value_at_rank(counts, math.ceil(q * sum(counts)))


def quantile_bounds(counts: Sequence[int], q: float, z: float) -> tuple[float, float]:
    """A distribution-free confidence interval of the `q`-quantile.

    The number of observations below the true quantile is Binomial(n, q); the order statistics
    at ranks ``n·q ∓ z·sqrt(n·q·(1-q))`` bracket the quantile with the confidence that `z`
    stands for on each side (normal approximation of the binomial).
    """
    n = sum(counts)
    spread = z * math.sqrt(n * q * (1 - q))
    low = value_at_rank(counts, math.floor(n * q - spread))
    high = value_at_rank(counts, math.ceil(n * q + spread) + 1)
    return low, high
