"""`grayscale selftest`'s simulated traffic: the world every scenario shares, how the candidate
differs in each scenario, and each interval's requests of every run, drawn in bulk (the variant
by a draw at the share, errors, log-normal latencies into the analysis's latency buckets,
conversions) and tallied run by run.

Invariants:
- Seeded: the same world, scenario, runs and seed draw the same requests.
- Every run has the same number of requests in an interval (the fraction of a request left over
  carries to the next interval); a latency lands in the band of buckets a draw can reach.
- A tally's `level` is the bucket holding its `q` level of latencies, kept as draws come and go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from proxy.analysis.histogram import BOUNDS, SIZE, bucket_of

ERROR_RATE = 0.01  # both variants' errors when equal
MEDIAN = 0.05  # seconds: the latency's median (log-normal)
SIGMA = 0.5  # of the latency's logarithm
INCIDENT = 600.0  # seconds that an incident (`World.incident`) lasts, a third into each run
_BOUNDS = np.array(BOUNDS)

Ints = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class World:
    """What every scenario's traffic shares: requests a second (both variants), the candidate's
    share, both variants' error rate, an incident on both (its error rate, for `INCIDENT`
    seconds from a third into each run), the chance that a request converts (for the outcome
    checks `per: request`), and heavy users (Pareto shape, how many)."""

    rate: float = 10.0
    share: float = 0.1
    error_rate: float = ERROR_RATE
    incident: float | None = None
    outcome_rate: float | None = None
    users_tail: float | None = None
    users: int = 1000


@dataclass(frozen=True, slots=True)
class Scenario:
    """How the candidate differs from stable, from `onset` seconds into the run on: more
    errors, slower, fewer conversions (an absolute fall of their rate). `unseen` says why the
    route cannot catch it, if it cannot (then it is not simulated)."""

    name: str
    extra_errors: float = 0.0
    slowdown: float = 1.0
    conversion_drop: float = 0.0
    onset: float = 0.0
    unseen: str | None = None


class Draws(NamedTuple):
    """One interval's requests of one variant in every run: how many, errors, conversions, and
    each successful request's run and latency bucket (within the band)."""

    requests: Ints
    errors: Ints
    conversions: Ints
    rows: Ints
    buckets: Ints


class Tallies:
    """One variant's counts in every run (over a window, since the start, or in the current
    epoch): requests, errors, conversions and latency buckets (within the band of buckets the
    simulation can reach), with the bucket that holds each run's `q` level of latencies kept as
    draws come and go (`histogram.level_index`, run by run: no pass over every bucket)."""

    def __init__(self, runs: int, width: int, q: float):
        self.requests: Ints = np.zeros(runs, np.int64)
        self.errors: Ints = np.zeros(runs, np.int64)
        self.conversions: Ints = np.zeros(runs, np.int64)
        self.latency: Ints = np.zeros((runs, width), np.int64)
        self.latencies: Ints = np.zeros(runs, np.int64)
        self._index: Ints = np.zeros(runs, np.int64)
        self._below: Ints = np.zeros(runs, np.int64)  # latencies in buckets below `_index`
        self._q = q
        self._runs = np.arange(runs)

    def add(self, draws: Draws, sign: int = 1) -> None:
        """Count `draws` in (or, with `sign` -1, out of) every run."""
        runs = len(self.requests)
        self.requests += sign * draws.requests
        self.errors += sign * draws.errors
        self.conversions += sign * draws.conversions
        np.add.at(self.latency, (draws.rows, draws.buckets), sign)
        self.latencies += sign * np.bincount(draws.rows, minlength=runs)
        lower = draws.buckets < self._index[draws.rows]
        self._below += sign * np.bincount(draws.rows[lower], minlength=runs)
        target = self._q * self.latencies * (1.0 - 1e-12)
        last = self.latency.shape[1] - 1
        while True:  # (the first bucket whose running count reaches the target)
            up = (self._below + self.latency[self._runs, self._index] < target) & (
                self._index < last
            )
            if not up.any():
                break
            self._below[up] += self.latency[up, self._index[up]]
            self._index[up] += 1
        while True:
            down = (self._below >= target) & (self._index > 0)
            if not down.any():
                break
            self._index[down] -= 1
            self._below[down] -= self.latency[down, self._index[down]]

    def clear(self, rows: NDArray[np.bool_]) -> None:
        """Start `rows` anew (an epoch that ended)."""
        for counts in (self.requests, self.errors, self.conversions, self.latencies):
            counts[rows] = 0
        self.latency[rows] = 0
        self._index[rows] = self._below[rows] = 0

    @property
    def level(self) -> Ints:
        """Each run's bucket (within the band) holding the `q` level of its latencies; -1
        without latencies."""
        return np.where(self.latencies > 0, self._index, -1)


def _band(scenario: Scenario) -> tuple[int, int]:
    """The first and last latency bucket a draw can reach (beyond 7 sigma: never)."""
    reach = math.exp(7.0 * SIGMA)
    low = MEDIAN / reach
    high = MEDIAN * max(scenario.slowdown, 1.0) * reach
    return bucket_of(low), min(bucket_of(high), SIZE - 1)


class Traffic:
    """Each interval's draws of a scenario, for every run."""

    def __init__(self, world: World, scenario: Scenario, runs: int, seed: int, horizon: float):
        self._rng = np.random.default_rng(seed)
        self._world, self._scenario, self._runs = world, scenario, runs
        self.lo, self.hi = _band(scenario)
        self._incident = (horizon / 3.0, horizon / 3.0 + INCIDENT)
        self._carry = 0.0

    def draw(self, begin: float, interval: float) -> tuple[int, Draws, Draws]:
        """How many requests both variants had in the interval from `begin` (the same in every
        run), and stable's and the candidate's draws."""
        world, scenario, rng, runs = self._world, self._scenario, self._rng, self._runs
        wanted = world.rate * interval + self._carry
        n = int(wanted)
        self._carry = wanted - n
        to_candidate = rng.binomial(n, world.share, runs)
        base = world.error_rate
        if world.incident is not None and self._incident[0] <= begin < self._incident[1]:
            base = world.incident
        changed = begin >= scenario.onset
        found = []
        for side, requests in enumerate((n - to_candidate, to_candidate)):
            worse = side == 1 and changed
            error_rate = min(1.0, base + (scenario.extra_errors if worse else 0.0))
            errors = rng.binomial(requests, error_rate)
            fine = requests - errors
            slowdown = scenario.slowdown if worse else 1.0
            drawn = MEDIAN * slowdown * np.exp(SIGMA * rng.standard_normal(int(fine.sum())))
            buckets = np.clip(np.searchsorted(_BOUNDS, drawn, side="left"), self.lo, self.hi)
            conversions = np.zeros(runs, np.int64)
            if world.outcome_rate is not None:
                chance = world.outcome_rate - (scenario.conversion_drop if worse else 0.0)
                conversions = rng.binomial(requests, max(chance, 0.0))
            rows = np.repeat(np.arange(runs), fine)
            found.append(Draws(requests, errors, conversions, rows, buckets - self.lo))
        return n, found[0], found[1]
