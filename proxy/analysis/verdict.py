"""The verdict on a candidate: pure, observations in, verdict out.

The checks compare the candidate with stable over the same window (with `method: sequential`,
everything since the rollout began, and the always-valid bounds of `proxy.analysis.sequential`
in place of the fixed-sample ones described here):

- **error rate** (5xx answers and upstream failures over requests). The candidate fails when the
  lower confidence bound of ``p_candidate - p_stable`` exceeds `max_error_rate_increase`. The
  bound is Newcombe's hybrid score interval (two Wilson intervals), which stays well-behaved
  with zero or few errors, where the plain z-test does not.
- **latency** (a quantile, p95 by default, of successful requests). The candidate fails when a
  distribution-free lower bound of its quantile, divided by an upper bound of stable's, exceeds
  `max_latency_ratio`: the bounds are order statistics whose ranks come from the binomial
  distribution of ranks below a quantile, so no latency distribution is assumed.
- **outcomes** (`analysis.outcomes`: what users did with the answers, as the application
  reports it). The candidate fails when the lower confidence bound of stable's mean minus the
  candidate's (divided by stable's mean, if `relative`; the delta method) exceeds
  `max_decrease`. The mean is over the variant's requests (`per: request`, the default: a
  click-through rate, requests without a report counting 0) or over the reported values
  (`per: outcome`: a rating); the bound is the normal approximation with each variant's sample
  variance (over requests, from the reported values' squares: exact when a request has at most
  one report of a name).
- **custom metrics** (`analysis.metrics`): PromQL values, judged in `metric_check` and passed
  in; they count like any other check.

Each bound is one-sided at `confidence`. Every check is inconclusive, never failed, while a
variant has fewer than `min_requests` in the window (requests, or reports with `per: outcome`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from statistics import NormalDist
from typing import Any

from proxy.analysis.histogram import quantile, quantile_bounds
from proxy.analysis.sequential import (
    Estimate,
    mean_decrease_bound,
    quantile_ratio_bound,
    rate_increase_bound,
)
from proxy.config.model import AnalysisMethod, AnalysisSpec, OutcomeBasis, OutcomeCheck

LATENCY_KEY = "latency_quantile_seconds"


class Result(StrEnum):
    """The outcome of a check or of a whole verdict."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class Moments:
    """Reported values of one outcome: how many, their sum and the sum of their squares."""

    count: int = 0
    total: float = 0.0
    squares: float = 0.0

    def __add__(self, other: Moments) -> Moments:
        return Moments(
            self.count + other.count, self.total + other.total, self.squares + other.squares
        )

    def __sub__(self, other: Moments) -> Moments:
        return Moments(
            self.count - other.count, self.total - other.total, self.squares - other.squares
        )


_NO_MOMENTS = Moments()


@dataclass(frozen=True, slots=True)
class Sample:
    """One variant's observations in the window: requests, errors, latency histogram counts,
    and the outcomes reported, by name."""

    requests: int
    errors: int
    latency: tuple[int, ...]
    outcomes: Mapping[str, Moments] = field(default_factory=dict)
    assigned: int = 0  # requests assigned at random (by bucket) that this variant served
    expected: float = 0.0  # how many of the randomly assigned it should have: the sum of shares
    users: int = 0  # sampled users whose first request in the window this variant served
    users_expected: float = 0.0  # how many of those it should have: the sum of their shares
    design_effect: float = 1.0  # the route's requests per user, squared over plain (see users.py)

    def __sub__(self, earlier: Sample) -> Sample:
        """What was observed since `earlier` (a sample of the same counts, taken before): the
        requests, errors, latencies and outcomes; the sample-ratio counts are not carried."""
        outcomes = {
            name: moments - earlier.outcomes.get(name, _NO_MOMENTS)
            for name, moments in self.outcomes.items()
        }
        latency = tuple(map(operator.sub, self.latency, earlier.latency))
        return Sample(
            self.requests - earlier.requests, self.errors - earlier.errors, latency, outcomes
        )

    def summary(self) -> dict[str, Any]:
        """Sizes and rate, for reports."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else None,
            "latency_samples": sum(self.latency),
        }


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome with what it saw.

    `observed` is the point estimate (error-rate difference or latency ratio), `bound` the
    confidence bound compared with `threshold`.
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

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "check": self.name,
            "result": self.result.value,
            "threshold": self.threshold,
            "observed": self.observed,
            "bound": self.bound,
            "stable": self.stable,
            "candidate": self.candidate,
            "note": self.note,
            "scope": self.scope,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """All checks of one analysis round; `result` is fail if any failed, else inconclusive if
    any was, else pass."""

    at: float
    result: Result
    checks: tuple[Check, ...]
    method: AnalysisMethod = AnalysisMethod.FIXED

    @property
    def failing(self) -> tuple[Check, ...]:
        """The checks that failed."""
        return tuple(c for c in self.checks if c.result is Result.FAIL)

    @property
    def mismatched(self) -> bool:
        """Whether the sample-ratio check failed: nothing else can be trusted."""
        return any(c.name == "sample_ratio" and c.result is Result.FAIL for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "at": self.at,
            "result": self.result.value,
            "method": self.method.value,
            "checks": [c.to_json() for c in self.checks],
        }


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_lower_bound(e1: int, n1: int, e2: int, n2: int, z: float) -> float:
    """Newcombe's lower bound of ``e1/n1 - e2/n2``."""
    p1, p2 = e1 / n1, e2 / n2
    low1, _ = wilson(e1, n1, z)
    _, high2 = wilson(e2, n2, z)
    return (p1 - p2) - math.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2)


