"""The outcome check: has the candidate's mean of what users did fallen below stable's?"""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist

import pytest

from proxy.analysis.verdict import (
    Moments,
    Result,
    Sample,
    assess,
    outcome_check,
    sample_ratio_check,
)
from proxy.config.model import AnalysisMethod, AnalysisSpec, OutcomeBasis, OutcomeCheck

SPEC = AnalysisSpec(min_requests=100, method=AnalysisMethod.FIXED)  # the fixed-sample bounds
Z = NormalDist().inv_cdf(0.95)


def clicks(requests: int, clicked: int) -> Sample:
    """`requests` served, `clicked` of them reported a click (value 1)."""
    return Sample(requests, 0, (), {"click": Moments(clicked, clicked, clicked)})


def ratings(values: list[float]) -> Sample:
    total, squares = sum(values), sum(v * v for v in values)
    return Sample(1000, 0, (), {"rating": Moments(len(values), total, squares)})


def test_a_click_rate_that_fell_by_more_than_allowed_fails_with_the_exact_bound():
    check = OutcomeCheck("click", max_decrease=0.02)
    result = outcome_check(clicks(1000, 100), clicks(1000, 50), check, SPEC, Z)
    var_s, var_c = 0.1 * 0.9 * 1000 / 999, 0.05 * 0.95 * 1000 / 999
    bound = 0.05 - Z * math.sqrt(var_s / 1000 + var_c / 1000)
    assert result.name == "outcome:click"
    assert result.result is Result.FAIL
    assert result.observed == pytest.approx(0.05)
    assert result.bound == pytest.approx(bound)
    assert (result.stable["mean"], result.candidate["mean"]) == (0.1, 0.05)
    assert result.candidate["outcomes"] == 50 and result.candidate["requests"] == 1000


def test_a_fall_within_the_allowance_or_not_significant_passes():
    check = OutcomeCheck("click", max_decrease=0.06)
    assert outcome_check(clicks(1000, 100), clicks(1000, 50), check, SPEC, Z).result is Result.PASS
    small = OutcomeCheck("click", max_decrease=0.0)
    noisy = outcome_check(clicks(100, 10), clicks(100, 8), small, SPEC, Z)
    assert noisy.result is Result.PASS and noisy.bound is not None and noisy.bound < 0


def test_no_clicks_anywhere_passes_and_a_better_candidate_passes():
    check = OutcomeCheck("click", max_decrease=0.0)
    assert outcome_check(clicks(500, 0), clicks(500, 0), check, SPEC, Z).result is Result.PASS
    assert outcome_check(clicks(500, 10), clicks(500, 90), check, SPEC, Z).result is Result.PASS


def test_thin_data_is_inconclusive_never_failed():
    check = OutcomeCheck("click", max_decrease=0.0)
    result = outcome_check(clicks(99, 50), clicks(1000, 0), check, SPEC, Z)
    assert result.result is Result.INCONCLUSIVE and result.bound is None
    assert result.note == "fewer than 100 requests per variant in the window"
    by_outcome = OutcomeCheck("click", max_decrease=0.0, per=OutcomeBasis.OUTCOME)
    result = outcome_check(clicks(1000, 99), clicks(1000, 500), by_outcome, SPEC, Z)
    assert result.note == "fewer than 100 click outcomes per variant in the window"
    exactly = outcome_check(clicks(100, 50), clicks(100, 0), check, SPEC, Z)
    assert exactly.result is Result.FAIL  # 100 is enough


def test_relative_decrease_is_a_fraction_of_stables_mean():
    check = OutcomeCheck("click", max_decrease=0.3, relative=True)
    half = outcome_check(clicks(10_000, 1000), clicks(10_000, 500), check, SPEC, Z)
    assert half.observed == pytest.approx(0.5) and half.result is Result.FAIL
    var_s, var_c = 0.1 * 0.9 * 10_000 / 9_999, 0.05 * 0.95 * 10_000 / 9_999
    spread = math.sqrt(var_c / 10_000 + 0.25 * var_s / 10_000) / 0.1
    assert half.bound == pytest.approx(0.5 - Z * spread)
    slight = outcome_check(clicks(10_000, 1000), clicks(10_000, 900), check, SPEC, Z)
    assert slight.observed == pytest.approx(0.1) and slight.result is Result.PASS
    zero = outcome_check(clicks(1000, 0), clicks(1000, 0), check, SPEC, Z)
    assert zero.result is Result.INCONCLUSIVE and "not above 0" in zero.note


