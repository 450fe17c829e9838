"""The built-in checks of a verdict, each judged on bounds of how much worse the candidate is
(`verdict.judged`), at the check's share of the error rate (`Bounds.alpha`, see
`proxy.analysis.assessment`):

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

Custom metrics (`analysis.metrics`) are judged in `proxy.analysis.metric_check`, the sample
ratio in `proxy.analysis.sample_ratio`.

Invariants:
- Pure: samples in, a `Check` out; no I/O, no clock.
- Every check is inconclusive, never failed, while a variant has fewer than `min_requests`
  compared requests (or reports, with `per: outcome`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from proxy.analysis.histogram import cumulative, quantile, quantile_bounds
from proxy.analysis.intervals import PSEUDO, Bounds, Sums, spreads
from proxy.analysis.sequential import margin
from proxy.analysis.verdict import LATENCY_KEY, Check, Moments, Result, Sample, judged
from proxy.config.model import AnalysisSpec, OutcomeBasis, OutcomeCheck


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
    ms = stable.outcomes.get(check.name, Moments())
    mc = candidate.outcomes.get(check.name, Moments())
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
