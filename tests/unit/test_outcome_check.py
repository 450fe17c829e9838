"""The outcome check: has the candidate's mean of what users did fallen below stable's?"""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist, pvariance

import pytest

from proxy.analysis.assessment import assess
from proxy.analysis.checks import outcome_check
from proxy.analysis.intervals import Bounds
from proxy.analysis.sample_ratio import sample_ratio_check
from proxy.analysis.sequential import z_always
from proxy.analysis.verdict import Moments, Result, Sample
from proxy.config.model import AnalysisMethod, AnalysisSpec, OutcomeBasis, OutcomeCheck

N0 = 100  # min_requests: the always-valid bound's information is a size over it
SPEC = AnalysisSpec(min_requests=N0, method=AnalysisMethod.FIXED)  # the fixed-sample bounds
ALPHA = 0.05
BOUNDS = Bounds(AnalysisMethod.FIXED, N0, ALPHA)  # one check spending the whole error rate
Z = NormalDist().inv_cdf(1 - ALPHA)

# (weight, value, how many): observations of one variant, with their requests' weights
Groups = list[tuple[float, float, int]]


def reports(groups: Groups) -> Moments:
    """The moments of reports made one by one."""
    total = Moments()
    for weight, value, count in groups:
        for _ in range(count):
            total += Moments.of(value, weight)
    return total


def weighted(requests: Groups, name: str, reported: Groups) -> Sample:
    """A sample of requests of the weights in `requests` (the value is ignored) with the
    reports of outcome `name` in `reported`."""
    return Sample(
        requests=sum(n for _, _, n in requests),
        weight=sum(w * n for w, _, n in requests),
        weight2=sum(w * w * n for w, _, n in requests),
        outcomes={name: reports(reported)},
    )


def clicks(requests: int, clicked: int) -> Sample:
    """`requests` served, each weighing 1, `clicked` of them reported a click (value 1)."""
    return Sample.unweighted(requests, 0, (), {"click": Moments(clicked, *[float(clicked)] * 5)})


def click_groups(requests: int, clicked: int, weight: float = 1.0) -> Groups:
    return [(weight, 1.0, clicked), (weight, 0.0, requests - clicked)]


def ratings(values: list[float]) -> Sample:
    """1000 requests, some of which reported a rating of `values` (each weighing 1)."""
    return Sample.unweighted(1000, 0, (), {"rating": reports([(1.0, v, 1) for v in values])})


def expected_lower(
    stable: Groups,
    candidate: Groups,
    *,
    kept: float = 1.0,
    limits: tuple[float, float] = (0.0, 1.0),
    z: float = Z,
    always: float | None = None,
    n0: int = N0,
) -> float:
    """The lower bound of kept·mean_stable - mean_candidate, written out: Hajek's weighted means,
    each variance sum w² (y - mean)² / (sum w)², where an observation's variance is its own, sum
    w² (y - mean)² / sum w², or if more that of the variant's observations joined by two more at
    each end of `limits` (Agresti and Coull): its size (sum w)² / sum w² observations, with
    their mean and own variance, and the four added ones, around the mean of all of them. Then
    the margin with Bernstein's correction for what the check fears, stable's mean lifted and
    the candidate's dragged: one observation lifts a mean by at most (highest - mean) · sum w² /
    (sum w)² and drags it by (mean - lowest) · sum w² / (sum w)². `z` is the fixed factor, or
    `always` the alpha of the always-valid one (at information over n0)."""
    low, high = limits
    added = ((low, 2.0), (high, 2.0))  # (value, how many) added to each variant
    found = []
    for groups in (stable, candidate):
        w = sum(c * wt for wt, _, c in groups)
        w2 = sum(c * wt * wt for wt, _, c in groups)
        mean = sum(c * wt * y for wt, y, c in groups) / w
        size = w * w / w2
        own = sum(c * wt * wt * (y - mean) ** 2 for wt, y, c in groups) / w2
        everyone = size + sum(k for _, k in added)
        centre = (size * mean + sum(k * v for v, k in added)) / everyone
        joined = (
            size * (own + (mean - centre) ** 2) + sum(k * (v - centre) ** 2 for v, k in added)
        ) / everyone
        per = max(own, joined)  # one observation's variance
        found.append((mean, per, per / size, (high - mean) / size, (mean - low) / size))
    (ms, per_s, var_s, up_s, _), (mc, per_c, var_c, _, down_c) = found
    variance = kept * kept * var_s + var_c
    if always is not None:
        z = z_always((kept * kept * per_s + per_c) / (n0 * variance), always)
    scale = max(kept * up_s, down_c)
    return kept * ms - mc - (z * math.sqrt(variance) + z * z * scale / 6)


