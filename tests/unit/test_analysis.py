"""The analysis core: histograms, statistics, verdicts and windows, without a server."""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from dataclasses import replace

import pytest

from proxy.analysis.histogram import (
    BOUNDS,
    SIZE,
    bucket_of,
    quantile,
    quantile_bounds,
    value_at_rank,
    value_of,
)
from proxy.analysis.metric_check import Reading, metric_check
from proxy.analysis.verdict import (
    Moments,
    Result,
    Sample,
    assess,
    difference_lower_bound,
    wilson,
)
from proxy.analysis.window import SLOTS, LocalObservations, Window, WindowRecorder
from proxy.config.model import (
    AnalysisMethod,
    AnalysisSpec,
    Cohort,
    Comparison,
    KeySource,
    LatencyMeasure,
    MetricCheck,
    Route,
    Source,
    Upstream,
    Variant,
)
from proxy.outcome import Outcome
from proxy.routing import Decision, Reason

SPEC = AnalysisSpec(
    min_requests=200,
    max_error_rate_increase=0.01,
    max_latency_ratio=1.5,
    method=AnalysisMethod.FIXED,  # (these tests pin the fixed-sample bounds)
)
ROUTE_FOR_WINDOWS = Route(
    name="r",
    path_prefix="/",
    stable=Upstream("http://127.0.0.1:1"),
    candidate=Upstream("http://127.0.0.1:2"),
    cohort=Cohort((KeySource(Source.HEADER, "X-User-Id"),), "s"),
)
DECISION = Decision(Variant.STABLE, Reason.BUCKET, 0.0, None, 1, "u")
Z95 = 1.6448536269514722


def histogram(latencies: list[float]) -> tuple[int, ...]:
    counts = [0] * SIZE
    for latency in latencies:
        counts[bucket_of(latency)] += 1
    return tuple(counts)


def sample(n: int, errors: int, latencies: list[float] | None = None) -> Sample:
    latencies = latencies if latencies is not None else [0.02] * (n - errors)
    return Sample(n, errors, histogram(latencies))


# --- histogram --------------------------------------------------------------------------------


def test_buckets_cover_the_range_with_five_percent_resolution():
    assert bucket_of(0.0) == 0 and bucket_of(1e6) == SIZE - 1
    for seconds in (0.001, 0.0173, 0.25, 3.3, 59.0):
        assert abs(value_of(bucket_of(seconds)) / seconds - 1) < 0.05
    assert all(b < c for b, c in itertools.pairwise(BOUNDS))


def test_quantile_matches_the_exact_quantile():
    rng = random.Random(3)
    values = sorted(rng.lognormvariate(math.log(0.05), 0.5) for _ in range(5000))
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = values[math.ceil(q * len(values)) - 1]
        assert abs(quantile(histogram(values), q) / exact - 1) < 0.06


def test_quantile_bounds_cover_the_true_quantile_at_the_stated_rate():
    rng = random.Random(11)
    true_p95 = math.exp(math.log(0.05) + 0.5 * 1.6448536269514722)
    misses_low = misses_high = 0
    runs = 400
    for _ in range(runs):
        values = [rng.lognormvariate(math.log(0.05), 0.5) for _ in range(300)]
        low, high = quantile_bounds(histogram(values), 0.95, Z95)
        misses_low += low > true_p95 * 1.05  # 5 % bucket resolution
        misses_high += high < true_p95 / 1.05
    # One-sided 95 % bounds: each side misses at most ~5 % of the time.
    assert misses_low / runs < 0.08 and misses_high / runs < 0.08


def test_the_lowest_bucket_stands_for_its_bound_and_the_others_for_their_geometric_middle():
    assert value_of(0) == BOUNDS[0] == 0.0005
    assert value_of(1) == pytest.approx(0.0005 * 1.1**0.5, rel=1e-12)  # √(0.0005 · 0.00055)


def test_latencies_above_the_top_bucket_count_as_the_top_bound():
    """The last, open bucket catches anything slower than 0.0005 · 1.1^140 ≈ 311.85 s."""
    assert (len(BOUNDS), SIZE) == (141, 142)
    assert BOUNDS[-1] == pytest.approx(311.8501278869912, rel=1e-12)
    assert bucket_of(BOUNDS[-1]) == SIZE - 2 and bucket_of(312.0) == bucket_of(1e6) == SIZE - 1
    assert value_of(SIZE - 1) == BOUNDS[-1]
    assert quantile(histogram([400.0] * 10), 0.5) == BOUNDS[-1]


