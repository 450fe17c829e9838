"""Always-valid versions of the analysis checks: bounds that hold at every look at once.

A fixed-sample test at 95 % is wrong 5 % of the times it is looked at; looked at every few
seconds for a day, chance alone fails a good candidate sooner or later. These bounds are
confidence sequences instead: with probability at least `confidence`, the true value lies within
them at every sample size simultaneously, so a rule that rolls back when a bound crosses the
threshold rolls back a candidate that is truly within it with probability at most
`1 - confidence`, however often verdicts are taken and however long the rollout runs.

The boundary is the normal mixture of Robbins (1970), "Statistical methods related to the law of
the iterated logarithm", in the form of Howard, Ramdas, McAuliffe and Sekhon (2021),
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of Statistics 49(2),
eq. (14): for a sum S of independent increments with variance V (intrinsic time) and a mixing
parameter rho, |S| < sqrt((V + rho) * (2 log(1/alpha) + log(1 + V/rho))) at every V with
probability at least 1 - alpha. It is also the boundary of the mixture sequential probability
ratio test of Johari, Koomen, Pekelis and Walsh (2022), "Always valid inference: continuous
monitoring of A/B tests", Operations Research 70(3), used by Optimizely's Stats Engine. Dividing
by sqrt(V) gives the factor `z_always` that replaces the fixed test's z.

Invariants
- Pure: counts in, numbers out; no I/O.
- `z_always` is never below the fixed one-sided z at the same alpha, and grows only with the log
  of the sample size: the price of looking any number of times.
- The mixture is scaled by `n0` observations per variant (the analysis's `min_requests`, where
  verdicts begin): at 95 % the factor is 3.66 at n0, least (3.04) near 8 n0, 3.90 at 10,000 n0.
- Assumptions, as stated in the README: observations independent and identically distributed
  within each variant while the candidate is unchanged (the counts start anew with each
  rollout), and the normal approximation for the variance of a mean (asymptotic validity).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from proxy.analysis.histogram import quantile_bounds


def z_always(information: float, alpha: float) -> float:
    """The factor by which a standard error is multiplied for a bound valid at every look.

    `information` is the observed variance of the sum over the mixing parameter (V / rho): the
    sample size over `n0` when every observation weighs the same.
    """
    x = max(information, 1e-12)
    return math.sqrt((1.0 + 1.0 / x) * (2.0 * math.log(1.0 / alpha) + math.log1p(x)))


def _variance(successes: float, n: int) -> float:
    """The variance of a proportion's observations, kept off 0 for empty or full counts."""
    p = (successes + 0.5) / (n + 1.0)
    return p * (1.0 - p)


class Estimate(NamedTuple):
    """A variant's mean, the variance of one observation, and how many observations."""

    mean: float
    variance: float
    n: int


def rate_increase_bound(
    candidate: tuple[int, int], stable: tuple[int, int], *, n0: int, alpha: float
) -> float:
    """An always-valid lower bound of the candidate's rate minus stable's, each given as
    (events, observations)."""
    (e1, n1), (e2, n2) = candidate, stable
    var1, var2 = _variance(e1, n1), _variance(e2, n2)
    v = var1 / n1 + var2 / n2
    target = (var1 + var2) / n0  # the same variance at n0 observations of each
    return e1 / n1 - e2 / n2 - z_always(target / v, alpha) * math.sqrt(v)


def mean_decrease_bound(
    stable: Estimate, candidate: Estimate, *, n0: int, alpha: float, relative: bool = False
) -> float:
    """An always-valid lower bound of stable's mean minus the candidate's (over stable's mean,
    with `relative`: the delta method)."""
    s, c = stable, candidate
    v = s.variance / s.n + c.variance / c.n
    target = (s.variance + c.variance) / n0
    observed = s.mean - c.mean
    if relative:
        observed /= s.mean
        ratio = (c.mean / s.mean) ** 2
        v = (c.variance / c.n + ratio * s.variance / s.n) / s.mean**2
        target = (c.variance + ratio * s.variance) / s.mean**2 / n0
    if v <= 0.0:
        return observed
    return observed - z_always(target / v, alpha) * math.sqrt(v)


def quantile_ratio_bound(
    candidate: tuple[int, ...], stable: tuple[int, ...], *, q: float, n0: int, alpha: float
) -> float:
    """An always-valid lower bound of the candidate's `q`-quantile over stable's: each
    quantile's order-statistic bounds at `alpha / 2` (see `histogram.quantile_bounds`)."""
    low, _ = quantile_bounds(candidate, q, z_always(sum(candidate) / n0, alpha / 2))
    _, high = quantile_bounds(stable, q, z_always(sum(stable) / n0, alpha / 2))
    return low / high