def test_a_click_rate_that_fell_by_more_than_allowed_fails_with_the_exact_bound():
    check = OutcomeCheck("click", max_decrease=0.02)
    result = outcome_check(clicks(1000, 100), clicks(1000, 50), check, SPEC, BOUNDS)
    # each variance is that of its requests with two clicks and two misses added (Agresti and
    # Coull): 102 clicks in 1,004 and 52 in 1,004, a little above their own 0.09 and 0.0475;
    # one request lifts stable's mean by at most 0.9 / 1000, drags the candidate's by 0.05 / 1000
    vs, vc = 102 / 1004 * (902 / 1004), 52 / 1004 * (952 / 1004)
    assert vs > 0.1 * 0.9 and vc > 0.05 * 0.95
    variance = (vs + vc) / 1000
    bound = 0.05 - Z * math.sqrt(variance) - Z * Z * (0.9 / 1000) / 6
    assert result.name == "outcome:click"
    assert result.result is Result.FAIL
    assert result.observed == pytest.approx(0.05)
    assert result.bound == pytest.approx(bound)
    assert result.bound == pytest.approx(
        expected_lower(click_groups(1000, 100), click_groups(1000, 50))
    )
    assert result.alpha == ALPHA
    assert (result.stable["mean"], result.candidate["mean"]) == (0.1, 0.05)
    assert result.candidate["outcomes"] == 50 and result.candidate["requests"] == 1000


def test_a_fall_within_the_allowance_or_not_significant_never_fails():
    check = OutcomeCheck("click", max_decrease=0.06)
    within = outcome_check(clicks(1000, 100), clicks(1000, 50), check, SPEC, BOUNDS)
    assert within.result is Result.INCONCLUSIVE  # (5 points of 6: not yet proven within)
    assert within.upper is not None and within.upper > 0.06
    proven = outcome_check(clicks(20_000, 2000), clicks(20_000, 1900), check, SPEC, BOUNDS)
    assert proven.result is Result.PASS and proven.upper is not None and proven.upper < 0.06
    small = OutcomeCheck("click", max_decrease=0.0)
    noisy = outcome_check(clicks(100, 10), clicks(100, 8), small, SPEC, BOUNDS)
    assert noisy.result is Result.SUSPECT  # (it fell: beyond a limit of 0, not proven)
    assert noisy.bound == pytest.approx(expected_lower(click_groups(100, 10), click_groups(100, 8)))
    assert noisy.bound is not None and noisy.bound < 0


def test_no_clicks_anywhere_passes_and_a_better_candidate_passes():
    check = OutcomeCheck("click", max_decrease=0.0)
    none = outcome_check(clicks(500, 0), clicks(500, 0), check, SPEC, BOUNDS)
    # no click in 500 is not certainty: each variance that of 2 clicks in 504; one click lifts
    # stable's mean by 1 / 500
    spread = 2 / 504 * (502 / 504)
    bound = -Z * math.sqrt(2 * spread / 500) - Z * Z * (1 / 500) / 6
    assert (none.result, none.observed) == (Result.INCONCLUSIVE, 0.0)  # (0 is never proven)
    assert none.bound == pytest.approx(bound)
    assert none.bound == pytest.approx(expected_lower(click_groups(500, 0), click_groups(500, 0)))
    better = outcome_check(clicks(500, 10), clicks(500, 90), check, SPEC, BOUNDS)
    assert better.result is Result.PASS