def test_ranks_are_one_based_and_clamped_to_the_sample():
    counts = [0] * SIZE
    counts[10] = counts[20] = 1
    assert [value_at_rank(counts, rank) for rank in (-1, 0, 1, 2, 3)] == [
        value_of(10),
        value_of(10),
        value_of(10),
        value_of(20),
        value_of(20),
    ]


def test_a_histogram_without_buckets_is_an_error():
    with pytest.raises(ValueError, match=r"^empty histogram$"):
        value_at_rank((), 1)


def test_a_histogram_without_observations_is_an_error_too():
    with pytest.raises(ValueError, match=r"^empty histogram$"):
        value_at_rank([0] * SIZE, 1)


def ranked(below: int, ranks: int) -> list[int]:
    """Counts with `below` observations in bucket 1, then one in each of the next `ranks`
    buckets: the observation of rank `below + k` (k = 1..ranks) is alone in bucket k + 1."""
    counts = [0] * SIZE
    counts[1] = below
    for bucket in range(2, ranks + 2):
        counts[bucket] = 1
    return counts


# The ranks n·q ∓ z·√(n·q·(1 - q)) (floor for the lower bound, ceiling plus one for the upper),
# computed with z = scipy.stats.norm.ppf(0.95). scipy.stats.binom confirms each one-sided bound
# misses the true quantile less than 5 % of the time: 2.8 % and 2.8 % for (100, 0.5); 2.9 % and
# 1.6 % for (300, 0.95).
@pytest.mark.parametrize(
    ("below", "ranks", "q", "low_rank", "high_rank"),
    [
        (0, 100, 0.5, 41, 60),  # 100 observations, the median
        (270, 30, 0.95, 278, 293),  # 300 observations, p95
    ],
)
def test_quantile_bounds_are_the_order_statistics_at_the_normal_approximation_ranks(
    below, ranks, q, low_rank, high_rank
):
    counts = ranked(below, ranks)
    assert quantile_bounds(counts, q, Z95) == (
        value_of(low_rank - below + 1),
        value_of(high_rank - below + 1),
    )


# --- statistics -------------------------------------------------------------------------------


def test_wilson_interval_reference_values():
    low, high = wilson(10, 100, 1.959963984540054)
    assert (round(low, 4), round(high, 4)) == (0.0552, 0.1744)  # the textbook 95 % interval
    low, high = wilson(0, 50, 1.959963984540054)
    assert low == 0.0 and round(high, 4) == 0.0713


def test_difference_bound_is_below_the_observed_difference():
    assert difference_lower_bound(30, 300, 3, 300, Z95) < 0.09
    assert difference_lower_bound(30, 300, 3, 300, Z95) > 0.05
    assert difference_lower_bound(0, 300, 0, 300, Z95) < 0


def test_the_wilson_upper_bound_of_all_successes_is_exactly_one():
    """Rounding would put it a hair above 1 (1.0000000000000002 for 25 of 25)."""
    low, high = wilson(25, 25, Z95)
    assert high == 1.0
    assert low == pytest.approx(0.902346493993949, rel=1e-12)  # statsmodels proportion_confint


# Newcombe's hybrid score lower bound of p1 - p2, one-sided at 95 %: the lower end of the
# two-sided 90 % interval computed by statsmodels' confint_proportions_2indep(count1, nobs1,
# count2, nobs2, method="newcomb", compare="diff", alpha=0.10) (statsmodels 0.15).
NEWCOMBE_95 = [
    ((30, 300, 3, 300), 0.060960339364229676),
    ((24, 400, 4, 400), 0.02935821537379701),
    ((12, 200, 2, 200), 0.02028682643032558),
    ((6, 300, 3, 300), -0.0076165343410941385),
    ((0, 300, 0, 300), -0.008937872175128186),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_95)
def test_difference_bound_is_newcombes_hybrid_score_bound(counts, expected):
    e1, n1, e2, n2 = counts
    assert difference_lower_bound(e1, n1, e2, n2, Z95) == pytest.approx(expected, rel=1e-12)


