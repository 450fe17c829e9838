"""One analysis round's verdict (`assess`): the error rate shared among the built-in checks,
the counts since the start and the current epoch's, and the sample-ratio guard.

Invariants:
- Pure: samples in, a `Verdict` out; no I/O, no clock.
- The error rate spent adds up to at most `1 - confidence` over a rollout: the n-th analysis
  spends `analysis_share(n)` of it, split evenly among the built-in checks (`checks_of`); with
  `method: sequential`, `TOTAL_SHARE` of a check's part on the counts since the start and the
  rest over the epochs, epoch k spending 1 / (k (k + 1)) of it.
- An epoch's check only ever makes a verdict worse (fail or suspect where the total is not).
- A failed sample-ratio check makes the verdict an error, whatever the other checks say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from proxy.analysis.checks import error_rate_check, latency_check, outcome_check
from proxy.analysis.intervals import Bounds
from proxy.analysis.sample_ratio import sample_ratio_check
from proxy.analysis.verdict import Check, Result, Sample, Verdict, worst
from proxy.config.model import AnalysisMethod, AnalysisSpec

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
    return recent.result in lately and worst((recent.result, total.result)) is not total.result


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