def agresti_coull(clicked: int, requests: int) -> float:
    """The variance of a click among `requests` with two clicks and two misses added."""
    rate = (clicked + 2) / (requests + 4)
    return rate * (1 - rate)


def test_a_candidate_without_a_conversion_takes_the_variance_of_two_added_at_each_end():
    # 4 of 100 on stable, none of 100 on the candidate: the candidate's own variance is 0, and
    # with it the bound would be 0.04 - 1.645 · 0.0196 - 1.645² · 0.0096 / 6 = 0.0034: failed on
    # a difference that chance makes one time in sixteen (Fisher's exact test)
    check = OutcomeCheck("click", max_decrease=0.0)
    result = outcome_check(clicks(100, 4), clicks(100, 0), check, SPEC, BOUNDS)
    own_only = 0.04 - Z * math.sqrt(0.04 * 0.96 / 100) - Z * Z * (0.96 / 100) / 6
    assert own_only == pytest.approx(0.0034, abs=1e-4)
    # the candidate's variance is that of 2 clicks in 104 (0.0189), stable's that of 6 in 104
    # (0.0544, above its own 0.0384)
    vs, vc = agresti_coull(4, 100), agresti_coull(0, 100)
    assert vs > 0.04 * 0.96
    bound = 0.04 - Z * math.sqrt((vs + vc) / 100) - Z * Z * (0.96 / 100) / 6
    assert result.bound == pytest.approx(bound)
    assert result.bound == pytest.approx(-0.0088, abs=1e-4)
    assert result.result is Result.SUSPECT and result.observed == pytest.approx(0.04)
    # the candidate's floor is its own four added requests', whatever stable's: five
    # conversions to none still pass (Fisher's exact p 0.030), six fail (p 0.014)
    five = outcome_check(clicks(100, 5), clicks(100, 0), check, SPEC, BOUNDS)
    vs = agresti_coull(5, 100)
    assert five.bound == pytest.approx(
        0.05 - Z * math.sqrt((vs + vc) / 100) - Z * Z * (0.95 / 100) / 6
    )
    assert five.result is Result.SUSPECT
    six = outcome_check(clicks(100, 6), clicks(100, 0), check, SPEC, BOUNDS)
    vs = agresti_coull(6, 100)
    assert six.bound == pytest.approx(
        0.06 - Z * math.sqrt((vs + vc) / 100) - Z * Z * (0.94 / 100) / 6
    )
    assert six.result is Result.FAIL
    # and it applies to stable's variance alike (a stable without conversions)
    worse = outcome_check(clicks(100, 0), clicks(100, 4), check, SPEC, BOUNDS)
    assert worse.bound == pytest.approx(
        -0.04
        - Z * math.sqrt((agresti_coull(0, 100) + agresti_coull(4, 100)) / 100)
        - Z * Z * (1 / 100) / 6
    )


def test_thin_data_is_inconclusive_never_failed():
    check = OutcomeCheck("click", max_decrease=0.0)
    result = outcome_check(clicks(99, 50), clicks(1000, 0), check, SPEC, BOUNDS)
    assert result.result is Result.INCONCLUSIVE and result.bound is None
    assert result.note == "fewer than 100 compared requests per variant"
    assert result.alpha is None  # nothing spent
    by_outcome = OutcomeCheck("click", max_decrease=0.0, per=OutcomeBasis.OUTCOME)
    result = outcome_check(clicks(1000, 99), clicks(1000, 500), by_outcome, SPEC, BOUNDS)
    assert result.note == "fewer than 100 click outcomes per variant"
    exactly = outcome_check(clicks(100, 50), clicks(100, 0), check, SPEC, BOUNDS)
    assert exactly.result is Result.FAIL  # 100 is enough


