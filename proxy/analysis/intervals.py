"""Confidence bounds of weighted means: the statistics under every bounded check.

Variances. Each variant's weighted mean has the linearised variance of a Hajek estimator,
``sum w² (y - mean)² / (sum w)²``, with two safeguards: an observation's variance is taken
with two observations added at each end of the values' range (Agresti and Coull; a variant
whose few observations hold no event does not look certain; see `spreads`), and it is
multiplied by the variant's design effect (`verdict.Clustering`): requests
of one user are correlated, and the user, not the request, is what is assigned. A bound is the
estimate less `sequential.margin`: z standard errors plus Bernstein's correction for skewed
means of rare events, with z always-valid (`method: sequential`) or fixed (`method: fixed`).

Invariants:
- Pure: numbers in, numbers out; no I/O, no clock.
- An observation's variance is never below the variant's own (`spreads`): the observations
  added at the ends only widen a bound.
- Each of a check's bounds spends the check's whole share of the error rate (`Bounds.alpha`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import NamedTuple

from proxy.analysis.sequential import margin, z_always
from proxy.config.model import AnalysisMethod


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


class Spread(NamedTuple):
    """How a variant's weighted mean varies: `variance` (of the mean, with the design effect),
    `per_observation` (one observation's, with the design effect: at n0 of them the mean's
    variance is this over n0), and how far one observation can lift the mean above its value
    (`up`) or drag it below (`down`): Bernstein's scales (rare events lift a mean a long way and
    drag it a little)."""

    variance: float
    per_observation: float
    up: float
    down: float


class Sums(NamedTuple):
    """A variant's weighted sums for one mean: of w, w², w·y, w²·y, w²·y²."""

    weight: float
    weight2: float
    total: float
    total2: float
    squares2: float

    @property
    def mean(self) -> float:
        return self.total / self.weight

    def squared_deviations(self, centre: float) -> float:
        """sum w² (y - centre)², never below 0 (rounding)."""
        return max(self.squares2 - 2.0 * centre * self.total2 + centre * centre * self.weight2, 0.0)


PSEUDO = 2.0  # observations added at each end of a mean's range for its variance (see spreads)


def spreads(
    stable: Sums,
    candidate: Sums,
    limits: tuple[float, float],
    effects: tuple[float, float],
    pseudo: float,
) -> tuple[Spread, Spread]:
    """Stable's and the candidate's `Spread` of their weighted means of values within `limits`,
    with their design effects `effects`.

    An observation's variance is the variant's own with `pseudo` observations added at each end
    of `limits` (Agresti and Coull's "add two successes and two failures"): a variant whose few
    observations hold no event does not look certain (0 errors in 100 requests are taken for
    about 2 %), while plentiful data keeps its own variance (a stable whose thousands of
    requests are well measured is not made noisier). The skew of few events is Bernstein's
    correction's part (`sequential.margin`)."""
    low, high = limits
    found = []
    for sums, effect in zip((stable, candidate), effects, strict=True):
        size = sums.weight**2 / sums.weight2  # the effective number of observations
        mean = sums.mean
        own = sums.squared_deviations(mean) / sums.weight2
        centre = (size * mean + pseudo * (low + high)) / (size + 2.0 * pseudo)
        added = (
            size * (own + (mean - centre) ** 2)
            + pseudo * ((low - centre) ** 2 + (high - centre) ** 2)
        ) / (size + 2.0 * pseudo)
        per_observation = max(own, added) * effect  # design effect in
        ratio = 1.0 / size  # (sum w² / (sum w)²: the mean's variance per observation's)
        up, down = max(high - mean, 0.0) * ratio, max(mean - low, 0.0) * ratio
        found.append(Spread(per_observation * ratio, per_observation, up, down))
    return found[0], found[1]


@dataclass(frozen=True, slots=True)
class Bounds:
    """How bounds are made in one verdict: the method, `min_requests` (n0), and the share of the
    error rate each check may spend."""

    method: AnalysisMethod
    n0: int
    alpha: float
    scope: str = "window"  # what the checks judge (`verdict.Check.scope`)

    def z(self, information: float, alpha: float | None = None) -> float:
        """The factor of the standard error: always-valid at `information` (a sample's size
        over n0), or the fixed one."""
        a = self.alpha if alpha is None else alpha
        if self.method is AnalysisMethod.SEQUENTIAL:
            return z_always(information, a)
        return NormalDist().inv_cdf(1.0 - a)

    def lower(
        self, estimate: float, s: Spread, c: Spread, weights: tuple[float, float], rising: bool
    ) -> float:
        """The lower bound of `estimate` = weights[1]·mean_candidate - weights[0]·mean_stable
        when the candidate's mean `rising` is what the check fears (an error rate), or of
        weights[0]·mean_stable - weights[1]·mean_candidate when it is its falling (outcomes)."""
        ws, wc = weights
        # (above 0: the observations added at the ends of a range give every variant a spread)
        variance = ws * ws * s.variance + wc * wc * c.variance
        information = (ws * ws * s.per_observation + wc * wc * c.per_observation) / (
            self.n0 * variance
        )
        scale = max(ws * s.down, wc * c.up) if rising else max(ws * s.up, wc * c.down)
        return estimate - margin(self.z(information), math.sqrt(variance), scale)

    def interval(
        self, estimate: float, s: Spread, c: Spread, weights: tuple[float, float], rising: bool
    ) -> tuple[float, float]:
        """The lower and upper bounds of `estimate` (as in `lower`), each at the check's rate:
        the upper one is the lower bound of its negation, whose feared direction is the other."""
        return (
            self.lower(estimate, s, c, weights, rising),
            -self.lower(-estimate, s, c, weights, not rising),
        )