# --- verdicts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stable", "candidate", "expected"),
    [
        (sample(300, 0), sample(300, 30), Result.FAIL),  # 10 % 5xx against none
        (sample(400, 4), sample(400, 24), Result.FAIL),  # a real +5 point increase
        (sample(300, 3), sample(300, 6), Result.PASS),  # noise on a few hundred requests
        (sample(300, 0), sample(300, 0), Result.PASS),
        (sample(300, 0), sample(300, 3), Result.PASS),  # 1 % where 1 % is allowed
        (sample(1000, 100), sample(300, 33), Result.PASS),  # both bad alike: not the candidate
        (sample(300, 0), sample(199, 100), Result.INCONCLUSIVE),  # too few: never fail
        (sample(150, 0), sample(300, 0), Result.INCONCLUSIVE),
    ],
)
def test_error_rate_check(stable, candidate, expected):
    check = assess(stable, candidate, SPEC, 0.0).checks[0]
    assert check.name == "error_rate"
    assert check.result is expected


def test_latency_check_fails_a_candidate_three_times_slower():
    rng = random.Random(5)
    fast = [rng.lognormvariate(math.log(0.02), 0.3) for _ in range(300)]
    slow = [3 * rng.lognormvariate(math.log(0.02), 0.3) for _ in range(300)]
    verdict = assess(Sample(300, 0, histogram(fast)), Sample(300, 0, histogram(slow)), SPEC, 7.0)
    latency = verdict.checks[1]
    assert (latency.name, latency.result, verdict.result) == ("latency", Result.FAIL, Result.FAIL)
    assert latency.observed is not None and latency.bound is not None
    assert 2.4 < latency.observed < 3.6
    assert latency.bound > SPEC.max_latency_ratio
    assert verdict.failing == (latency,)


def test_latency_check_passes_equal_and_slightly_slower_candidates():
    rng = random.Random(6)
    base = [rng.lognormvariate(math.log(0.02), 0.3) for _ in range(300)]
    for factor in (1.0, 1.2):
        other = [factor * rng.lognormvariate(math.log(0.02), 0.3) for _ in range(300)]
        check = assess(
            Sample(300, 0, histogram(base)), Sample(300, 0, histogram(other)), SPEC, 0.0
        ).checks[1]
        assert check.result is Result.PASS


def test_verdict_json_names_values_thresholds_and_sizes():
    verdict = assess(sample(300, 0), sample(300, 30), SPEC, 12.5).to_json()
    assert verdict["result"] == "fail" and verdict["at"] == 12.5
    error = verdict["checks"][0]
    assert error["threshold"] == 0.01 and error["observed"] == pytest.approx(0.1)
    assert error["candidate"] == {
        "requests": 300,
        "errors": 30,
        "error_rate": 0.1,
        "latency_samples": 270,
    }
    assert verdict["checks"][1]["stable"]["latency_quantile_seconds"] == pytest.approx(
        0.02, rel=0.05
    )


def test_inconclusive_wins_over_pass_and_fail_over_both():
    few = assess(sample(100, 0), sample(100, 0), SPEC, 0.0)
    assert few.result is Result.INCONCLUSIVE
    assert all(c.result is Result.INCONCLUSIVE for c in few.checks)
    all_errors = assess(sample(300, 0), Sample(300, 300, histogram([])), SPEC, 0.0)
    assert [c.result for c in all_errors.checks] == [Result.FAIL, Result.INCONCLUSIVE]
    assert all_errors.result is Result.FAIL


def test_metric_checks_join_the_verdict_and_decide_it_like_any_check():
    metric = MetricCheck("gpu", "q", ((Comparison.MAX, 1.0),))
    over = metric_check(metric, Reading("q", 0.5), Reading("q", 2.0))
    unsure = metric_check(metric, Reading("q", 0.5), Reading("q", None, "no data"))
    within = metric_check(metric, Reading("q", 0.5), Reading("q", 0.5))
    passing = sample(200, 0), sample(200, 0)
    failed = assess(*passing, SPEC, 0.0, metrics=(within, over))
    assert failed.result is Result.FAIL and failed.failing == (over,)
    assert failed.checks[2:] == (within, over)
    assert assess(*passing, SPEC, 0.0, metrics=(unsure,)).result is Result.INCONCLUSIVE
    assert assess(*passing, SPEC, 0.0, metrics=(within,)).result is Result.PASS
    mismatched = replace(passing[1], assigned=300, expected=150.0)
    skewed = replace(passing[0], assigned=0, expected=150.0)
    held = assess(skewed, mismatched, SPEC, 0.0, metrics=(over,))
    assert held.mismatched and held.result is Result.INCONCLUSIVE