def test_relative_decrease_bounds_the_linear_combination_of_the_two_means():
    check = OutcomeCheck("click", max_decrease=0.3, relative=True)
    half = outcome_check(clicks(10_000, 1000), clicks(10_000, 500), check, SPEC, BOUNDS)
    assert half.observed == pytest.approx(0.5) and half.result is Result.FAIL
    # 0.7 · 0.1 - 0.05, with variance 0.7² var_s + var_c (each that of its requests with two
    # clicks and two misses added), Bernstein's scale the larger of 0.7 · 0.9 / n (stable
    # lifted) and 0.05 / n (the candidate dragged); over stable's mean, plus 0.3
    vs, vc = agresti_coull(1000, 10_000), agresti_coull(500, 10_000)
    variance = (0.49 * vs + vc) / 10_000
    lower = 0.7 * 0.1 - 0.05 - Z * math.sqrt(variance) - Z * Z * (0.7 * 0.9 / 10_000) / 6
    assert half.bound == pytest.approx(lower / 0.1 + 0.3)
    assert half.bound == pytest.approx(
        expected_lower(click_groups(10_000, 1000), click_groups(10_000, 500), kept=0.7) / 0.1 + 0.3
    )
    slight = outcome_check(clicks(10_000, 1000), clicks(10_000, 900), check, SPEC, BOUNDS)
    assert slight.observed == pytest.approx(0.1) and slight.result is Result.PASS
    assert slight.bound == pytest.approx(
        expected_lower(click_groups(10_000, 1000), click_groups(10_000, 900), kept=0.7) / 0.1 + 0.3
    )
    zero = outcome_check(clicks(1000, 0), clicks(1000, 0), check, SPEC, BOUNDS)
    assert zero.result is Result.INCONCLUSIVE and "not above 0" in zero.note


def test_a_relative_check_fails_exactly_when_the_combination_is_bounded_above_zero():
    # a candidate at exactly (1 - max_decrease) of stable's mean, without any spread: the
    # combination is 0, its bound below 0, and the relative bound below the threshold: a pass
    spec = replace(SPEC, min_requests=2)
    check = OutcomeCheck("rating", 0.5, relative=True, per=OutcomeBasis.OUTCOME, range=(0, 5))
    at = outcome_check(ratings([4.0] * 10), ratings([2.0] * 10), check, spec, BOUNDS)
    # (no variance of their own, but ten ratings are not certainty: each variance is that of
    # its ten ratings with two of 0 and two of 5 added)
    vs = pvariance([4.0] * 10 + [0.0, 0.0, 5.0, 5.0])
    vc = pvariance([2.0] * 10 + [0.0, 0.0, 5.0, 5.0])
    variance = (0.25 * vs + vc) / 10
    # a rating lifts stable's mean by at most (5 - 4) / 10, drags the candidate's by (2 - 0) / 10
    lower = 0.5 * 4 - 2 - Z * math.sqrt(variance) - Z * Z * max(0.5 * 0.1, 0.2) / 6
    assert at.bound == pytest.approx(lower / 4 + 0.5) and at.result is Result.INCONCLUSIVE
    assert at.observed == pytest.approx(0.5)


def test_per_outcome_compares_the_reported_values_themselves():
    check = OutcomeCheck("rating", max_decrease=0.5, per=OutcomeBasis.OUTCOME, range=(1, 5))
    good, worse = ratings([4.0, 5.0] * 100), ratings([3.0, 4.0] * 100)
    result = outcome_check(good, worse, check, SPEC, BOUNDS)
    assert result.observed == pytest.approx(1.0) and result.result is Result.FAIL
    assert result.stable["mean"] == 4.5 and result.stable["outcomes"] == 200
    # each own variance 0.25, below that of its 200 ratings with two of 1 and two of 5 added,
    # which each takes; Bernstein's scale the larger of (5 - 4.5) / 200 (stable lifted) and
    # (3.5 - 1) / 200 (candidate dragged)
    ends = [1.0, 1.0, 5.0, 5.0]
    vs, vc = pvariance([4.0, 5.0] * 100 + ends), pvariance([3.0, 4.0] * 100 + ends)
    assert min(vs, vc) > 0.25
    bound = 1.0 - Z * math.sqrt(vs / 200 + vc / 200) - Z * Z * (2.5 / 200) / 6
    assert result.bound == pytest.approx(bound)
    # a narrower range: smaller variances (two of 3 and two of 5 added) and correction
    narrow = replace(check, range=(3.0, 5.0))
    ends = [3.0, 3.0, 5.0, 5.0]
    vs, vc = pvariance([4.0, 5.0] * 100 + ends), pvariance([3.0, 4.0] * 100 + ends)
    assert outcome_check(good, worse, narrow, SPEC, BOUNDS).bound == pytest.approx(
        1.0 - Z * math.sqrt(vs / 200 + vc / 200) - Z * Z * (0.5 / 200) / 6
    )


