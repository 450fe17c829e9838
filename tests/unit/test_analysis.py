"""The analysis core: histograms, statistics, verdicts and windows, without a server."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from proxy.analysis.histogram import (
    BOUNDS,
    SIZE,
    bucket_of,
    quantile,
    quantile_bounds,
    value_of,
)
from proxy.analysis.verdict import (
    Result,
    Sample,
    assess,
    difference_lower_bound,
    wilson,
)
from proxy.analysis.window import SLOTS, LocalObservations, Window
from proxy.config.model import AnalysisSpec

SPEC = AnalysisSpec(min_requests=200, max_error_rate_increase=0.01, max_latency_ratio=1.5)
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