def test_exactly_min_requests_per_variant_is_enough_for_a_verdict():
    verdict = assess(sample(200, 0), sample(200, 0), SPEC, 0.0)
    assert [c.result for c in verdict.checks] == [Result.PASS, Result.PASS]


def test_latency_needs_min_requests_successful_requests_per_variant():
    verdict = assess(sample(300, 0), sample(300, 101), SPEC, 0.0)  # 199 successes
    assert [c.result for c in verdict.checks] == [Result.FAIL, Result.INCONCLUSIVE]


def test_inconclusive_checks_report_threshold_sizes_and_why():
    stable, candidate = sample(300, 0), sample(150, 0)
    error, latency = (c.to_json() for c in assess(stable, candidate, SPEC, 0.0).checks)
    sizes = {"stable": stable.summary(), "candidate": candidate.summary()}
    why = "fewer than 200 requests per variant in the window"
    assert error == {
        "check": "error_rate",
        "result": "inconclusive",
        "threshold": 0.01,
        "observed": None,
        "bound": None,
        **sizes,
        "note": why,
        "scope": "window",
    }
    assert latency == {
        "check": "latency",
        "result": "inconclusive",
        "threshold": 1.5,
        "observed": None,
        "bound": None,
        **sizes,
        "note": why,
        "scope": "window",
    }


@pytest.mark.parametrize(
    ("candidate_errors", "result", "observed", "bound", "note"),
    [
        (30, "fail", 0.09, NEWCOMBE_95[0][1], "candidate error rate is higher than allowed"),
        (6, "pass", 0.01, NEWCOMBE_95[3][1], "no significant error rate increase"),
    ],
)
def test_error_rate_check_reports_the_difference_its_bound_and_the_outcome(
    candidate_errors, result, observed, bound, note
):
    stable, candidate = sample(300, 3), sample(300, candidate_errors)
    check = assess(stable, candidate, SPEC, 0.0).checks[0]
    assert check.to_json() == {
        "check": "error_rate",
        "result": result,
        "threshold": 0.01,
        "observed": pytest.approx(observed, rel=1e-12),
        "bound": pytest.approx(bound, rel=1e-12),
        "stable": stable.summary(),
        "candidate": candidate.summary(),
        "note": note,
        "scope": "window",
    }


def test_an_error_rate_bound_exactly_at_the_threshold_passes():
    stable, candidate = sample(300, 3), sample(300, 30)
    bound = assess(stable, candidate, SPEC, 0.0).checks[0].bound
    assert bound is not None
    at = replace(SPEC, max_error_rate_increase=bound)
    below = replace(SPEC, max_error_rate_increase=math.nextafter(bound, 0.0))
    assert assess(stable, candidate, at, 0.0).checks[0].result is Result.PASS
    assert assess(stable, candidate, below, 0.0).checks[0].result is Result.FAIL


# Bucket 39 holds 0.02 s and bucket 51 holds 0.06 s; a bucket stands for its geometric middle
# 0.0005 · 1.1^(i - ½), so a single-bucket sample's quantile and both its bounds are that value.
P95_AT_20MS = 0.0005 * 1.1**38.5  # 0.0196 s
P95_AT_60MS = 0.0005 * 1.1**50.5  # 0.0616 s


def test_latency_check_reports_the_ratio_its_bound_and_the_quantiles():
    stable, candidate = sample(300, 0, [0.02] * 300), sample(300, 0, [0.06] * 300)
    check = assess(stable, candidate, SPEC, 0.0).checks[1]
    assert check.to_json() == {
        "check": "latency",
        "result": "fail",
        "threshold": 1.5,
        "observed": pytest.approx(1.1**12, rel=1e-12),
        "bound": pytest.approx(1.1**12, rel=1e-12),
        "stable": {**stable.summary(), "latency_quantile_seconds": pytest.approx(P95_AT_20MS)},
        "candidate": {
            **candidate.summary(),
            "latency_quantile_seconds": pytest.approx(P95_AT_60MS),
        },
        "note": "candidate p95 is slower than allowed",
        "scope": "window",
    }