def test_weighted_requests_give_hajek_means_and_variances():
    # stable's requests at two shares (weights 0.1 and 0.5), the candidate's at two (0.9, 0.5)
    stable_clicks = [(0.1, 1.0, 30), (0.1, 0.0, 570), (0.5, 1.0, 50), (0.5, 0.0, 350)]
    candidate_clicks = [(0.9, 1.0, 2), (0.9, 0.0, 98), (0.5, 1.0, 20), (0.5, 0.0, 380)]
    stable = weighted(stable_clicks, "click", stable_clicks[::2])
    candidate = weighted(candidate_clicks, "click", candidate_clicks[::2])
    check = OutcomeCheck("click", max_decrease=0.0)
    result = outcome_check(stable, candidate, check, SPEC, BOUNDS)
    mean_s, mean_c = (3 + 25) / (60 + 200), (1.8 + 10) / (90 + 200)
    assert result.stable["mean"] == pytest.approx(mean_s)  # not the plain 80 / 1000
    assert result.candidate["mean"] == pytest.approx(mean_c)  # not 22 / 500
    assert result.observed == pytest.approx(mean_s - mean_c)
    assert result.bound == pytest.approx(expected_lower(stable_clicks, candidate_clicks))
    # (each own variance, sum w² (y - m)² / sum w², is raised a little by two clicks and two
    # misses joining its effective observations, (sum w)² / sum w²: stable's 0.1063 among 637.7
    # to 0.1082, the candidate's 0.0353 among 464.6 to 0.0389)
    relative = replace(check, max_decrease=0.2, relative=True)
    rel = outcome_check(stable, candidate, relative, SPEC, BOUNDS)
    assert rel.bound == pytest.approx(
        expected_lower(stable_clicks, candidate_clicks, kept=0.8) / mean_s + 0.2
    )
    assert result.alpha == rel.alpha == ALPHA


def test_per_outcome_means_weigh_each_report_by_its_requests_weight():
    stable_ratings = [(0.2, 5.0, 60), (0.2, 3.0, 40), (0.6, 4.0, 100)]
    candidate_ratings = [(0.8, 2.0, 50), (0.8, 4.0, 50), (0.4, 5.0, 100)]
    stable = weighted([(0.2, 0.0, 3000), (0.6, 0.0, 2000)], "rating", stable_ratings)
    candidate = weighted([(0.8, 0.0, 500), (0.4, 0.0, 1500)], "rating", candidate_ratings)
    check = OutcomeCheck("rating", 0.1, per=OutcomeBasis.OUTCOME, range=(1.0, 5.0))
    result = outcome_check(stable, candidate, check, SPEC, BOUNDS)
    mean_s, mean_c = (60 + 24 + 240) / 80, (80 + 160 + 200) / 120  # 4.05 and 3.667
    assert (result.stable["mean"], result.candidate["mean"]) == (
        pytest.approx(mean_s),
        pytest.approx(mean_c),
    )
    assert (result.stable["outcomes"], result.candidate["outcomes"]) == (200, 200)
    assert result.observed == pytest.approx(mean_s - mean_c)
    assert result.bound == pytest.approx(
        expected_lower(stable_ratings, candidate_ratings, limits=(1.0, 5.0))
    )
    assert result.result is Result.FAIL


def test_one_weight_for_every_request_changes_nothing():
    # at a share of one half every request weighs 0.5: the means and bounds are the plain ones
    stable = weighted(click_groups(1000, 100, 0.5), "click", click_groups(1000, 100, 0.5)[:1])
    candidate = weighted(click_groups(800, 50, 0.5), "click", click_groups(800, 50, 0.5)[:1])
    check = OutcomeCheck("click", max_decrease=0.02)
    plain = outcome_check(clicks(1000, 100), clicks(800, 50), check, SPEC, BOUNDS)
    found = outcome_check(stable, candidate, check, SPEC, BOUNDS)
    assert found.observed == pytest.approx(plain.observed)
    assert found.bound == pytest.approx(plain.bound)
    assert found.bound == pytest.approx(
        expected_lower(click_groups(1000, 100), click_groups(800, 50))
    )