def test_per_outcome_compares_the_reported_values_themselves():
    check = OutcomeCheck("rating", max_decrease=0.5, per=OutcomeBasis.OUTCOME)
    good, worse = ratings([4.0, 5.0] * 100), ratings([3.0, 4.0] * 100)
    result = outcome_check(good, worse, check, SPEC, Z)
    assert result.observed == pytest.approx(1.0) and result.result is Result.FAIL
    assert result.stable["mean"] == 4.5 and result.stable["outcomes"] == 200


def test_the_verdict_fails_on_an_outcome_alone():
    spec = replace(SPEC, outcomes=(OutcomeCheck("click", 0.02),))
    stable, candidate = clicks(1000, 100), clicks(1000, 20)
    verdict = assess(stable, candidate, spec, 0.0)
    assert [c.name for c in verdict.checks][-1] == "outcome:click"
    assert verdict.result is Result.FAIL and [c.name for c in verdict.failing] == ["outcome:click"]


def test_notes_name_and_threshold_are_pinned_for_every_result():
    check = OutcomeCheck("click", max_decrease=0.02)
    failed = outcome_check(clicks(1000, 100), clicks(1000, 50), check, SPEC, Z)
    assert failed.note == "candidate's click mean fell more than allowed"
    passed = outcome_check(clicks(1000, 100), clicks(1000, 100), check, SPEC, Z)
    assert passed.note == "no significant decrease of click" and passed.threshold == 0.02
    relative = OutcomeCheck("click", max_decrease=0.5, relative=True)
    assert outcome_check(clicks(1000, 100), clicks(1000, 100), relative, SPEC, Z).note == (
        "no significant relative decrease of click"
    )
    thin = outcome_check(clicks(10, 1), clicks(10, 1), check, SPEC, Z)
    assert (thin.name, thin.threshold, thin.observed) == ("outcome:click", 0.02, None)
    zero = outcome_check(clicks(500, 0), clicks(500, 0), relative, SPEC, Z)
    assert (zero.name, zero.threshold) == ("outcome:click", 0.5)
    assert zero.note == "stable's mean is not above 0: no relative decrease to judge"


def test_a_variant_with_no_report_of_the_name_has_a_mean_of_zero_or_none():
    check = OutcomeCheck("click", max_decrease=0.02)
    silent = Sample(1000, 0, (), {})
    result = outcome_check(clicks(1000, 100), silent, check, SPEC, Z)
    assert result.result is Result.FAIL and result.candidate["mean"] == 0.0
    by_report = OutcomeCheck("click", max_decrease=0.02, per=OutcomeBasis.OUTCOME)
    result = outcome_check(clicks(1000, 100), silent, by_report, SPEC, Z)
    assert result.result is Result.INCONCLUSIVE and result.candidate["mean"] is None
    assert result.candidate["outcomes"] == 0


def test_a_stable_with_no_report_of_the_name_has_a_mean_of_zero():
    check = OutcomeCheck("click", max_decrease=0.0)
    result = outcome_check(Sample(1000, 0, (), {}), clicks(1000, 100), check, SPEC, Z)
    assert result.result is Result.PASS and result.stable["mean"] == 0.0


def test_two_reports_are_enough_when_min_requests_says_so():
    spec = AnalysisSpec(min_requests=1, method=AnalysisMethod.FIXED)
    check = OutcomeCheck("rating", max_decrease=0.5, per=OutcomeBasis.OUTCOME)
    two = outcome_check(ratings([4.0, 5.0]), ratings([4.0, 5.0]), check, spec, Z)
    assert two.result is Result.PASS
    one = outcome_check(ratings([4.0]), ratings([4.0]), check, spec, Z)
    assert one.result is Result.INCONCLUSIVE  # a variance needs two