@pytest.mark.parametrize(
    ("q", "slower", "note"),
    [
        (0.95, 0.06, "candidate p95 is slower than allowed"),
        (0.95, 0.021, "p95 within the ratio"),
        (0.999, 0.021, "p99.9 within the ratio"),
        (0.5, 0.06, "candidate p50 is slower than allowed"),
    ],
)
def test_latency_note_names_the_quantile_as_a_percentile(q, slower, note):
    spec = replace(SPEC, latency_quantile=q)
    stable, candidate = sample(300, 0, [0.02] * 300), sample(300, 0, [slower] * 300)
    assert assess(stable, candidate, spec, 0.0).checks[1].note == note


def test_a_latency_bound_exactly_at_the_threshold_passes():
    rng = random.Random(5)
    fast = Sample(300, 0, histogram([rng.lognormvariate(math.log(0.02), 0.3) for _ in range(300)]))
    slow = Sample(300, 0, histogram([rng.lognormvariate(math.log(0.05), 0.3) for _ in range(300)]))
    bound = assess(fast, slow, SPEC, 0.0).checks[1].bound
    assert bound is not None
    at = replace(SPEC, max_latency_ratio=bound)
    below = replace(SPEC, max_latency_ratio=math.nextafter(bound, 0.0))
    assert assess(fast, slow, at, 0.0).checks[1].result is Result.PASS
    assert assess(fast, slow, below, 0.0).checks[1].result is Result.FAIL


# --- windows ----------------------------------------------------------------------------------


def test_window_keeps_only_the_last_span():
    window = Window(span=60.0)
    for t in range(120):  # one request a second for two minutes, every fifth an error
        window.add(1000.0 + t, error=t % 5 == 0, latency=0.01)
    s = window.sample(1119.5)
    assert 55 <= s.requests <= 60  # the newest slot is still filling
    assert abs(s.errors - s.requests / 5) <= 1
    assert sum(s.latency) == s.requests - s.errors
    assert window.sample(1119.5 + 61).requests == 0  # a minute of silence empties it


def test_window_slots_are_numbered_by_time_and_hold_exactly_what_was_counted():
    window = Window(span=60.0)  # 5 s slots
    window.add(1000.0, error=False, latency=0.01)  # slot 200
    window.add(1004.9, error=True, latency=None)  # slot 200
    window.add(1005.0, error=False, latency=2.0)  # slot 201
    slots = sorted(window.slots(1005.0))
    assert [(number, requests, errors) for number, requests, errors, *_ in slots] == [
        (200, 2, 1),
        (201, 1, 0),
    ]
    assert slots[0][3][bucket_of(0.01)] == 1 and sum(slots[0][3]) == 1
    assert slots[1][3][bucket_of(2.0)] == 1 and sum(slots[1][3]) == 1
    assert [n for n, *_ in window.slots(1059.9)] == [200, 201]  # the window holds 200..211
    assert [n for n, *_ in window.slots(1060.0)] == [201]  # 201..212
    assert window.slots(1065.0) == []
    assert window.slots(999.0) == []  # slots newer than `now` are not in its window


def test_window_memory_is_bounded():
    window = Window(span=10.0)
    for i in range(50_000):
        window.add(i * 0.001, error=False, latency=0.001 * (i % 100))
    assert len(window._latency) == SLOTS and all(len(h) == SIZE for h in window._latency)


def test_local_observations_per_route_and_variant():
    observations = LocalObservations({"r": 30.0})
    observations.windows["r"]["candidate"].add(5.0, True, None)
    stable, candidate = observations.samples("r", 5.0)
    assert (stable.requests, candidate.requests, candidate.errors) == (0, 1, 1)


def test_observations_keep_windows_of_unchanged_span_across_updates():
    observations = LocalObservations({"a": 30.0, "b": 30.0})
    a, b = observations.windows["a"], observations.windows["b"]
    observations.update({"a": 30.0, "b": 60.0, "c": 10.0})
    assert observations.windows["a"] is a
    assert observations.windows["b"] is not b
    assert set(observations.windows) == {"a", "b", "c"}