def test_a_constant_share_gives_the_plain_means():
    # at a constant share of 0.2, stable's requests weigh 0.2 and the candidate's 0.8
    stable = weighted(click_groups(1000, 100, 0.2), "click", click_groups(1000, 100, 0.2)[:1])
    candidate = weighted(click_groups(250, 20, 0.8), "click", click_groups(250, 20, 0.8)[:1])
    found = outcome_check(stable, candidate, OutcomeCheck("click", 0.0), SPEC, BOUNDS)
    assert (found.stable["mean"], found.candidate["mean"]) == (
        pytest.approx(0.1),
        pytest.approx(0.08),
    )
    assert found.bound == pytest.approx(
        expected_lower(click_groups(1000, 100, 0.2), click_groups(250, 20, 0.8))
    )


def test_a_candidate_of_min_requests_without_a_conversion_passes_at_a_low_constant_share():
    # share 0.01: 9,900 stable requests weighing 0.01 with 2 % conversions, 100 candidate
    # requests weighing 0.99 with none (as likely as 0.98¹⁰⁰ = 13 % from a candidate as good)
    stable = weighted(click_groups(9900, 198, 0.01), "click", click_groups(9900, 198, 0.01)[:1])
    candidate = weighted(click_groups(100, 0, 0.99), "click", [])
    check = OutcomeCheck("click", max_decrease=0.0)
    found = outcome_check(stable, candidate, check, SPEC, BOUNDS)
    # the candidate's variance is that of 2 clicks in 104, its own four added requests', not
    # stable's: the candidate's few requests are what is uncertain (one click lifts stable's
    # mean by 0.98 / 9,900, none can drag the candidate's)
    vs, vc = agresti_coull(198, 9900), agresti_coull(0, 100)
    bound = 0.02 - Z * math.sqrt(vs / 9900 + vc / 100) - Z * Z * (0.98 / 9900) / 6
    assert found.bound == pytest.approx(bound)
    assert found.bound == pytest.approx(-0.0028, abs=1e-4)
    assert found.result is Result.SUSPECT  # (not failed)
    plain = outcome_check(clicks(9900, 198), clicks(100, 0), check, SPEC, BOUNDS)
    assert plain.bound == pytest.approx(bound)  # (as it is when every request weighs 1)


def test_a_candidate_as_good_as_stable_with_few_expected_clicks_fails_at_most_the_stated_rate():
    # 265 requests at stable's 2 %: 5.3 clicks expected, and fewer by chance look like a drop.
    # The exact chance, over every count the candidate can have, that one look fails it. The
    # always-valid bound keeps the rate (about 1.3 %); the fixed one, whose variance is taken at
    # the candidate's own low mean, does not at so few events (9.9 %: docs/analysis.md says so).
    stable = clicks(1_000_000, 20_000)  # 2 %, well measured
    check = OutcomeCheck("click", max_decrease=0.0)
    n, rate = 265, 0.02

    def chance(bounds: Bounds) -> float:
        failing = [
            k
            for k in range(n + 1)
            if outcome_check(stable, clicks(n, k), check, SPEC, bounds).result is Result.FAIL
        ]
        return sum(math.comb(n, k) * rate**k * (1 - rate) ** (n - k) for k in failing)

    always = chance(Bounds(AnalysisMethod.SEQUENTIAL, N0, ALPHA))
    assert always <= ALPHA
    assert chance(BOUNDS) == pytest.approx(0.0992, abs=0.0005)


