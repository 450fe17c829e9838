"""The verdict on a candidate: pure, observations in, verdict out.

What is compared. Every request that the routing core assigned at random (by the user's bucket,
or by a draw for a keyless one, at a share strictly between 0 and 1) counts for the variant it
was assigned, whoever answered it (intention to treat: a fallback to stable after the candidate
failed is the candidate's error). Each counts with an **overlap weight**: 1 - share for the
candidate's, share for stable's (Li, Morgan and Zaslavsky 2018, "Balancing covariates via
propensity score weighting", JASA 113). At any moment both variants' weights then add up to the
same expected amount, share (1 - share) per request, so each variant's weighted mean is a mean
over the same moments: an incident that hits both alike, a share that moves, segments with their
own shares and outcomes that have not arrived yet for the newest requests weigh on both alike,
and the difference of the weighted means (Hajek's estimator) compares like with like. With a
constant share every weight is the same and the means are the plain ones.

Words. Each check bounds how much worse the candidate is, from below and from above, each bound
at the check's share of the error rate. It **fails** when the lower bound is beyond the limit
(proven worse than allowed), **passes** when the upper bound is within it (proven within the
limit), and is otherwise **suspect** when the estimate is beyond the limit (it looks worse, not
yet proven: the ramp is held whatever `on_inconclusive` says) or **inconclusive**. A check that
could not be measured is an **error** (a metric query that failed; a verdict whose observations
could not be read; a broken split, see the sample-ratio check). A verdict's word is its checks'
worst (`worst`: fail, error, suspect, inconclusive, pass). What follows from a verdict is
`proxy.analysis.policy`'s.

The checks, each on a share of the error rate (`1 - confidence` split evenly among the built-in
checks a route has, so that the stated rate holds for the verdict, not for each check):

- **error rate** (5xx answers and upstream failures over requests): the candidate fails when
  the lower bound of ``p_candidate - p_stable`` exceeds `max_error_rate_increase` (the upper
  bound of the same: the other side).
- **latency** (a quantile, p95 by default, of successful requests): the candidate fails when a
  distribution-free lower bound of its quantile over an upper bound of stable's exceeds
  `max_latency_ratio` (the upper bound: its upper bound over stable's lower one). The bounds are
  the weighted empirical distribution's levels ``q ∓ spread``, where the spread is that of the
  share of observations below a quantile (a mean of 0/1 values), taken at the outer edges of the
  latency buckets (`histogram.quantile_bounds`).
- **outcomes** (`analysis.outcomes`): the candidate fails when the lower bound of stable's mean
  minus the candidate's (with `relative`, of ``(1 - max_decrease)`` times stable's mean minus the
  candidate's, without the delta method) exceeds `max_decrease` (0). The mean is over the
  variant's requests (`per: request`: a click-through rate, requests without a report counting
  0) or over the reported values (`per: outcome`: a rating), each weighted by its request's
  weight (the request id carries it).
- **custom metrics** (`analysis.metrics`): PromQL values, judged in `metric_check` and passed
  in; they count like any other check (they spend no share of the error rate: no bound).

Variances. Each variant's weighted mean has the linearised variance of a Hajek estimator,
``sum w² (y - mean)² / (sum w)²``, with two safeguards: an observation's variance is taken
with two observations added at each end of the values' range (Agresti and Coull; a variant
whose few observations hold no event does not look certain; see `spreads`), and it is
multiplied by the variant's design effect (`Clustering`): requests
of one user are correlated, and the user, not the request, is what is assigned. A bound is the
estimate less `sequential.margin`: z standard errors plus Bernstein's correction for skewed
means of rare events, with z always-valid (`method: sequential`) or fixed (`method: fixed`).

Every check is inconclusive, never failed, while a variant has fewer than `min_requests` compared
requests (or reports, with `per: outcome`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from statistics import NormalDist
from typing import Any, NamedTuple

from proxy.analysis.histogram import cumulative, quantile, quantile_bounds
from proxy.analysis.sequential import margin, z_always
from proxy.config.model import AnalysisMethod, AnalysisSpec, OutcomeBasis, OutcomeCheck

LATENCY_KEY = "latency_quantile_seconds"


class Result(StrEnum):
    """The outcome of a check or of a whole verdict (a verdict's is its checks' worst, in this
    order from the worst)."""

    FAIL = "fail"  # proven worse than allowed: the bound on the better side is beyond the limit
    ERROR = "error"  # could not be measured (a query or the fleet's data failed, a broken split)
    SUSPECT = "suspect"  # not proven either way, and the estimate is beyond the limit
    INCONCLUSIVE = "inconclusive"  # not proven either way (too little data, or too close)
    PASS = "pass"  # proven within the limit: the bound on the worse side is inside it


_WORST_FIRST = tuple(Result)


def worst(results: Iterable[Result]) -> Result:
    """The worst of `results` (pass when there are none)."""
    found = set(results)
    return next((r for r in _WORST_FIRST if r in found), Result.PASS)


def judged(observed: float, low: float, high: float | None, threshold: float) -> Result:
    """A check's word for an estimate `observed` of how much worse the candidate is, with its
    confidence interval (`low`, `high`; no `high`: not bounded on that side): fail when even the
    lower bound is beyond `threshold`, pass when even the upper bound is within it, otherwise
    suspect when the estimate is beyond it, inconclusive when not."""
    if low > threshold:
        return Result.FAIL
    if high is not None and high <= threshold:
        return Result.PASS
    return Result.SUSPECT if observed > threshold else Result.INCONCLUSIVE


@dataclass(frozen=True, slots=True)
class Moments:
    """Reported values of one outcome, each with its request's weight w: how many, and the sums
    of w, w², w·value, w²·value and w²·value²."""

    count: int = 0
    weight: float = 0.0
    weight2: float = 0.0
    total: float = 0.0
    total2: float = 0.0
    squares2: float = 0.0

    @classmethod
    def of(cls, value: float, weight: float) -> Moments:
        """One report of `value` for a request of weight `weight`."""
        w2 = weight * weight
        return cls(1, weight, w2, weight * value, w2 * value, w2 * value * value)

    def __add__(self, other: Moments) -> Moments:
        return Moments(*map(operator.add, _fields(self), _fields(other)))

    def __sub__(self, other: Moments) -> Moments:
        return Moments(*map(operator.sub, _fields(self), _fields(other)))


def _fields(m: Moments) -> tuple[Any, ...]:
    return (m.count, m.weight, m.weight2, m.total, m.total2, m.squares2)


_NO_MOMENTS = Moments()


@dataclass(frozen=True, slots=True)
class Clustering:
    """How many times more a variant's estimates vary than if every request were a user of its
    own (design effects, at least 1): of its error rate and of its share of slow requests (the
    latency check's), from the sampled users (`proxy.analysis.users`)."""

    errors: float = 1.0
    latency: float = 1.0


_ALONE = Clustering()


@dataclass(frozen=True)  # (not slots: `latency_total` is cached)
class Sample:
    """One variant's observations: compared requests (assigned at random, see the module's
    text) and their errors, the sums of their weights w and w², of w and w² over errors, the
    latency histogram (w per bucket) with its sum of w², and the outcomes reported, by name; then
    the sample-ratio counts and the design effects."""

    requests: int = 0
    errors: int = 0
    weight: float = 0.0
    weight2: float = 0.0
    error_weight: float = 0.0
    error_weight2: float = 0.0
    latency: tuple[float, ...] = ()
    latency_weight2: float = 0.0
    outcomes: Mapping[str, Moments] = field(default_factory=dict)
    assigned: int = 0  # requests assigned at random (by bucket) to this variant
    expected: float = 0.0  # how many of the randomly assigned it should have: the sum of shares
    users: int = 0  # sampled users whose first request in the window was assigned to it
    users_expected: float = 0.0  # how many of those it should have: the sum of their shares
    design_effect: float = 1.0  # the route's requests per user, squared over plain (see users.py)
    clustering: Clustering = _ALONE

    @classmethod
    def unweighted(
        cls,
        requests: int,
        errors: int,
        latency: Sequence[float] = (),
        outcomes: Mapping[str, Moments] | None = None,
    ) -> Sample:
        """Counts in which every request weighs 1 (a constant share)."""
        return cls(
            requests,
            errors,
            float(requests),
            float(requests),
            float(errors),
            float(errors),
            tuple(float(n) for n in latency),
            float(sum(latency)),
            outcomes or {},
        )

    def __sub__(self, earlier: Sample) -> Sample:
        """What was observed since `earlier` (a sample of the same counts, taken before); the
        sample-ratio counts are not carried, the design effects are."""
        outcomes = {
            name: moments - earlier.outcomes.get(name, _NO_MOMENTS)
            for name, moments in self.outcomes.items()
        }
        return Sample(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            self.weight - earlier.weight,
            self.weight2 - earlier.weight2,
            self.error_weight - earlier.error_weight,
            self.error_weight2 - earlier.error_weight2,
            tuple(map(operator.sub, self.latency, earlier.latency or (0.0,) * len(self.latency))),
            self.latency_weight2 - earlier.latency_weight2,
            outcomes,
            clustering=self.clustering,
        )

    @cached_property
    def latency_total(self) -> float:
        """The latency histogram's total weight."""
        return sum(self.latency)

    @property
    def error_rate(self) -> float | None:
        """The weighted error rate, or None without requests."""
        return self.error_weight / self.weight if self.weight > 0 else None

    def summary(self) -> dict[str, Any]:
        """Sizes and rate, for reports."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "latency_samples": self.latency_total,
        }


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome with what it saw.

    `observed` is the point estimate of how much worse the candidate is (error-rate difference,
    latency ratio, outcome decrease), `bound` and `upper` its confidence bounds: it fails when
    `bound` is beyond `threshold` and passes when `upper` is within it (`judged`); `alpha` is
    the share of the error rate each bound spent.
    """

    name: str
    result: Result
    threshold: float
    observed: float | None
    bound: float | None
    stable: dict[str, Any]
    candidate: dict[str, Any]
    note: str
    # what was judged: "window" (method fixed), "total" (since the start) or "recent" (the
    # current epoch) with method sequential, "query" (a metric check: the query's own range)
    scope: str = "window"
    alpha: float | None = None
    upper: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; a number that is not finite (a bound whose arithmetic overflowed)
        is None, as NaN and infinities are not JSON."""
        return {
            "check": self.name,
            "result": self.result.value,
            "threshold": finite_or_none(self.threshold),
            "observed": finite_or_none(self.observed),
            "bound": finite_or_none(self.bound),
            "upper": finite_or_none(self.upper),
            "stable": json_ready(self.stable),
            "candidate": json_ready(self.candidate),
            "note": self.note,
            "scope": self.scope,
            "alpha": finite_or_none(self.alpha),
        }


def finite_or_none(value: float | None) -> float | None:
    """`value`, or None when it is not finite."""
    return value if value is None or math.isfinite(value) else None


def json_ready(value: Any) -> Any:
    """`value` with every float in it (in dicts and lists) that is not finite made None."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class Verdict:
    """All checks of one analysis round; `result` is the worst of theirs (`worst`), or error
    when the sample-ratio check found the split broken; `note` says why a verdict without
    checks could not be taken."""

    at: float
    result: Result
    checks: tuple[Check, ...]
    method: AnalysisMethod = AnalysisMethod.FIXED
    note: str | None = None

    @classmethod
    def unmeasured(cls, at: float, why: str, method: AnalysisMethod) -> Verdict:
        """The verdict of a round whose observations could not be read."""
        return cls(at, Result.ERROR, (), method, why)

    @property
    def failing(self) -> tuple[Check, ...]:
        """The checks that failed."""
        return tuple(c for c in self.checks if c.result is Result.FAIL)

    @property
    def reference(self) -> float | None:
        """Stable's latency quantile, above which a request counts as slow in the users' sums
        (`Clustering`), if the verdict has one."""
        for check in self.checks:
            seconds = check.stable.get(LATENCY_KEY) if check.name == "latency" else None
            if isinstance(seconds, float):
                return seconds
        return None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (numbers that are not finite: None)."""
        return {
            "at": self.at,
            "result": self.result.value,
            "method": self.method.value,
            "checks": [c.to_json() for c in self.checks],
            "note": self.note,
        }


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
    scope: str = "window"  # what the checks judge (`Check.scope`)

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


def _too_few(
    name: str, spec: AnalysisSpec, threshold: float, s: Sample, c: Sample, *, scope: str
) -> Check:
    return Check(
        name,
        Result.INCONCLUSIVE,
        threshold,
        None,
        None,
        s.summary(),
        c.summary(),
        f"fewer than {spec.min_requests} compared requests per variant",
        scope,
    )


def _bounded(
    name: str,
    interval: tuple[float | None, float | None],
    *,
    observed: float,
    threshold: float,
    report: tuple[dict[str, Any], dict[str, Any]],
    notes: Mapping[Result, str],
    bounds: Bounds,
) -> Check:
    """A check with its bounds (`interval`; None where a side is not bounded), its word
    (`judged`) and that word's note."""
    low, high = interval
    result = judged(observed, -math.inf if low is None else low, high, threshold)
    return Check(
        name,
        result,
        threshold,
        observed,
        low,
        *report,
        notes[result],
        scope=bounds.scope,
        alpha=bounds.alpha,
        upper=high,
    )


def _error_sums(sample: Sample) -> Sums:
    return Sums(
        sample.weight,
        sample.weight2,
        sample.error_weight,
        sample.error_weight2,
        sample.error_weight2,  # (an error is 0 or 1: its square is itself)
    )


def error_rate_check(
    stable: Sample, candidate: Sample, spec: AnalysisSpec, bounds: Bounds
) -> Check:
    """Is the candidate's error rate higher than stable's by more than the allowed increase?"""
    threshold = spec.max_error_rate_increase
    if min(stable.requests, candidate.requests) < spec.min_requests:
        return _too_few("error_rate", spec, threshold, stable, candidate, scope=bounds.scope)
    s, c = _error_sums(stable), _error_sums(candidate)
    observed = c.mean - s.mean
    effects = (stable.clustering.errors, candidate.clustering.errors)
    spread_s, spread_c = spreads(s, c, (0.0, 1.0), effects, PSEUDO)
    interval = bounds.interval(observed, spread_s, spread_c, (1.0, 1.0), rising=True)
    report = (stable.summary(), candidate.summary())
    return _bounded(
        "error_rate",
        interval,
        observed=observed,
        threshold=threshold,
        report=report,
        notes=_ERROR_RATE_NOTES,
        bounds=bounds,
    )


_ERROR_RATE_NOTES = {
    Result.FAIL: "candidate error rate is higher than allowed",
    Result.PASS: "the error rate increase is within the allowed one",
    Result.SUSPECT: "the error rate increase looks higher than allowed, not yet proven",
    Result.INCONCLUSIVE: "not yet known whether the error rate increase is within the allowed one",
}


def _level_spread(sample: Sample, q: float, effect: float, z: float, below: bool) -> float:
    """How far the weighted share of `sample`'s latencies below the true `q`-quantile may lie
    from q: a mean of 0/1 values with variance q (1 - q) per observation, below q (`below`:
    each slow request drags it down by q, Bernstein's correction applies) or above it (each
    fast one lifts it by 1 - q)."""
    ratio = sample.latency_weight2 / sample.latency_total**2
    scale = (q if below else 1.0 - q) * ratio
    return margin(z, math.sqrt(q * (1.0 - q) * effect * ratio), scale)


def latency_check(stable: Sample, candidate: Sample, spec: AnalysisSpec, bounds: Bounds) -> Check:
    """Is the candidate's latency quantile more than `max_latency_ratio` times stable's?"""
    threshold = spec.max_latency_ratio
    q = spec.latency_quantile
    # (the counts of requests with a latency: min_requests applies to them)
    if (
        min(stable.requests - stable.errors, candidate.requests - candidate.errors)
        < (spec.min_requests)
        or min(stable.latency_total, candidate.latency_total) <= 0
    ):
        return _too_few("latency", spec, threshold, stable, candidate, scope=bounds.scope)
    stable_running, candidate_running = cumulative(stable.latency), cumulative(candidate.latency)
    stable_q = quantile(stable.latency, q, stable_running)
    candidate_q = quantile(candidate.latency, q, candidate_running)
    label = f"p{q * 100:g}"
    report = (
        {**stable.summary(), LATENCY_KEY: stable_q},
        {**candidate.summary(), LATENCY_KEY: candidate_q},
    )
    levels = []  # each quantile's spreads (down, up) at half the check's rate
    for sample in (candidate, stable):
        effect = sample.clustering.latency
        information = sample.latency_total**2 / sample.latency_weight2 / effect / spec.min_requests
        z = bounds.z(information, bounds.alpha / 2)
        levels.append(
            (_level_spread(sample, q, effect, z, True), _level_spread(sample, q, effect, z, False))
        )
    (cd, cu), (sd, su) = levels
    candidate_low, candidate_high = quantile_bounds(candidate.latency, q, cd, cu, candidate_running)
    stable_low, stable_high = quantile_bounds(stable.latency, q, sd, su, stable_running)
    observed = candidate_q / stable_q
    # (no upper edge at a level: its quantile is not bounded from above)
    low = None if stable_high is None else candidate_low / stable_high
    high = None if candidate_high is None or stable_low <= 0 else candidate_high / stable_low
    why = "" if low is not None else f" (too few stable requests to bound its {label} from above)"
    notes = {
        Result.FAIL: f"candidate {label} is slower than allowed",
        Result.PASS: f"candidate {label} is within the allowed ratio",
        Result.SUSPECT: f"candidate {label} looks slower than allowed, not yet proven{why}",
        Result.INCONCLUSIVE: f"not yet known whether the candidate {label} is within the "
        f"ratio{why}",
    }
    return _bounded(
        "latency",
        (low, high),
        observed=observed,
        threshold=threshold,
        report=report,
        notes=notes,
        bounds=bounds,
    )


def _outcome_sums(sample: Sample, moments: Moments, per_request: bool) -> Sums:
    if per_request:  # (every compared request is an observation; reports add its value)
        return Sums(sample.weight, sample.weight2, moments.total, moments.total2, moments.squares2)
    return Sums(moments.weight, moments.weight2, moments.total, moments.total2, moments.squares2)


def outcome_check(
    stable: Sample, candidate: Sample, check: OutcomeCheck, spec: AnalysisSpec, bounds: Bounds
) -> Check:
    """Has the candidate's mean of outcome `check.name` fallen below stable's by more than
    `max_decrease` (of stable's mean, if `relative`)?"""
    name, threshold = f"outcome:{check.name}", check.max_decrease
    ms = stable.outcomes.get(check.name, _NO_MOMENTS)
    mc = candidate.outcomes.get(check.name, _NO_MOMENTS)
    per_request = check.per is OutcomeBasis.REQUEST
    ns, nc = (stable.requests, candidate.requests) if per_request else (ms.count, mc.count)
    s, c = _outcome_sums(stable, ms, per_request), _outcome_sums(candidate, mc, per_request)

    def seen(sample: Sample, moments: Moments, sums: Sums) -> dict[str, Any]:
        mean = sums.mean if sums.weight > 0 else None
        return {**sample.summary(), "outcomes": moments.count, "mean": mean}

    report = seen(stable, ms, s), seen(candidate, mc, c)
    if min(ns, nc) < max(spec.min_requests, 2):
        unit = "compared requests" if per_request else f"{check.name} outcomes"
        note = f"fewer than {spec.min_requests} {unit} per variant"
        return Check(name, Result.INCONCLUSIVE, threshold, None, None, *report, note, bounds.scope)
    spread_s, spread_c = spreads(s, c, check.range, (1.0, 1.0), PSEUDO)
    decrease = s.mean - c.mean
    if check.relative:
        if s.mean <= 0:
            note = "stable's mean is not above 0: no relative decrease to judge"
            return Check(
                name, Result.INCONCLUSIVE, threshold, None, None, *report, note, bounds.scope
            )
        # fails when (1 - max_decrease) mean_s - mean_c is above 0 with confidence: a linear
        # combination of the two means, whose variance needs no delta method
        kept = 1.0 - threshold
        low, high = bounds.interval(
            kept * s.mean - c.mean, spread_s, spread_c, (kept, 1.0), rising=False
        )
        observed = decrease / s.mean
        low, high = low / s.mean + threshold, high / s.mean + threshold
    else:
        observed = decrease
        low, high = bounds.interval(decrease, spread_s, spread_c, (1.0, 1.0), rising=False)
    what = "relative decrease" if check.relative else "decrease"
    notes = {
        Result.FAIL: f"candidate's {check.name} mean fell more than allowed",
        Result.PASS: f"the {what} of {check.name} is within the allowed one",
        Result.SUSPECT: f"the {what} of {check.name} looks larger than allowed, not yet proven",
        Result.INCONCLUSIVE: f"not yet known whether the {what} of {check.name} is within "
        "the allowed one",
    }
    return _bounded(
        name,
        (low, high),
        observed=observed,
        threshold=threshold,
        report=report,
        notes=notes,
        bounds=bounds,
    )


SAMPLE_RATIO_ALPHA = 0.001  # as GrowthBook and Eppo: a mismatch this unlikely is a fault


def _mismatch(
    served: tuple[int, int], expected: tuple[float, float], design_effect: float, spec: AnalysisSpec
) -> float | None:
    """The p-value that (stable, candidate) were assigned `served` where `expected` were due: a
    chi-squared test (one degree of freedom) divided by the design effect; None on too little."""
    n = served[0] + served[1]
    if n < spec.min_requests or min(expected) < 5.0:
        return None
    chi2 = sum((o - e) ** 2 / e for o, e in zip(served, expected, strict=True))
    return math.erfc(math.sqrt(chi2 / design_effect / 2.0))


def sample_ratio_check(stable: Sample, candidate: Sample, spec: AnalysisSpec) -> Check:
    """Was each variant assigned the share of randomly assigned requests, and of sampled users'
    first requests, that the ramp gave it, integrated over the window as the share moved?

    Assignments are counted, not answers: a candidate that fails, is ejected or falls back to
    stable is still assigned its share, so this check never stands in the way of its rollback.
    It catches what breaks assignment or observation itself (requests the proxy never sees, a
    client that asks again when the candidate answers, a broken hash).

    Two chi-squared tests. Requests: a user's requests all go one way, so their count varies
    more than independent draws would; the statistic is divided by the design effect (Rao and
    Scott 1981), else one heavy user would fail the test. Users: each sampled user's first
    request in the window is one independent draw at the share of its time. The smaller p-value
    times the number of tests made (Bonferroni) is compared with `SAMPLE_RATIO_ALPHA`."""
    requests = _mismatch(
        (stable.assigned, candidate.assigned),
        (stable.expected, candidate.expected),
        candidate.design_effect,
        spec,
    )
    users = _mismatch(
        (stable.users, candidate.users),
        (stable.users_expected, candidate.users_expected),
        1.0,
        spec,
    )
    n = stable.assigned + candidate.assigned

    def seen(sample: Sample) -> dict[str, Any]:
        return {
            **sample.summary(),
            "assigned": sample.assigned,
            "expected": sample.expected,
            "users": sample.users,
            "users_expected": sample.users_expected,
            "design_effect": sample.design_effect,
        }

    report = seen(stable), seen(candidate)
    tested = [p for p in (requests, users) if p is not None]
    if not tested:
        note = (
            f"fewer than {spec.min_requests} randomly assigned requests, or 5 expected of a variant"
        )
        return Check(
            "sample_ratio", Result.INCONCLUSIVE, SAMPLE_RATIO_ALPHA, None, None, *report, note
        )
    p_value = min(1.0, min(tested) * len(tested))
    failed = p_value < SAMPLE_RATIO_ALPHA
    if not failed:
        note = "each variant was assigned its share of the requests"
    elif requests is not None and requests == min(tested):
        note = (
            f"the candidate was assigned {candidate.assigned} of {n} randomly assigned requests "
            f"where {candidate.expected:.1f} were expected: assignment or observation is broken"
        )
    else:
        note = (
            f"the candidate was assigned the first request of {candidate.users} of "
            f"{stable.users + candidate.users} sampled users where {candidate.users_expected:.1f} "
            "were expected: assignment or observation is broken"
        )
    result = Result.FAIL if failed else Result.PASS
    # (a test was made, so n > 0: users are only counted with their requests)
    observed = candidate.assigned / n
    return Check("sample_ratio", result, SAMPLE_RATIO_ALPHA, observed, p_value, *report, note)


TOTAL_SHARE = 0.5  # of `1 - confidence`, spent on the counts since the start; the rest on epochs


def analysis_share(number: int) -> float:
    """The share of `1 - confidence` the `number`-th analysis of a rollout may spend (from 1: a
    process that starts, or a new decider, judges counts that start anew): 1 / (n (n + 1)),
    which sums to 1 over them all."""
    return 1.0 / (number * (number + 1))


def checks_of(spec: AnalysisSpec) -> int:
    """How many built-in checks share a verdict's error rate: error rate, latency and each
    outcome check (metric checks have no bound and spend none)."""
    return 2 + len(spec.outcomes)


def _worse_lately(total: Check, recent: Check) -> bool:
    """Whether the current epoch's check says more than the total's: it failed, or looks bad
    (suspect), where the total does not (its thin data and passes never hide the total)."""
    lately = (Result.FAIL, Result.SUSPECT)
    return recent.result in lately and _WORST_FIRST.index(recent.result) < _WORST_FIRST.index(
        total.result
    )


def check_alpha(spec: AnalysisSpec, share: float, epoch: int | None = None) -> float:
    """The share of the error rate each built-in check of a verdict spends (see `assess`): with
    `method: sequential`, on the counts since the start (`epoch` None) or on epoch `epoch`'s."""
    per_check = (1.0 - spec.confidence) * share / checks_of(spec)
    if spec.method is AnalysisMethod.FIXED:
        return per_check
    if epoch is None:
        return per_check * TOTAL_SHARE
    return per_check * (1.0 - TOTAL_SHARE) / (epoch * (epoch + 1))


def assess(
    stable: Sample,
    candidate: Sample,
    spec: AnalysisSpec,
    at: float,
    *,
    metrics: Sequence[Check] = (),
    recent: tuple[Sample, Sample, int] | None = None,
    share: float = 1.0,
) -> Verdict:
    """The verdict of one analysis round, with the custom metric checks already made
    (`proxy.analysis.metric_check`). A sample-ratio mismatch makes every other check
    untrustworthy: the verdict is then an error whatever they say (the policy holds the ramp
    and counts it with the errors in a row); a sample-ratio check without enough data changes
    nothing.

    The error rate, `1 - confidence` times `share` (`analysis_share`: this analysis's part of
    it), is split evenly among the built-in checks (`checks_of`, `check_alpha`). With `method:
    sequential`, each check is made on the counts since the rollout began at `TOTAL_SHARE` of
    its part and, given `recent` (stable's and the candidate's counts in the current epoch, and
    its number k from 1: see `proxy.analysis.epochs`), again on the epoch's counts at the rest
    divided by k(k + 1), so that over all epochs the rates add up to at most its part. The
    epoch's check counts only when it fails or is suspect where the total is not (a change that
    the counts since the start dilute); its passing or thin data never hide the total's
    verdict."""

    def checks_on(s: Sample, c: Sample, alpha: float, scope: str) -> tuple[Check, ...]:
        bounds = Bounds(spec.method, spec.min_requests, alpha, scope)
        return (
            error_rate_check(s, c, spec, bounds),
            latency_check(s, c, spec, bounds),
            *(outcome_check(s, c, check, spec, bounds) for check in spec.outcomes),
        )

    if spec.method is AnalysisMethod.FIXED:
        made = checks_on(stable, candidate, check_alpha(spec, share), "window")
    else:
        made = checks_on(stable, candidate, check_alpha(spec, share), "total")
        if recent is not None:
            recent_stable, recent_candidate, k = recent
            spent = check_alpha(spec, share, k)
            made = tuple(
                late if _worse_lately(total, late) else total
                for total, late in zip(
                    made, checks_on(recent_stable, recent_candidate, spent, "recent"), strict=True
                )
            )
    checks = (*made, *metrics)
    result = worst(c.result for c in checks)
    if stable.assigned + candidate.assigned:  # (no request assigned at random: nothing to test)
        ratio = sample_ratio_check(stable, candidate, spec)
        if spec.method is AnalysisMethod.SEQUENTIAL:
            ratio = replace(ratio, scope="total")
        checks = (*checks, ratio)
        if ratio.result is Result.FAIL:
            note = "the split is broken (sample ratio): nothing measured can be trusted"
            return Verdict(at, Result.ERROR, checks, spec.method, note)
    return Verdict(at, result, checks, spec.method)