def test_a_slot_from_exactly_one_span_ago_has_left_the_window():
    window = Window(span=60.0)  # 5 s slots
    window.add(1000.0, error=False, latency=0.01)  # slot 200
    assert window.sample(1059.9).requests == 1  # slot 211: the window holds slots 200..211
    assert window.sample(1060.0).requests == 0  # slot 212: slots 201..212


# A 10 s window has slots of 10/12 s, which is not exact in binary: at these wall-clock times the
# rounded quotient now / slot is a whole number while the floor division is one less. Slots are
# numbered by floor division everywhere, so a request and a sample agree on where it belongs.
EPOCH = 1_800_000_000.0  # 1800000000.0 / (10 / 12) rounds to 2160000000; its floor is 2159999999


def test_a_request_is_in_a_sample_taken_the_instant_it_was_counted():
    window = Window(span=10.0)
    window.add(EPOCH, error=True, latency=None)
    assert (window.sample(EPOCH).requests, window.sample(EPOCH).errors) == (1, 1)


def test_a_request_stays_in_the_window_until_its_slot_is_a_full_span_old():
    window = Window(span=10.0)
    window.add(EPOCH, error=False, latency=0.01)
    last_instant = 1800000009.1666667  # floor(t / slot) is 11 slots later; t / slot rounds to 12
    assert window.sample(last_instant).requests == 1
    assert window.sample(math.nextafter(last_instant, math.inf)).requests == 0
    assert len(window.slots(last_instant)) == 1  # what a fleet's flush sends: the same slots
    assert window.slots(math.nextafter(last_instant, math.inf)) == []


def test_outcomes_go_into_their_slot_and_leave_with_it():
    window = Window(span=60.0)  # 5 s slots
    window.add_outcome(1000.0, "click", 1.0)
    window.add_outcome(1004.0, "click", 2.0)
    window.add_outcome(1005.0, "rating", 4.0)
    assert window.sample(1005.0).outcomes == {
        "click": Moments(2, 3.0, 5.0),
        "rating": Moments(1, 4.0, 16.0),
    }
    slots = sorted(window.slots(1005.0))
    assert [slot.outcomes for slot in slots] == [
        {"click": Moments(2, 3.0, 5.0)},
        {"rating": Moments(1, 4.0, 16.0)},
    ]
    assert window.sample(1060.0).outcomes == {"rating": Moments(1, 4.0, 16.0)}
    assert window.sample(1065.0).outcomes == {}
    window.add(1065.0, error=False, latency=0.01)  # the slot is reused: its outcomes are gone
    window.add_outcome(1120.0, "click", 1.0)  # slot 224 reuses 200's place in the ring
    assert window.sample(1120.0).outcomes == {"click": Moments(1, 1.0, 1.0)}


def test_an_outcome_name_seen_in_several_slots_is_summed_over_them():
    window = Window(span=60.0)
    for at in (1000.0, 1005.0, 1010.0):
        window.add_outcome(at, "click", 1.0)
    assert window.sample(1010.0).outcomes == {"click": Moments(3, 3.0, 3.0)}


def test_slots_and_samples_agree_on_a_slot_whose_number_rounds_up():
    window = Window(span=10.0)
    window.add(EPOCH, error=False, latency=0.01)
    assert [slot.number for slot in window.slots(EPOCH)] == [2159999999]


def test_the_recorder_feeds_the_latency_the_route_judges():
    routes = {
        measure: replace(
            ROUTE_FOR_WINDOWS, name=measure.value, analysis=AnalysisSpec(latency=measure)
        )
        for measure in LatencyMeasure
    }
    observations = LocalObservations({name: 60.0 for name in (m.value for m in routes)})
    recorder = WindowRecorder(observations)
    recorder.use(list(routes.values()))
    for route in routes.values():
        recorder.record(
            Outcome(
                1000.0,
                route.name,
                "POST",
                DECISION,
                Variant.STABLE,
                200,
                duration=3.0,
                ttfb=0.01,
                ttft=0.5,
            )
        )
    for measure, expected in (
        (LatencyMeasure.DURATION, 3.0),
        (LatencyMeasure.TTFB, 0.01),
        (LatencyMeasure.TTFT, 0.5),
    ):
        stable, _ = observations.samples(measure.value, 1003.0)
        assert stable.latency[bucket_of(expected)] == 1, measure