def assigned(stable_served: int, candidate_served: int, share: float) -> tuple[Sample, Sample]:
    n = stable_served + candidate_served
    stable = Sample(stable_served, 0, (), {}, stable_served, n * (1 - share))
    candidate = Sample(candidate_served, 0, (), {}, candidate_served, n * share)
    return stable, candidate


def test_the_sample_ratio_check_is_a_chi_squared_test_at_one_in_a_thousand():
    stable, candidate = assigned(900, 100, 0.1)  # exactly as assigned
    check = sample_ratio_check(stable, candidate, SPEC)
    assert (check.result, check.observed, check.bound) == (Result.PASS, 0.1, 1.0)
    stable, candidate = assigned(880, 120, 0.1)  # chi2 = 400/100 + 400/900 = 4.44: p 0.035
    check = sample_ratio_check(stable, candidate, SPEC)
    assert check.result is Result.PASS
    assert check.bound == pytest.approx(math.erfc(math.sqrt((4 + 400 / 900) / 2)))
    stable, candidate = assigned(850, 150, 0.1)  # chi2 = 27.8: p 1.4e-7
    check = sample_ratio_check(stable, candidate, SPEC)
    assert check.result is Result.FAIL and check.bound is not None and check.bound < 0.001
    assert check.note.startswith("the candidate served 150 of 1000 randomly assigned requests")
    assert check.candidate["expected"] == pytest.approx(100.0)


def test_a_mismatch_makes_the_verdict_inconclusive_whatever_else_fails():
    stable, _ = assigned(850, 150, 0.1)
    failing = Sample(150, 150, (), {}, 150, 100.0)  # every candidate request failed, too
    verdict = assess(stable, failing, SPEC, 0.0)
    assert verdict.result is Result.INCONCLUSIVE and verdict.mismatched
    assert [c.name for c in verdict.failing] == ["error_rate", "sample_ratio"]
    thin = assess(*assigned(50, 5, 0.1), SPEC, 0.0)
    assert thin.checks[-1].result is Result.INCONCLUSIVE and not thin.mismatched
    assert [c.name for c in assess(Sample(300, 0, ()), Sample(300, 0, ()), SPEC, 0.0).checks] == [
        "error_rate",
        "latency",
    ]  # nothing assigned at random: no sample-ratio check


def test_an_inconclusive_sample_ratio_check_and_its_boundaries_are_pinned():
    thin = sample_ratio_check(*assigned(90, 9, 0.1), SPEC)  # 99 assigned: fewer than 100
    assert (thin.name, thin.result, thin.threshold) == ("sample_ratio", Result.INCONCLUSIVE, 0.001)
    assert thin.note == "fewer than 100 randomly assigned requests, or 5 expected of a variant"
    assert thin.candidate["assigned"] == 9 and thin.stable["assigned"] == 90
    assert sample_ratio_check(*assigned(90, 10, 0.1), SPEC).result is Result.PASS  # exactly 100
    five = sample_ratio_check(*assigned(95, 5, 0.05), SPEC)  # exactly 5 expected: tested
    assert five.result is Result.PASS


def test_a_passing_sample_ratio_check_and_a_mismatch_with_equal_counts():
    check = sample_ratio_check(*assigned(900, 100, 0.1), SPEC)
    assert check.note == "each variant served its share of the assigned requests"
    assert check.threshold == 0.001
    stable, candidate = assigned(500, 500, 0.1)  # half each where a tenth was assigned
    verdict = assess(stable, candidate, SPEC, 7.0)
    assert verdict.mismatched and verdict.result is Result.INCONCLUSIVE
    assert (verdict.at, verdict.method) == (7.0, SPEC.method)


def test_a_mismatch_verdict_says_its_method():
    sequential = replace(SPEC, method=AnalysisMethod.SEQUENTIAL)
    assert assess(*assigned(500, 500, 0.1), sequential, 1.0).method is AnalysisMethod.SEQUENTIAL