def _too_few(name: str, spec: AnalysisSpec, threshold: float, s: Sample, c: Sample) -> Check:
    return Check(
        name,
        Result.INCONCLUSIVE,
        threshold,
        None,
        None,
        s.summary(),
        c.summary(),
        f"fewer than {spec.min_requests} requests per variant in the window",
    )


def error_rate_check(
    stable: Sample, candidate: Sample, spec: AnalysisSpec, z: float, *, alpha: float | None = None
) -> Check:
    """Is the candidate's error rate higher than stable's by more than the allowed increase?
    (`z` for the fixed method's bound; `alpha`, by default `1 - confidence`, for the
    sequential one's.)"""
    threshold = spec.max_error_rate_increase
    if min(stable.requests, candidate.requests) < spec.min_requests:
        return _too_few("error_rate", spec, threshold, stable, candidate)
    observed = candidate.errors / candidate.requests - stable.errors / stable.requests
    if spec.method is AnalysisMethod.SEQUENTIAL:
        bound = rate_increase_bound(
            (candidate.errors, candidate.requests),
            (stable.errors, stable.requests),
            n0=spec.min_requests,
            alpha=1.0 - spec.confidence if alpha is None else alpha,
        )
    else:
        bound = difference_lower_bound(
            candidate.errors, candidate.requests, stable.errors, stable.requests, z
        )
    failed = bound > threshold
    return Check(
        "error_rate",
        Result.FAIL if failed else Result.PASS,
        threshold,
        observed,
        bound,
        stable.summary(),
        candidate.summary(),
        "candidate error rate is higher than allowed"
        if failed
        else "no significant error rate increase",
    )


def latency_check(
    stable: Sample, candidate: Sample, spec: AnalysisSpec, z: float, *, alpha: float | None = None
) -> Check:
    """Is the candidate's latency quantile more than `max_latency_ratio` times stable's?"""
    threshold = spec.max_latency_ratio
    q = spec.latency_quantile
    if min(sum(stable.latency), sum(candidate.latency)) < spec.min_requests:
        return _too_few("latency", spec, threshold, stable, candidate)
    stable_q, candidate_q = quantile(stable.latency, q), quantile(candidate.latency, q)
    if spec.method is AnalysisMethod.SEQUENTIAL:
        bound = quantile_ratio_bound(
            candidate.latency,
            stable.latency,
            q=q,
            n0=spec.min_requests,
            alpha=1.0 - spec.confidence if alpha is None else alpha,
        )
    else:
        candidate_low, _ = quantile_bounds(candidate.latency, q, z)
        _, stable_high = quantile_bounds(stable.latency, q, z)
        bound = candidate_low / stable_high
    failed = bound > threshold
    label = f"p{q * 100:g}"
    return Check(
        "latency",
        Result.FAIL if failed else Result.PASS,
        threshold,
        candidate_q / stable_q,
        bound,
        {**stable.summary(), LATENCY_KEY: stable_q},
        {**candidate.summary(), LATENCY_KEY: candidate_q},
        f"candidate {label} is slower than allowed" if failed else f"{label} within the ratio",
    )


def outcome_check(
    stable: Sample,
    candidate: Sample,
    check: OutcomeCheck,
    spec: AnalysisSpec,
    z: float,
    *,
    alpha: float | None = None,
) -> Check:
    """Has the candidate's mean of outcome `check.name` fallen below stable's by more than
    `max_decrease` (of stable's mean, if `relative`)?"""
    name, threshold = f"outcome:{check.name}", check.max_decrease
    ms, mc = (
        stable.outcomes.get(check.name, Moments()),
        candidate.outcomes.get(check.name, Moments()),
    )
    per_request = check.per is OutcomeBasis.REQUEST
    ns, nc = (stable.requests, candidate.requests) if per_request else (ms.count, mc.count)

    def seen(sample: Sample, moments: Moments, n: int) -> dict[str, Any]:
        mean = moments.total / n if n else None
        return {**sample.summary(), "outcomes": moments.count, "mean": mean}

    report = seen(stable, ms, ns), seen(candidate, mc, nc)
    if min(ns, nc) < max(spec.min_requests, 2):
        unit = "requests" if per_request else f"{check.name} outcomes"
        note = f"fewer than {spec.min_requests} {unit} per variant in the window"
        return Check(name, Result.INCONCLUSIVE, threshold, None, None, *report, note)
    mean_s, mean_c = ms.total / ns, mc.total / nc
    var_s = max(ms.squares / ns - mean_s * mean_s, 0.0) * ns / (ns - 1)
    var_c = max(mc.squares / nc - mean_c * mean_c, 0.0) * nc / (nc - 1)
    observed = mean_s - mean_c
    spread = math.sqrt(var_s / ns + var_c / nc)
    if check.relative:
        if mean_s <= 0:
            note = "stable's mean is not above 0: no relative decrease to judge"
            return Check(name, Result.INCONCLUSIVE, threshold, None, None, *report, note)
        observed /= mean_s  # 1 - mean_c / mean_s, its spread by the delta method
        spread = math.sqrt(var_c / nc + (mean_c / mean_s) ** 2 * var_s / ns) / mean_s
    if spec.method is AnalysisMethod.SEQUENTIAL:
        bound = mean_decrease_bound(
            Estimate(mean_s, var_s, ns),
            Estimate(mean_c, var_c, nc),
            n0=spec.min_requests,
            alpha=1.0 - spec.confidence if alpha is None else alpha,
            relative=check.relative,
        )
    else:
        bound = observed - z * spread
    failed = bound > threshold
    what = "relative decrease" if check.relative else "decrease"
    note = (
        f"candidate's {check.name} mean fell more than allowed"
        if failed
        else f"no significant {what} of {check.name}"
    )
    return Check(
        name, Result.FAIL if failed else Result.PASS, threshold, observed, bound, *report, note
    )