def test_observations_take_outcomes_only_for_analysed_routes():
    observations = LocalObservations({"r": 30.0})
    observations.add_outcome("r", Variant.CANDIDATE, "click", 1.0, 5.0)
    observations.add_outcome("other", Variant.CANDIDATE, "click", 1.0, 5.0)
    stable, candidate = observations.samples("r", 5.0)
    assert (stable.outcomes, candidate.outcomes) == ({}, {"click": Moments(1, 1.0, 1.0)})
    assert set(observations.windows) == {"r"}


def test_moments_add_up_field_by_field():
    assert Moments(1, 2.0, 3.0) + Moments(10, 20.0, 30.0) == Moments(11, 22.0, 33.0)
    assert Moments() == Moments(0, 0.0, 0.0)


def test_random_assignments_are_counted_per_slot_and_reset_with_it():
    window = Window(span=60.0)  # 5 s slots
    assert window.sample(1000.0).assigned == 0 and window.sample(1000.0).expected == 0.0
    window.expect(1000.0, 0.25, True, True)
    window.expect(1001.0, 0.25, False, False)
    window.expect(1005.0, 0.5, True, True)
    window.expect(1006.0, 0.5, False, True)
    sample = window.sample(1006.0)
    assert (sample.assigned, sample.expected) == (2, 1.5)
    assert (sample.users, sample.users_expected) == (2, 1.25)
    window.expect(1060.0, 0.1, False, True)  # slot 212 reuses slot 200's place: its counts are gone
    sample = window.sample(1060.0)
    assert (sample.assigned, sample.expected) == pytest.approx((1, 1.1))
    assert (sample.users, sample.users_expected) == pytest.approx((1, 1.1))


def test_the_recorder_counts_random_assignments_for_both_variants():
    observations = LocalObservations({"r": 60.0}, {"r": "identity"})
    recorder = WindowRecorder(observations)
    recorder.use([replace(ROUTE_FOR_WINDOWS, analysis=AnalysisSpec())])
    share = Decision(Variant.STABLE, Reason.BUCKET, 0.3, None, 9000, "u")
    pinned = Decision(Variant.CANDIDATE, Reason.PINNED, 0.3, "staff", None, "s")
    recorder.record(Outcome(1000.0, "r", "GET", share, Variant.STABLE, 200, duration=0.01))
    recorder.record(Outcome(1000.0, "r", "GET", pinned, Variant.CANDIDATE, 200, duration=0.01))
    recorder.record(Outcome(1001.0, "r", "GET", share, Variant.STABLE, 200, duration=0.01))
    stable, candidate = observations.samples("r", 1002.0)
    assert stable.assigned == 2 and stable.expected == pytest.approx(1.4)
    assert candidate.assigned == 0 and candidate.expected == pytest.approx(0.6)
    # the user's second request is not a new user; two requests from one user: 4 / 2
    assert (stable.users, stable.users_expected) == pytest.approx((1, 0.7))
    assert (candidate.users, candidate.users_expected) == pytest.approx((0, 0.3))
    assert stable.design_effect == candidate.design_effect == 2.0
    assert observations.generation("r") == hashlib.blake2b(b"identity", digest_size=6).hexdigest()
    assert observations.generation("other") == hashlib.blake2b(b"", digest_size=6).hexdigest()


def test_a_fresh_window_has_assigned_nothing_even_at_the_start_of_time():
    window = Window(span=60.0)
    assert (window.sample(0.0).assigned, window.sample(0.0).expected) == (0, 0.0)
    window.expect(0.0, 0.5, True, True)
    window.expect(0.0, 0.5, True, False)
    assert (window.sample(0.0).assigned, window.sample(0.0).users) == (2, 1)


def test_a_window_sums_the_latencies_of_its_slots_and_is_empty_when_none_is_live():
    window = Window(span=60.0)  # 5 s slots
    window.add(1000.0, False, 0.02)
    window.add(1006.0, False, 0.06)
    two = window.sample(1006.0).latency  # two live slots
    assert two[bucket_of(0.02)] == 1 and two[bucket_of(0.06)] == 1
    window.add(1011.0, False, 0.06)
    latency = window.sample(1011.0).latency
    assert latency[bucket_of(0.02)] == 1 and latency[bucket_of(0.06)] == 2
    assert Window(span=60.0).sample(1000.0).latency == (0,) * SIZE
