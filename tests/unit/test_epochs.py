"""Epochs of the counts since a rollout began, and the verdict's check on the current one."""

from __future__ import annotations

from dataclasses import replace

import pytest

from proxy.analysis.epochs import EPOCH_LENGTH, Epochs
from proxy.analysis.histogram import SIZE
from proxy.analysis.sequential import (
    Estimate,
    mean_decrease_bound,
    quantile_ratio_bound,
    rate_increase_bound,
)
from proxy.analysis.verdict import (
    TOTAL_SHARE,
    Moments,
    Result,
    Sample,
    assess,
    error_rate_check,
    latency_check,
    outcome_check,
)
from proxy.config.model import AnalysisMethod, AnalysisSpec, OutcomeCheck

SPEC = AnalysisSpec(min_requests=100)
FULL = EPOCH_LENGTH * 100


def counts(requests: int, errors: int = 0) -> Sample:
    clicks = Moments(requests, float(requests), float(requests))
    return Sample(requests, errors, (0, 0, requests - errors), {"c": clicks})


def test_an_epoch_is_the_counts_since_its_start_and_ends_once_full_for_both():
    epochs = Epochs()
    first = epochs.recent(counts(10), counts(5), 100)
    assert first == (counts(0), counts(0), 1)  # the first epoch starts at the counts first given
    stable, candidate, k = epochs.recent(counts(10 + FULL), counts(5 + FULL - 1, 3), 100)
    assert (stable.requests, candidate.requests, candidate.errors, k) == (FULL, FULL - 1, 3, 1)
    assert candidate.latency == (0, 0, FULL - 4)
    assert candidate.outcomes == {"c": Moments(FULL - 1, FULL - 1.0, FULL - 1.0)}
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
    stable, candidate = Sample(20_000, 200, ()), Sample(20_000, 200, ())
    late_s, late_c = Sample(1_000, 10, ()), Sample(1_000, 80, ())
    verdict = assess(stable, candidate, SPEC, 0.0, recent=(late_s, late_c, 3))
    error = verdict.checks[0]
    assert (error.result, error.scope) == (Result.FAIL, "recent")
    assert error.bound == pytest.approx(
        rate_increase_bound((80, 1_000), (10, 1_000), n0=100, alpha=0.05 * 0.5 / 12)
    )
    assert (error.candidate["requests"], error.note) == (
        1_000,
        "candidate error rate is higher than allowed",
    )
    assert TOTAL_SHARE == 0.5
    assert verdict.result is Result.FAIL


def test_a_recent_check_that_passes_or_has_too_little_never_hides_the_total():
    stable, candidate = Sample(20_000, 200, ()), Sample(20_000, 1_000, ())
    thin = (Sample(10, 0, ()), Sample(10, 0, ()), 2)
    failed = assess(stable, candidate, SPEC, 0.0, recent=thin).checks[0]
    assert (failed.result, failed.scope, failed.candidate["requests"]) == (
        Result.FAIL,
        "total",
        20_000,
    )
    equal = Sample(20_000, 200, ())
    passing = assess(stable, equal, SPEC, 0.0, recent=thin)
    assert (passing.checks[0].result, passing.checks[0].scope) == (Result.PASS, "total")
    both = (Sample(1_000, 10, ()), Sample(1_000, 300, ()), 1)
    total_first = assess(stable, candidate, SPEC, 0.0, recent=both).checks[0]
    assert total_first.scope == "total"  # both failed: the counts since the start are told


def test_outcomes_and_latency_are_judged_on_the_epoch_too():
    spec = replace(SPEC, outcomes=(OutcomeCheck("click", 0.01),))
    many = Sample(20_000, 0, (), {"click": Moments(4_000, 4_000.0, 4_000.0)})
    late_s = Sample(1_000, 0, (), {"click": Moments(200, 200.0, 200.0)})
    late_c = Sample(1_000, 0, (), {"click": Moments(50, 50.0, 50.0)})
    checks = assess(many, many, spec, 0.0, recent=(late_s, late_c, 1)).checks
    click = {c.name: c for c in checks}["outcome:click"]
    assert (click.result, click.scope) == (Result.FAIL, "recent")


def test_a_difference_keeps_outcomes_the_earlier_counts_did_not_have():
    later = Sample(10, 1, (1, 2), {"click": Moments(3, 2.0, 2.0)})
    earlier = Sample(4, 0, (0, 1))
    assert later - earlier == Sample(6, 1, (1, 1), {"click": Moments(3, 2.0, 2.0)})


def test_each_check_called_alone_spends_the_whole_error_rate_by_default():
    spec = AnalysisSpec(min_requests=100, confidence=0.9)
    spread = (1,) * SIZE  # one latency a bucket: the bound moves with the error rate
    stable = Sample(300, 3, spread, {"click": Moments(300, 150.0, 150.0)})
    candidate = Sample(300, 30, spread, {"click": Moments(300, 60.0, 60.0)})
    error = error_rate_check(stable, candidate, spec, 1.28)
    assert error.bound == pytest.approx(rate_increase_bound((30, 300), (3, 300), n0=100, alpha=0.1))
    latency = latency_check(stable, candidate, spec, 1.28)
    assert latency.bound == quantile_ratio_bound(spread, spread, q=0.95, n0=100, alpha=0.1)
    assert latency.bound != quantile_ratio_bound(spread, spread, q=0.95, n0=100, alpha=0.05)
    click = outcome_check(stable, candidate, OutcomeCheck("click", 0.01), spec, 1.28)
    var_s, var_c = (0.5 - 0.25) * 300 / 299, (0.2 - 0.04) * 300 / 299
    assert click.bound == pytest.approx(
        mean_decrease_bound(Estimate(0.5, var_s, 300), Estimate(0.2, var_c, 300), n0=100, alpha=0.1)
    )


def test_the_sample_ratio_check_says_it_judged_the_counts_since_the_start():
    assigned = Sample(1_000, 0, (), assigned=900, expected=900.0)
    candidate = Sample(100, 0, (), assigned=100, expected=100.0)
    checks = {c.name: c for c in assess(assigned, candidate, SPEC, 0.0).checks}
    assert checks["sample_ratio"].scope == "total"
    fixed = replace(SPEC, method=AnalysisMethod.FIXED)
    checks = {c.name: c for c in assess(assigned, candidate, fixed, 0.0).checks}
    assert checks["sample_ratio"].scope == "window"