SAMPLE_RATIO_ALPHA = 0.001  # as GrowthBook and Eppo: a mismatch this unlikely is a fault


def _mismatch(
    served: tuple[int, int], expected: tuple[float, float], design_effect: float, spec: AnalysisSpec
) -> float | None:
    """The p-value that (stable, candidate) served `served` where `expected` were due: a
    chi-squared test (one degree of freedom) divided by the design effect; None on too little."""
    n = served[0] + served[1]
    if n < spec.min_requests or min(expected) < 5.0:
        return None
    chi2 = sum((o - e) ** 2 / e for o, e in zip(served, expected, strict=True))
    return math.erfc(math.sqrt(chi2 / design_effect / 2.0))


def sample_ratio_check(stable: Sample, candidate: Sample, spec: AnalysisSpec) -> Check:
    """Did each variant serve the share of randomly assigned requests, and of sampled users'
    first requests, that the ramp gave it, integrated over the window as the share moved?

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
        note = "each variant served its share of the assigned requests"
    elif requests is not None and requests == min(tested):
        note = (
            f"the candidate served {candidate.assigned} of {n} randomly assigned requests where "
            f"{candidate.expected:.1f} were expected: assignment or observation is broken"
        )
    else:
        note = (
            f"the candidate served the first request of {candidate.users} of "
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
    untrustworthy: the verdict is then inconclusive whatever they say (it holds the ramp and
    never rolls back); a sample-ratio check without enough data changes nothing.

    With `method: sequential`, each check is made on the counts since the rollout began at
    `TOTAL_SHARE` of the error rate and, given `recent` (stable's and the candidate's counts in
    the current epoch, and its number k from 1: see `proxy.analysis.epochs`), again on the
    epoch's counts at the rest divided by k(k + 1), so that over all epochs the rates add up to
    at most `1 - confidence`. The epoch's check counts only when it fails (a change that the
    counts since the start dilute); its passing or thin data never hide the total's verdict.
    All of it within `share` of the rate (`analysis_share`: this analysis's part of it)."""
    z = NormalDist().inv_cdf(spec.confidence)

    def checks_on(s: Sample, c: Sample, alpha: float | None) -> tuple[Check, ...]:
        return (
            error_rate_check(s, c, spec, z, alpha=alpha),
            latency_check(s, c, spec, z, alpha=alpha),
            *(outcome_check(s, c, check, spec, z, alpha=alpha) for check in spec.outcomes),
        )

    if spec.method is AnalysisMethod.FIXED:
        judged = checks_on(stable, candidate, None)
    else:
        alpha = (1.0 - spec.confidence) * share
        judged = tuple(
            replace(c, scope="total") for c in checks_on(stable, candidate, alpha * TOTAL_SHARE)
        )
        if recent is not None:
            recent_stable, recent_candidate, k = recent
            spent = alpha * (1.0 - TOTAL_SHARE) / (k * (k + 1))
            judged = tuple(
                replace(late, scope="recent")
                if late.result is Result.FAIL and total.result is not Result.FAIL
                else total
                for total, late in zip(
                    judged, checks_on(recent_stable, recent_candidate, spent), strict=True
                )
            )
    checks = (*judged, *metrics)
    results = {c.result for c in checks}
    if stable.assigned + candidate.assigned:  # (no request assigned at random: nothing to test)
        ratio = sample_ratio_check(stable, candidate, spec)
        if spec.method is AnalysisMethod.SEQUENTIAL:
            ratio = replace(ratio, scope="total")
        checks = (*checks, ratio)
        if ratio.result is Result.FAIL:
            return Verdict(at, Result.INCONCLUSIVE, checks, spec.method)
    if Result.FAIL in results:
        result = Result.FAIL
    elif Result.INCONCLUSIVE in results:
        result = Result.INCONCLUSIVE
    else:
        result = Result.PASS
    return Verdict(at, result, checks, spec.method)
