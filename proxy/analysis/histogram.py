"""Fixed log-spaced latency buckets: bounded memory whatever the traffic, 2 % wide.

Invariants
- A bucket holds the latencies above its lower edge and up to its upper edge; the first starts
  at 0 and the last, open bucket has no upper edge (anything slower than `HIGHEST`).
- Histograms hold weights (floats), not counts: each observation adds its request's weight.
- A confidence bound of a quantile is a bucket's outer edge, never its middle: the lower bound
  the lower edge, the upper bound the upper edge, so the 10 % width of a bucket can never make
  a bound cross a limit that the true quantiles do not (a bound beyond the observations, or in
  the open bucket, is no bound: None). The price is a bucket's width on each side, so buckets
  are narrow.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

GROWTH = 1.02  # (a bound gives up a bucket on each side: 2 % each, where 10 % cost ~20 %)
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
    """A representative latency of bucket `index`: the geometric middle of its bounds (for
    reports; bounds use the edges)."""
    if index == 0:
        return BOUNDS[0]
    if index >= len(BOUNDS):
        return BOUNDS[-1]
    return math.sqrt(BOUNDS[index - 1] * BOUNDS[index])


def lower_edge(index: int) -> float:
    """The lowest latency bucket `index` may hold."""
    return 0.0 if index == 0 else BOUNDS[index - 1]


def upper_edge(index: int) -> float | None:
    """The highest latency bucket `index` may hold; None for the open last bucket."""
    return BOUNDS[index] if index < len(BOUNDS) else None


def cumulative(weights: Sequence[float]) -> list[float]:
    """The running weight up to each bucket (what the functions below read; make it once per
    histogram when asking several levels)."""
    return list(itertools.accumulate(weights))


def index_at(weights: Sequence[float], level: float) -> int | None:
    """The bucket holding the `level` share of the observations' weight, counted from the
    fastest (the first bucket whose running weight reaches it); None when the level lies beyond
    the observations (above 1) or there are none."""
    return level_index(cumulative(weights), level)


def level_index(running: Sequence[float], level: float) -> int | None:
    """`index_at` on a histogram's `cumulative` weights."""
    total = running[-1] if running else 0.0
    if total <= 0.0 or level > 1.0:
        return None
    # (a tiny tolerance: a level of exactly 1 is the last observation, not beyond it)
    index = bisect.bisect_left(running, max(level, 0.0) * total * (1.0 - 1e-12))
    return min(index, len(running) - 1)


def quantile(weights: Sequence[float], q: float, running: Sequence[float] | None = None) -> float:
    """The `q`-quantile of the observations, as a bucket's middle (for reports); `running`,
    their `cumulative` weights if already made."""
    index = level_index(cumulative(weights) if running is None else running, q)
    if index is None:
        raise ValueError("empty histogram")
    return value_of(index)


def quantile_bounds(
    weights: Sequence[float],
    q: float,
    below: float,
    above: float,
    running: Sequence[float] | None = None,
) -> tuple[float, float | None]:
    """A confidence interval of the `q`-quantile: the lower edge of the bucket at level
    `q - below` and the upper edge of the one at `q + above`, with `below` and `above` the
    spreads of the empirical distribution function at the quantile (see `checks.latency_check`).
    The upper bound is None when its level lies beyond the observations or in the open bucket:
    then there are too few of them to bound the quantile from above. `running`: the
    `cumulative` weights, if already made."""
    cumulated = cumulative(weights) if running is None else running
    if q - below <= 0.0:
        low = 0.0
    else:
        index = level_index(cumulated, q - below)
        low = 0.0 if index is None else lower_edge(index)
    high_index = level_index(cumulated, q + above)
    return low, None if high_index is None else upper_edge(high_index)
