"""Epochs of the counts since a rollout began, and the verdict's check on the current one."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from proxy.analysis.assessment import TOTAL_SHARE, assess
from proxy.analysis.checks import error_rate_check, latency_check, outcome_check
from proxy.analysis.epochs import EPOCH_LENGTH, Epochs
from proxy.analysis.histogram import SIZE, bucket_of, quantile_bounds
from proxy.analysis.intervals import Bounds
from proxy.analysis.sequential import z_always
from proxy.analysis.verdict import Clustering, Moments, Result, Sample
from proxy.config.model import AnalysisMethod, AnalysisSpec, OutcomeCheck

SPEC = AnalysisSpec(min_requests=100)
FULL = EPOCH_LENGTH * 100


def ones(reports: int, total: float | None = None) -> Moments:
    """`reports` reports of requests weighing 1, `total` of them (all, by default) of value 1 and
    the others 0: the sums of w·y, w²·y and w²·y² are all `total`."""
    t = float(reports) if total is None else total
    return Moments(reports, float(reports), float(reports), t, t, t)


def counts(requests: int, errors: int = 0) -> Sample:
    return Sample.unweighted(requests, errors, (0, 0, requests - errors), {"c": ones(requests)})


def lower_bound(a: float, b: float, na: int, nb: int, *, n0: int, alpha: float) -> float:
    """The always-valid lower bound of a - b for means of 0/1 values of requests weighing 1,
    written out: each variance its own or, if more, that of its values with two ones and two
    zeros added (Agresti and Coull), information at n0, and Bernstein's correction for what is
    feared, `a` lifted (by (1 - a) / na at most) or `b` dragged (b / nb)."""
    ta, tb = (a * na + 2) / (na + 4), (b * nb + 2) / (nb + 4)
    va = max(a * (1 - a), ta * (1 - ta))
    vb = max(b * (1 - b), tb * (1 - tb))
    variance = va / na + vb / nb
    z = z_always((va + vb) / (n0 * variance), alpha)
    return a - b - z * math.sqrt(variance) - z * z * max((1 - a) / na, b / nb) / 6


def test_an_epoch_is_the_counts_since_its_start_and_ends_once_full_for_both():
    epochs = Epochs()
    first = epochs.recent(counts(10), counts(5), 100)
    assert first == (counts(0), counts(0), 1)  # the first epoch starts at the counts first given
    stable, candidate, k = epochs.recent(counts(10 + FULL), counts(5 + FULL - 1, 3), 100)
    assert (stable.requests, candidate.requests, candidate.errors, k) == (FULL, FULL - 1, 3, 1)
    assert (candidate.weight, candidate.error_weight) == (FULL - 1.0, 3.0)
    assert candidate.latency == (0, 0, FULL - 4)
    assert candidate.outcomes == {"c": ones(FULL - 1)}
    full = epochs.recent(counts(10 + FULL), counts(5 + FULL, 3), 100)
    assert (full[0].requests, full[1].requests, full[2]) == (FULL, FULL, 1)  # judged, then ended
    after = epochs.recent(counts(12 + FULL), counts(6 + FULL, 3), 100)
    assert (after[0].requests, after[1].requests, after[1].errors, after[2]) == (2, 1, 0, 2)


def test_counts_that_go_down_are_a_new_rollout_and_start_the_epochs_anew():
    epochs = Epochs()
    epochs.recent(counts(0), counts(0), 100)
    epochs.recent(counts(FULL), counts(FULL), 100)
    assert epochs.number == 2
    assert epochs.recent(counts(5), counts(FULL + 1), 100)[2] == 1
    epochs.recent(counts(FULL), counts(FULL), 100)
    assert epochs.recent(counts(FULL + 1), counts(3), 100) == (counts(0), counts(0), 1)


def test_the_total_spends_half_the_error_rate_and_epoch_k_the_rest_over_k_k_plus_1():
    stable, candidate = Sample.unweighted(20_000, 200), Sample.unweighted(20_000, 200)
    late_s, late_c = Sample.unweighted(1_000, 10), Sample.unweighted(1_000, 80)
    verdict = assess(stable, candidate, SPEC, 0.0, recent=(late_s, late_c, 3))
    error = verdict.checks[0]
    assert (error.result, error.scope) == (Result.FAIL, "recent")
    # 0.05 over two checks (error rate, latency), half of it the epochs', over 3 · 4
    alpha = 0.05 / 2 * 0.5 / 12
    assert error.alpha == pytest.approx(alpha)
    assert error.bound == pytest.approx(lower_bound(0.08, 0.01, 1_000, 1_000, n0=100, alpha=alpha))
    # by hand: each variance that of its requests with two errors and two successes added, 12
    # and 82 in 1,004 (above their own 0.01 · 0.99 and 0.08 · 0.92); information 10 (1,000
    # requests over 100); the candidate lifted by 0.92 / 1,000 at most
    vs, vc = 12 / 1_004 * (992 / 1_004), 82 / 1_004 * (922 / 1_004)
    assert vs > 0.01 * 0.99 and vc > 0.08 * 0.92
    z = z_always(10.0, alpha)
    se = math.sqrt((vs + vc) / 1_000)
    assert error.bound == pytest.approx(0.07 - z * se - z * z * 0.00092 / 6)
    assert (error.candidate["requests"], error.note) == (
        1_000,
        "candidate error rate is higher than allowed",
    )
    assert TOTAL_SHARE == 0.5
    assert verdict.result is Result.FAIL
    total = assess(stable, candidate, SPEC, 0.0).checks[0]
    assert total.alpha == pytest.approx(0.05 / 2 * 0.5)


def test_a_recent_check_that_passes_or_has_too_little_never_hides_the_total():
    stable, candidate = Sample.unweighted(20_000, 200), Sample.unweighted(20_000, 1_000)
    thin = (Sample.unweighted(10, 0), Sample.unweighted(10, 0), 2)
    failed = assess(stable, candidate, SPEC, 0.0, recent=thin).checks[0]
    assert (failed.result, failed.scope, failed.candidate["requests"]) == (
        Result.FAIL,
        "total",
        20_000,
    )
    equal = Sample.unweighted(20_000, 200)
    passing = assess(stable, equal, SPEC, 0.0, recent=thin)
    assert (passing.checks[0].result, passing.checks[0].scope) == (Result.PASS, "total")
    both = (Sample.unweighted(1_000, 10), Sample.unweighted(1_000, 300), 1)
    total_first = assess(stable, candidate, SPEC, 0.0, recent=both).checks[0]
    assert total_first.scope == "total"  # both failed: the counts since the start are told


def histogram(seconds: float, n: int) -> tuple[int, ...]:
    found = [0] * SIZE
    found[bucket_of(seconds)] = n
    return tuple(found)


def test_outcomes_and_latency_are_judged_on_the_epoch_too():
    spec = replace(SPEC, outcomes=(OutcomeCheck("click", 0.01),))
    many = Sample.unweighted(20_000, 0, histogram(0.01, 20_000), {"click": ones(4_000)})
    late_s = Sample.unweighted(1_000, 0, histogram(0.01, 1_000), {"click": ones(200)})
    late_c = Sample.unweighted(1_000, 0, histogram(0.05, 1_000), {"click": ones(50)})
    checks = assess(many, many, spec, 0.0, recent=(late_s, late_c, 1)).checks
    found = {c.name: c for c in checks}
    click, latency = found["outcome:click"], found["latency"]
    assert (click.result, click.scope) == (Result.FAIL, "recent")
    assert (latency.result, latency.scope) == (Result.FAIL, "recent")
    alpha = 0.05 / 3 * 0.5 / 2  # three checks; epoch 1 spends the rest over 1 · 2
    assert click.alpha == latency.alpha == pytest.approx(alpha)
    assert click.bound == pytest.approx(lower_bound(0.2, 0.05, 1_000, 1_000, n0=100, alpha=alpha))
    assert found["error_rate"].scope == "total"  # (no error anywhere: the total's pass)


def test_a_difference_keeps_outcomes_the_earlier_counts_did_not_have():
    clicks = Moments(3, 2.0, 1.5, 2.0, 1.5, 1.5)
    later = Sample.unweighted(10, 1, (1, 2), {"click": clicks})
    earlier = Sample.unweighted(4, 0, (0, 1))
    assert later - earlier == Sample.unweighted(6, 1, (1, 1), {"click": clicks})


def test_a_difference_subtracts_every_weight_and_keeps_the_design_effects():
    clustering = Clustering(errors=2.0, latency=3.0)
    later = Sample(
        requests=10,
        errors=2,
        weight=4.0,
        weight2=1.75,
        error_weight=0.5,
        error_weight2=0.125,
        latency=(1.5, 2.0),
        latency_weight2=1.5,
        outcomes={"click": Moments(2, 1.0, 0.5, 1.0, 0.5, 0.5)},
        assigned=10,
        expected=9.0,
        users=3,
        users_expected=2.5,
        design_effect=1.5,
        clustering=clustering,
    )
    earlier = Sample(
        requests=4,
        errors=1,
        weight=1.0,
        weight2=0.25,
        error_weight=0.25,
        error_weight2=0.0625,
        latency=(0.5, 0.25),
        latency_weight2=0.25,
        outcomes={"click": Moments(1, 0.5, 0.25, 0.5, 0.25, 0.25)},
        assigned=4,
    )
    assert later - earlier == Sample(
        requests=6,
        errors=1,
        weight=3.0,
        weight2=1.5,
        error_weight=0.25,
        error_weight2=0.0625,
        latency=(1.0, 1.75),
        latency_weight2=1.25,
        outcomes={"click": Moments(1, 0.5, 0.25, 0.5, 0.25, 0.25)},
        clustering=clustering,  # (the sample-ratio counts are not carried)
    )
    # counts taken before any latency was seen: the latencies are all new
    assert (later - Sample()).latency == (1.5, 2.0)


def level_spread(n: int, q: float, n0: int, alpha: float, below: bool) -> float:
    """How far the share of n latencies (each weighing 1) below the true q-quantile may lie from
    q: always-valid z standard errors of a mean of 0/1 values, plus Bernstein's correction for
    one slow request dragging it down by q / n (`below`) or a fast one lifting it by (1 - q) / n."""
    z = z_always(n / n0, alpha)
    return z * math.sqrt(q * (1 - q) / n) + z * z * (q if below else 1 - q) / n / 6


def test_each_check_spends_the_error_rate_its_bounds_give_it():
    spec = AnalysisSpec(min_requests=100)
    spread = (1,) * SIZE  # one latency a bucket: the bound moves with the error rate
    stable = Sample.unweighted(1_000, 10, spread, {"click": ones(1_000, 500.0)})
    candidate = Sample.unweighted(1_000, 100, spread, {"click": ones(1_000, 200.0)})
    bounds = Bounds(AnalysisMethod.SEQUENTIAL, 100, 0.1)
    error = error_rate_check(stable, candidate, spec, bounds)
    assert error.alpha == 0.1
    assert error.bound == pytest.approx(lower_bound(0.1, 0.01, 1_000, 1_000, n0=100, alpha=0.1))
    latency = latency_check(stable, candidate, spec, bounds)
    assert latency.alpha == 0.1
    n = SIZE  # each quantile bounded at half the check's rate
    below = level_spread(n, 0.95, 100, 0.05, below=True)
    above = level_spread(n, 0.95, 100, 0.05, below=False)
    low = quantile_bounds(spread, 0.95, below, below)[0]
    high = quantile_bounds(spread, 0.95, above, above)[1]
    assert high is not None
    assert latency.bound == pytest.approx(low / high)
    halved = latency_check(stable, candidate, spec, replace(bounds, alpha=0.05))
    assert halved.bound != latency.bound
    click = outcome_check(stable, candidate, OutcomeCheck("click", 0.01), spec, bounds)
    assert click.alpha == 0.1
    assert click.bound == pytest.approx(lower_bound(0.5, 0.2, 1_000, 1_000, n0=100, alpha=0.1))


def test_the_sample_ratio_check_says_it_judged_the_counts_since_the_start():
    assigned = replace(Sample.unweighted(1_000, 0), assigned=900, expected=900.0)
    candidate = replace(Sample.unweighted(100, 0), assigned=100, expected=100.0)
    checks = {c.name: c for c in assess(assigned, candidate, SPEC, 0.0).checks}
    assert checks["sample_ratio"].scope == "total"
    fixed = replace(SPEC, method=AnalysisMethod.FIXED)
    checks = {c.name: c for c in assess(assigned, candidate, fixed, 0.0).checks}
    assert checks["sample_ratio"].scope == "window"