def test_the_sequential_bound_is_always_valid_at_the_information_over_n0():
    bounds = Bounds(AnalysisMethod.SEQUENTIAL, 100, 0.01)
    check = OutcomeCheck("click", max_decrease=0.0)
    result = outcome_check(clicks(2000, 200), clicks(500, 30), check, SPEC, bounds)
    expected = expected_lower(click_groups(2000, 200), click_groups(500, 30), always=0.01)
    assert result.bound == pytest.approx(expected)
    # by hand: each variance that of its requests with two clicks and two misses added, 202 of
    # 2,004 and 32 of 504; information (vs + vc) / (n0 · variance)
    vs, vc = agresti_coull(200, 2000), agresti_coull(30, 500)
    variance = vs / 2000 + vc / 500
    z = z_always((vs + vc) / (100 * variance), 0.01)
    scale = max(0.9 / 2000, 0.06 / 500)  # stable lifted, the candidate dragged
    assert result.bound == pytest.approx(0.04 - z * math.sqrt(variance) - z * z * scale / 6)
    relative = OutcomeCheck("click", max_decrease=0.1, relative=True)
    rel = outcome_check(clicks(2000, 200), clicks(500, 30), relative, SPEC, bounds)
    v_rel = 0.81 * vs / 2000 + vc / 500
    z_rel = z_always((0.81 * vs + vc) / (100 * v_rel), 0.01)
    scale_rel = max(0.9 * 0.9 / 2000, 0.06 / 500)
    lower = 0.09 - 0.06 - z_rel * math.sqrt(v_rel) - z_rel**2 * scale_rel / 6
    assert rel.bound == pytest.approx(lower / 0.1 + 0.1)
    assert (result.alpha, rel.alpha) == (0.01, 0.01)


def test_moments_sum_each_reports_weighted_values():
    one = Moments.of(3.0, 0.5)
    assert one == Moments(1, 0.5, 0.25, 1.5, 0.75, 2.25)
    two = one + Moments.of(1.0, 2.0)
    assert two == Moments(2, 2.5, 4.25, 3.5, 4.75, 6.25)
    assert two - one == Moments(1, 2.0, 4.0, 2.0, 4.0, 4.0)


def test_the_verdict_fails_on_an_outcome_alone():
    spec = replace(SPEC, outcomes=(OutcomeCheck("click", 0.02),))
    stable, candidate = clicks(1000, 100), clicks(1000, 20)
    verdict = assess(stable, candidate, spec, 0.0)
    assert [c.name for c in verdict.checks][-1] == "outcome:click"
    assert verdict.result is Result.FAIL and [c.name for c in verdict.failing] == ["outcome:click"]
    click = verdict.checks[-1]
    assert click.alpha == pytest.approx(0.05 / 3)  # the error rate split among three checks
    z = NormalDist().inv_cdf(1 - 0.05 / 3)
    assert click.bound == pytest.approx(
        expected_lower(click_groups(1000, 100), click_groups(1000, 20), z=z)
    )


def test_notes_name_and_threshold_are_pinned_for_every_result():
    check = OutcomeCheck("click", max_decrease=0.02)
    failed = outcome_check(clicks(1000, 100), clicks(1000, 50), check, SPEC, BOUNDS)
    assert failed.note == "candidate's click mean fell more than allowed"
    unknown = outcome_check(clicks(1000, 100), clicks(1000, 100), check, SPEC, BOUNDS)
    assert unknown.note == "not yet known whether the decrease of click is within the allowed one"
    assert unknown.threshold == 0.02
    passed = outcome_check(clicks(20_000, 2000), clicks(20_000, 2000), check, SPEC, BOUNDS)
    assert passed.note == "the decrease of click is within the allowed one"
    suspect = outcome_check(clicks(1000, 100), clicks(1000, 70), check, SPEC, BOUNDS)
    assert suspect.note == "the decrease of click looks larger than allowed, not yet proven"
    relative = OutcomeCheck("click", max_decrease=0.5, relative=True)
    assert outcome_check(clicks(1000, 100), clicks(1000, 100), relative, SPEC, BOUNDS).note == (
        "the relative decrease of click is within the allowed one"
    )
    thin = outcome_check(clicks(10, 1), clicks(10, 1), check, SPEC, BOUNDS)
    assert (thin.name, thin.threshold, thin.observed) == ("outcome:click", 0.02, None)
    zero = outcome_check(clicks(500, 0), clicks(500, 0), relative, SPEC, BOUNDS)
    assert (zero.name, zero.threshold, zero.bound) == ("outcome:click", 0.5, None)
    assert zero.note == "stable's mean is not above 0: no relative decrease to judge"


def test_a_variant_with_no_report_of_the_name_has_a_mean_of_zero_or_none():
    check = OutcomeCheck("click", max_decrease=0.02)
    silent = Sample.unweighted(1000, 0)
    result = outcome_check(clicks(1000, 100), silent, check, SPEC, BOUNDS)
    assert result.result is Result.FAIL and result.candidate["mean"] == 0.0
    by_report = OutcomeCheck("click", max_decrease=0.02, per=OutcomeBasis.OUTCOME)
    result = outcome_check(clicks(1000, 100), silent, by_report, SPEC, BOUNDS)
    assert result.result is Result.INCONCLUSIVE and result.candidate["mean"] is None
    assert result.candidate["outcomes"] == 0


def test_a_stable_with_no_report_of_the_name_has_a_mean_of_zero():
    check = OutcomeCheck("click", max_decrease=0.0)
    result = outcome_check(Sample.unweighted(1000, 0), clicks(1000, 100), check, SPEC, BOUNDS)
    assert result.result is Result.PASS and result.stable["mean"] == 0.0


def test_two_reports_are_enough_when_min_requests_says_so():
    spec = AnalysisSpec(min_requests=1, method=AnalysisMethod.FIXED)
    check = OutcomeCheck("rating", max_decrease=0.5, per=OutcomeBasis.OUTCOME, range=(1, 5))
    two = outcome_check(ratings([4.0, 5.0]), ratings([4.0, 5.0]), check, spec, BOUNDS)
    assert two.result is Result.INCONCLUSIVE and two.bound is not None  # (bounded, if widely)
    one = outcome_check(ratings([4.0]), ratings([4.0]), check, spec, BOUNDS)
    assert one.result is Result.INCONCLUSIVE  # a variance needs two
    assert one.note == "fewer than 1 rating outcomes per variant"


def assigned(stable_served: int, candidate_served: int, share: float) -> tuple[Sample, Sample]:
    n = stable_served + candidate_served
    stable = replace(
        Sample.unweighted(stable_served, 0), assigned=stable_served, expected=n * (1 - share)
    )
    candidate = replace(
        Sample.unweighted(candidate_served, 0), assigned=candidate_served, expected=n * share
    )
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
    assert check.note.startswith("the candidate was assigned 150 of 1000 randomly assigned")
    assert check.candidate["expected"] == pytest.approx(100.0)


def test_a_mismatch_makes_the_verdict_an_error_whatever_else_fails():
    stable, _ = assigned(850, 150, 0.1)
    failing = replace(Sample.unweighted(150, 150), assigned=150, expected=100.0)  # all failed
    verdict = assess(stable, failing, SPEC, 0.0)
    assert verdict.result is Result.ERROR and verdict.checks[-1].result is Result.FAIL
    assert [c.name for c in verdict.failing] == ["error_rate", "sample_ratio"]
    thin = assess(*assigned(50, 5, 0.1), SPEC, 0.0)
    assert thin.checks[-1].result is Result.INCONCLUSIVE and thin.result is not Result.ERROR
    plain = Sample.unweighted(300, 0)
    assert [c.name for c in assess(plain, plain, SPEC, 0.0).checks] == [
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
    assert check.note == "each variant was assigned its share of the requests"
    assert check.threshold == 0.001
    stable, candidate = assigned(500, 500, 0.1)  # half each where a tenth was assigned
    verdict = assess(stable, candidate, SPEC, 7.0)
    assert verdict.checks[-1].result is Result.FAIL and verdict.result is Result.ERROR
    assert (verdict.at, verdict.method) == (7.0, SPEC.method)


def test_a_mismatch_verdict_says_its_method():
    sequential = replace(SPEC, method=AnalysisMethod.SEQUENTIAL)
    assert assess(*assigned(500, 500, 0.1), sequential, 1.0).method is AnalysisMethod.SEQUENTIAL
