"""The analysis core: histograms, statistics, verdicts and windows, without a server."""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from dataclasses import replace
from statistics import NormalDist

import pytest

from proxy.analysis.assessment import assess, checks_of
from proxy.analysis.histogram import (
    BOUNDS,
    SIZE,
    bucket_of,
    index_at,
    lower_edge,
    quantile,
    quantile_bounds,
    upper_edge,
    value_of,
)
from proxy.analysis.intervals import wilson
from proxy.analysis.metric_check import Reading, metric_check
from proxy.analysis.verdict import Clustering, Moments, Result, Sample, Verdict
from proxy.analysis.window import SLOTS, LocalObservations, Window, WindowRecorder
from proxy.config.model import (
    AnalysisMethod,
    AnalysisSpec,
    Cohort,
    Comparison,
    KeySource,
    LatencyMeasure,
    MetricCheck,
    OutcomeCheck,
    Route,
    Source,
    Upstream,
    Variant,
)
from proxy.records.request_id import Served
from proxy.records.request_outcome import FallbackReason, RequestOutcome
from proxy.routing import Decision, Reason

SPEC = AnalysisSpec(
    min_requests=200,
    max_error_rate_increase=0.01,
    max_latency_ratio=1.5,
    method=AnalysisMethod.FIXED,  # (these tests pin the fixed-sample bounds)
)
ALPHA = (1 - 0.95) / 2  # each of the two built-in checks' share of 1 - confidence
ROUTE_FOR_WINDOWS = Route(
    name="r",
    path_prefix="/",
    stable=Upstream("http://127.0.0.1:1"),
    candidate=Upstream("http://127.0.0.1:2"),
    cohort=Cohort((KeySource(Source.HEADER, "X-User-Id"),), "s"),
)
DECISION = Decision(Variant.STABLE, Reason.BUCKET, 0.5, None, 1, "u")
Z95 = 1.6448536269514722


def histogram(latencies: list[float]) -> tuple[float, ...]:
    counts = [0.0] * SIZE
    for latency in latencies:
        counts[bucket_of(latency)] += 1.0
    return tuple(counts)


def sample(n: int, errors: int, latencies: list[float] | None = None) -> Sample:
    latencies = latencies if latencies is not None else [0.02] * (n - errors)
    return Sample.unweighted(n, errors, histogram(latencies))


def z_fixed(alpha: float) -> float:
    return NormalDist().inv_cdf(1.0 - alpha)


def rate_bound(es: int, ns: int, ec: int, nc: int, alpha: float) -> float:
    """The fixed-method lower bound of p_candidate - p_stable, every request weighing 1, written
    out: each variance its own, or if more that of its requests with two errors and two
    successes added (Agresti and Coull: (e + 2) / (n + 4) times its complement), z at `alpha`,
    and Bernstein's correction for what one request can move the difference up (a stable
    success drags stable's rate down by p_s / n_s, a candidate error lifts the candidate's by
    (1 - p_c) / n_c)."""
    ps, pc = es / ns, ec / nc
    ts, tc = (es + 2) / (ns + 4), (ec + 2) / (nc + 4)
    vs = max(ps * (1 - ps), ts * (1 - ts))
    vc = max(pc * (1 - pc), tc * (1 - tc))
    se = math.sqrt(vs / ns + vc / nc)
    z = z_fixed(alpha)
    return pc - ps - (z * se + z * z * max(ps / ns, (1 - pc) / nc) / 6)


# --- histogram --------------------------------------------------------------------------------


def test_buckets_cover_the_range_with_two_percent_resolution():
    assert bucket_of(0.0) == 0 and bucket_of(1e6) == SIZE - 1
    for seconds in (0.001, 0.0173, 0.25, 3.3, 59.0):
        assert abs(value_of(bucket_of(seconds)) / seconds - 1) < 0.0101  # √1.02 - 1
        upper = upper_edge(bucket_of(seconds))
        assert upper is not None and lower_edge(bucket_of(seconds)) < seconds <= upper
    assert all(b < c for b, c in itertools.pairwise(BOUNDS))
    assert all(c / b == pytest.approx(1.02, rel=1e-12) for b, c in itertools.pairwise(BOUNDS))


def test_quantile_matches_the_exact_quantile():
    rng = random.Random(3)
    values = sorted(rng.lognormvariate(math.log(0.05), 0.5) for _ in range(5000))
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = values[math.ceil(q * len(values)) - 1]
        assert abs(quantile(histogram(values), q) / exact - 1) < 0.0101


def test_quantile_bounds_cover_the_true_quantile_at_the_stated_rate():
    rng = random.Random(11)
    true_p95 = math.exp(math.log(0.05) + 0.5 * 1.6448536269514722)
    spread = Z95 * math.sqrt(0.95 * 0.05 / 300)
    misses_low = misses_high = 0
    runs = 400
    for _ in range(runs):
        values = [rng.lognormvariate(math.log(0.05), 0.5) for _ in range(300)]
        low, high = quantile_bounds(histogram(values), 0.95, spread, spread)
        assert high is not None
        misses_low += low > true_p95  # (outer edges: no allowance for a bucket's width)
        misses_high += high < true_p95
    # One-sided 95 % bounds: each side misses at most ~5 % of the time.
    assert misses_low / runs < 0.08 and misses_high / runs < 0.08


def test_the_lowest_bucket_stands_for_its_bound_and_the_others_for_their_geometric_middle():
    assert value_of(0) == BOUNDS[0] == 0.0005
    assert value_of(1) == pytest.approx(0.0005 * 1.02**0.5, rel=1e-12)  # √(0.0005 · 0.00051)


def test_latencies_above_the_top_bucket_count_as_the_top_bound():
    """The last, open bucket catches anything slower than 0.0005 · 1.02^672 ≈ 300.8 s."""
    assert (len(BOUNDS), SIZE) == (673, 674)  # ⌈log(300 / 0.0005) / log 1.02⌉ = 672
    assert BOUNDS[-1] == pytest.approx(0.0005 * 1.02**672, rel=1e-12)
    assert BOUNDS[-1] == pytest.approx(300.80526146365065, rel=1e-12)
    assert bucket_of(BOUNDS[-1]) == SIZE - 2 and bucket_of(301.0) == bucket_of(1e6) == SIZE - 1
    assert value_of(SIZE - 1) == BOUNDS[-1]
    assert quantile(histogram([400.0] * 10), 0.5) == BOUNDS[-1]


def test_bucket_edges_are_the_neighbouring_bounds_and_the_open_bucket_has_no_upper_one():
    assert (lower_edge(0), upper_edge(0)) == (0.0, 0.0005)
    assert (lower_edge(5), upper_edge(5)) == (BOUNDS[4], BOUNDS[5])
    assert (lower_edge(SIZE - 1), upper_edge(SIZE - 1)) == (BOUNDS[-1], None)


def test_levels_find_the_first_bucket_whose_running_weight_reaches_them():
    weights = [0.0] * SIZE
    weights[10], weights[20] = 1.0, 3.0
    assert [index_at(weights, level) for level in (0.1, 0.25, 0.2501, 0.9, 1.0)] == [
        10,
        10,
        20,
        20,
        20,
    ]
    assert index_at(weights, 1.0001) is None  # beyond the observations
    assert index_at([], 0.5) is None and index_at([0.0] * SIZE, 0.5) is None


def test_a_histogram_without_buckets_is_an_error():
    with pytest.raises(ValueError, match=r"^empty histogram$"):
        quantile((), 0.5)


def test_a_histogram_without_observations_is_an_error_too():
    with pytest.raises(ValueError, match=r"^empty histogram$"):
        quantile([0.0] * SIZE, 0.5)


def ranked(first: int, below: int, ranks: int) -> list[float]:
    """Counts with `below` observations in bucket `first`, then one in each of the next `ranks`
    buckets: the observation of rank `below + k` (k = 1..ranks) is alone in bucket first + k."""
    counts = [0.0] * SIZE
    counts[first] = below
    for k in range(1, ranks + 1):
        counts[first + k] = 1.0
    return counts


@pytest.mark.parametrize(
    ("below", "ranks", "q", "low_rank", "high_rank"),
    [
        (0, 100, 0.5, 42, 59),  # 100 observations, the median: levels 0.4178 and 0.5822
        (270, 30, 0.95, 279, 292),  # 300 observations, p95: levels 0.9293 and 0.9707
    ],
)
def test_quantile_bounds_are_the_outer_edges_of_the_buckets_at_the_spread_levels(
    below, ranks, q, low_rank, high_rank
):
    n = below + ranks
    spread = Z95 * math.sqrt(q * (1 - q) / n)
    # the rank of level l is ⌈l n⌉; it lies in bucket 100 + rank - below
    assert (math.ceil((q - spread) * n), math.ceil((q + spread) * n)) == (low_rank, high_rank)
    low_bucket, high_bucket = 100 + low_rank - below, 100 + high_rank - below
    counts = ranked(100, below, ranks)
    assert quantile_bounds(counts, q, spread, spread) == (
        BOUNDS[low_bucket - 1],  # the lower edge of the lower bound's bucket
        BOUNDS[high_bucket],  # the upper edge of the upper bound's
    )


def test_quantile_bounds_may_be_uneven_and_start_at_zero():
    counts = ranked(100, 0, 100)
    assert quantile_bounds(counts, 0.5, 0.1, 0.2) == (BOUNDS[139], BOUNDS[170])  # ranks 40, 70
    assert quantile_bounds(counts, 0.5, 0.5, 0.0) == (0.0, BOUNDS[150])  # q - below <= 0


def test_an_upper_bound_beyond_the_observations_or_in_the_open_bucket_is_none():
    counts = ranked(100, 0, 100)
    assert quantile_bounds(counts, 0.95, 0.01, 0.05) == (BOUNDS[193], BOUNDS[200])  # level 1
    assert quantile_bounds(counts, 0.95, 0.01, 0.0501) == (BOUNDS[193], None)  # above 1
    slowest = histogram([0.02] * 90 + [400.0] * 10)
    low, high = quantile_bounds(slowest, 0.95, 0.01, 0.01)
    assert (low, high) == (BOUNDS[-1], None)  # the open bucket has no upper edge


# --- statistics -------------------------------------------------------------------------------


def test_wilson_interval_reference_values():
    low, high = wilson(10, 100, 1.959963984540054)
    assert (round(low, 4), round(high, 4)) == (0.0552, 0.1744)  # the textbook 95 % interval
    low, high = wilson(0, 50, 1.959963984540054)
    assert low == 0.0 and round(high, 4) == 0.0713


def test_the_wilson_upper_bound_of_all_successes_is_exactly_one():
    """Rounding would put it a hair above 1 (1.0000000000000002 for 25 of 25)."""
    low, high = wilson(25, 25, Z95)
    assert high == 1.0
    assert low == pytest.approx(0.902346493993949, rel=1e-12)  # statsmodels proportion_confint


def test_a_sample_of_unweighted_counts_weighs_one_per_request():
    s = Sample.unweighted(10, 3, (2, 5), {"x": Moments.of(1.0, 1.0)})
    assert (s.requests, s.errors, s.weight, s.weight2, s.error_weight, s.error_weight2) == (
        10,
        3,
        10.0,
        10.0,
        3.0,
        3.0,
    )
    assert (s.latency, s.latency_weight2, s.outcomes) == ((2.0, 5.0), 7.0, {"x": Moments.of(1, 1)})
    assert s.error_rate == 0.3 and Sample().error_rate is None


def test_moments_add_up_and_subtract_field_by_field():
    assert Moments(1, 2.0, 3.0, 4.0, 5.0, 6.0) + Moments(10, 20.0, 30.0, 40.0, 50.0, 60.0) == (
        Moments(11, 22.0, 33.0, 44.0, 55.0, 66.0)
    )
    assert Moments(11, 22.0, 33.0, 44.0, 55.0, 66.0) - Moments(1, 2.0, 3.0, 4.0, 5.0, 6.0) == (
        Moments(10, 20.0, 30.0, 40.0, 50.0, 60.0)
    )
    assert Moments() == Moments(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    # one report: w, w², w·value, w²·value, w²·value²
    assert Moments.of(3.0, 0.5) == Moments(1, 0.5, 0.25, 1.5, 0.75, 2.25)


def test_the_error_rate_bound_is_the_difference_less_z_standard_errors_and_bernstein():
    for es, ec in ((3, 30), (4, 24), (3, 6), (0, 0), (0, 3)):
        check = assess(sample(300, es), sample(300, ec), SPEC, 0.0).checks[0]
        assert check.observed == pytest.approx(ec / 300 - es / 300, abs=1e-15)
        assert check.bound == pytest.approx(rate_bound(es, 300, ec, 300, ALPHA), rel=1e-12)
        assert check.alpha == ALPHA


Observation = tuple[float, float]  # (weight, value)


def weighted(observations: list[Observation], clustering: Clustering) -> Sample:
    """A sample of 0/1 errors, each with its weight."""
    return Sample(
        len(observations),
        sum(1 for _, y in observations if y),
        math.fsum(w for w, _ in observations),
        math.fsum(w * w for w, _ in observations),
        math.fsum(w * y for w, y in observations),
        math.fsum(w * w * y for w, y in observations),
        clustering=clustering,
    )


def hajek_rate_bound(
    stable: list[Observation],
    candidate: list[Observation],
    effects: tuple[float, float],
    alpha: float,
) -> tuple[float, float]:
    """The weighted error rates' difference and its fixed-method lower bound, written out over
    the observations: Hajek's means sum w y / sum w, the linearised variances sum w² (y - mean)²
    / (sum w)², each observation's variance its own, sum w² (y - mean)² / sum w², or if more
    that of the variant's (sum w)² / sum w² observations joined by two errors and two successes
    (with their mean and own variance, around the mean of all), then times its design effect,
    and Bernstein's correction with what one observation can move a mean: (its range beyond
    the mean) · sum w² / (sum w)²."""

    def mean(obs: list[Observation]) -> float:
        return sum(w * y for w, y in obs) / sum(w for w, _ in obs)

    def squares(obs: list[Observation], centre: float) -> float:
        return sum(w * w * (y - centre) ** 2 for w, y in obs)

    def ratio(obs: list[Observation]) -> float:
        return sum(w * w for w, _ in obs) / sum(w for w, _ in obs) ** 2

    def w2(obs: list[Observation]) -> float:
        return sum(w * w for w, _ in obs)

    variance = 0.0
    for obs, effect in zip((stable, candidate), effects, strict=True):
        size, m = 1 / ratio(obs), mean(obs)
        own = squares(obs, m) / w2(obs)
        centre = (size * m + 2 * 1.0) / (size + 4)  # (two errors among four added)
        added = (size * (own + (m - centre) ** 2) + 2 * centre**2 + 2 * (1 - centre) ** 2) / (
            size + 4
        )
        variance += max(own, added) * effect / size
    ms, mc = mean(stable), mean(candidate)
    z = z_fixed(alpha)
    scale = max(ms * ratio(stable), (1 - mc) * ratio(candidate))
    return mc - ms, mc - ms - (z * math.sqrt(variance) + z * z * scale / 6)


def test_weighted_error_rates_are_hajek_means_with_floored_variances_and_design_effects():
    rng = random.Random(8)
    stable, candidate = [], []
    for _ in range(1000):  # shares moving between 0.1 and 0.5; weight share or 1 - share
        share = rng.choice((0.1, 0.3, 0.5))
        if rng.random() < share:
            candidate.append((1 - share, float(rng.random() < 0.04)))
        else:
            stable.append((share, float(rng.random() < 0.02)))
    effects = (1.1, 1.7)
    s = weighted(stable, Clustering(errors=effects[0], latency=5.0))
    c = weighted(candidate, Clustering(errors=effects[1], latency=5.0))
    check = assess(s, c, SPEC, 0.0).checks[0]
    observed, bound = hajek_rate_bound(stable, candidate, effects, ALPHA)
    assert check.observed == pytest.approx(observed, rel=1e-9)
    assert check.bound == pytest.approx(bound, rel=1e-9)
    # (the plain rates differ from the weighted ones: the weights matter)
    assert c.errors / c.requests - s.errors / s.requests != pytest.approx(observed, rel=1e-3)


def test_thin_data_without_an_error_takes_the_added_requests_variance():
    """A stable without errors has no variance of its own: it takes that of its 300 requests
    with two errors and two successes added, 2 in 304, whatever the candidate's errors."""
    z = z_fixed(ALPHA)
    added_s = 2 / 304 * (302 / 304)
    for errors in (0, 12, 60):
        check = assess(sample(300, 0), sample(300, errors), SPEC, 0.0).checks[0]
        pc = errors / 300
        vc = (errors + 2) / 304 * ((302 - errors) / 304)
        se = math.sqrt(added_s / 300 + vc / 300)
        assert check.bound == pytest.approx(pc - z * se - z * z * (1 - pc) / 300 / 6)


def test_plentiful_data_keeps_about_its_own_variance_and_a_larger_own_one_is_kept():
    """With four observations added to 10,000 a stable's variance is nearly its own (1,002 errors
    in 10,004); a candidate whose own variance is more than with them keeps it: its one error
    weighs 0.99 (a request at a share of 0.01) among 900 successes weighing 0.01 (at 0.99), so
    its errors vary far more than its mean of about 0.1 says."""
    stable = [(1.0, 1.0)] * 1_000 + [(1.0, 0.0)] * 9_000
    candidate = [(0.99, 1.0)] + [(0.01, 0.0)] * 900
    vs = 1_002 / 10_004 * (9_002 / 10_004)
    assert vs == pytest.approx(0.1 * 0.9, rel=2e-3)
    mc = 0.99 / 9.99
    w2 = 0.99**2 + 900 * 0.01**2
    own_c = (0.99**2 * (1 - mc) ** 2 + 900 * 0.01**2 * mc**2) / w2
    size_c = 9.99**2 / w2
    centre = (size_c * mc + 2) / (size_c + 4)
    added_c = (size_c * (own_c + (mc - centre) ** 2) + 2 * centre**2 + 2 * (1 - centre) ** 2) / (
        size_c + 4
    )
    assert own_c > added_c + 0.01  # (0.744 and 0.730)
    check = assess(weighted(stable, Clustering()), weighted(candidate, Clustering()), SPEC, 0.0)
    z = z_fixed(ALPHA)
    se = math.sqrt(vs / 10_000 + own_c / size_c)
    scale = max(0.1 / 10_000, (1 - mc) / size_c)  # a stable success or a candidate error
    assert check.checks[0].bound == pytest.approx(mc - 0.1 - z * se - z * z * scale / 6)


# --- verdicts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stable", "candidate", "expected"),
    [
        (sample(300, 0), sample(300, 30), Result.FAIL),  # 10 % 5xx against none
        (sample(400, 4), sample(400, 24), Result.FAIL),  # a real +5 point increase
        (sample(300, 3), sample(300, 6), Result.INCONCLUSIVE),  # noise: not yet known
        (sample(300, 0), sample(300, 0), Result.INCONCLUSIVE),  # (not proven within 1 point)
        (sample(300, 0), sample(300, 6), Result.SUSPECT),  # 2 % where 1 % is allowed: unproven
        (sample(5000, 50), sample(5000, 50), Result.PASS),  # equal, on enough to prove it
        (sample(20_000, 2000), sample(10_000, 1000), Result.PASS),  # both bad alike
        (sample(300, 0), sample(199, 100), Result.INCONCLUSIVE),  # too few: never fail
        (sample(150, 0), sample(300, 0), Result.INCONCLUSIVE),
    ],
)
def test_error_rate_check(stable, candidate, expected):
    check = assess(stable, candidate, SPEC, 0.0).checks[0]
    assert check.name == "error_rate"
    assert check.result is expected


def test_the_error_rate_is_split_evenly_among_the_built_in_checks():
    clicks = OutcomeCheck("click", 0.01)
    spec = replace(SPEC, outcomes=(clicks, replace(clicks, name="buy")))
    assert (checks_of(SPEC), checks_of(spec)) == (2, 4)
    metric = metric_check(
        MetricCheck("gpu", "q", ((Comparison.MAX, 1.0),)), Reading("q", 0.5), Reading("q", 0.5)
    )
    stable, candidate = sample(300, 3), sample(300, 12)
    verdict = assess(stable, candidate, spec, 0.0, metrics=(metric,))
    assert [c.name for c in verdict.checks] == [
        "error_rate",
        "latency",
        "outcome:click",
        "outcome:buy",
        "metric:gpu",
    ]
    assert [c.alpha for c in verdict.checks[:4]] == [pytest.approx(0.05 / 4)] * 4
    assert verdict.checks[0].bound == pytest.approx(rate_bound(3, 300, 12, 300, 0.05 / 4))
    assert verdict.checks[0].scope == "window"
    # metric checks have no bound: they spend none (and take no share from the others)
    assert assess(stable, candidate, SPEC, 0.0, metrics=(metric,)).checks[0].alpha == ALPHA


def test_latency_check_fails_a_candidate_three_times_slower():
    rng = random.Random(5)
    fast = [rng.lognormvariate(math.log(0.02), 0.3) for _ in range(300)]
    slow = [3 * rng.lognormvariate(math.log(0.02), 0.3) for _ in range(300)]
    verdict = assess(
        Sample.unweighted(300, 0, histogram(fast)),
        Sample.unweighted(300, 0, histogram(slow)),
        SPEC,
        7.0,
    )
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
            Sample.unweighted(300, 0, histogram(base)),
            Sample.unweighted(300, 0, histogram(other)),
            SPEC,
            0.0,
        ).checks[1]
        assert check.result is Result.PASS


def lognormal(n: int, factor: float) -> Sample:
    """n latencies at the quantiles (i + ½) / n of a lognormal around 20 ms, times `factor`."""
    normal = NormalDist(math.log(0.02), 0.3)
    values = [factor * math.exp(normal.inv_cdf((i + 0.5) / n)) for i in range(n)]
    return Sample.unweighted(n, 0, histogram(values))


def test_a_candidate_a_little_within_the_latency_limit_never_fails_on_lots_of_data():
    """Bounds at the buckets' outer edges never cross a limit that the true quantiles do not:
    1.19 times slower, with 1.2 allowed, never fails however much data (a bucket's middle would
    have put the bound either side of 1.2), and is not proven within it either (the upper bound
    gives up a bucket on each side: a candidate within 4 % of the limit stays unproven); 1.1
    times slower passes, 1.3 times slower fails."""
    spec = replace(SPEC, max_latency_ratio=1.2)
    stable = lognormal(200_000, 1.0)
    within = assess(stable, lognormal(200_000, 1.19), spec, 0.0).checks[1]
    assert within.result in (Result.INCONCLUSIVE, Result.SUSPECT) and within.bound is not None
    assert within.upper is not None and 1.19 < within.upper < 1.19 * 1.02**2
    assert 1.14 < within.bound < 1.19  # never above the true ratio
    faster = assess(stable, lognormal(200_000, 1.1), spec, 0.0).checks[1]
    assert faster.result is Result.PASS
    beyond = assess(stable, lognormal(200_000, 1.3), spec, 0.0).checks[1]
    assert beyond.result is Result.FAIL


def test_the_latency_bound_is_the_ratio_of_outer_edges_at_the_spread_levels():
    """Each quantile's bound at half the check's rate: the candidate's lower bound at level q
    less z √(q (1 - q) / n) and Bernstein's z² q / n / 6, stable's upper bound at q plus z √(q (1 -
    q) / n) and z² (1 - q) / n / 6, each the outer edge of the bucket at its level."""
    n, q = 300, 0.95
    candidate = Sample.unweighted(n, 0, ranked(300, 270, 30))
    stable = Sample.unweighted(n, 0, ranked(200, 270, 30))
    z = z_fixed(ALPHA / 2)
    low_level = q - (z * math.sqrt(q * (1 - q) / n) + z * z * q / n / 6)
    high_level = q + (z * math.sqrt(q * (1 - q) / n) + z * z * (1 - q) / n / 6)
    low_rank, high_rank = math.ceil(low_level * n), math.ceil(high_level * n)
    assert (low_rank, high_rank) == (276, 294)
    check = assess(stable, candidate, SPEC, 0.0).checks[1]
    low = BOUNDS[300 + low_rank - 270 - 1]  # the lower edge of the candidate's bucket
    high = BOUNDS[200 + high_rank - 270]  # the upper edge of stable's
    assert check.bound == pytest.approx(low / high, rel=1e-12)
    assert check.observed == pytest.approx(1.02**100, rel=1e-9)  # (the middles, 100 apart)
    assert check.alpha == ALPHA


def test_clustered_latencies_widen_the_latency_bound_by_their_design_effect():
    n, q = 300, 0.95
    candidate = replace(
        Sample.unweighted(n, 0, ranked(300, 270, 30)), clustering=Clustering(latency=2.0)
    )
    stable = Sample.unweighted(n, 0, ranked(200, 270, 30))
    # the candidate's information is n / 2 / n0 (fixed: no matter) and its variance doubles
    z = z_fixed(ALPHA / 2)
    low_level = q - (z * math.sqrt(2 * q * (1 - q) / n) + z * z * q / n / 6)
    assert math.ceil(low_level * n) == 273
    check = assess(stable, candidate, SPEC, 0.0).checks[1]
    assert check.bound == pytest.approx(BOUNDS[300 + 273 - 270 - 1] / BOUNDS[200 + 294 - 270])


def test_a_stable_upper_bound_beyond_the_data_is_inconclusive_not_a_clamp():
    spec = replace(SPEC, latency_quantile=0.999)
    stable, candidate = sample(300, 0, [0.02] * 300), sample(300, 0, [0.06] * 300)
    check = assess(stable, candidate, spec, 0.0).checks[1]
    # (3 times slower: it looks worse, but nothing bounds it: suspect, never failed)
    assert check.result is Result.SUSPECT and check.bound is None and check.upper is None
    assert check.observed == pytest.approx(1.02**55, rel=1e-9)  # (the quantiles' middles)
    assert check.note == (
        "candidate p99.9 looks slower than allowed, not yet proven "
        "(too few stable requests to bound its p99.9 from above)"
    )
    assert check.alpha == ALPHA
    # the same in the open bucket: no upper edge
    slowest = sample(300, 0, [400.0] * 300)
    check = assess(slowest, sample(300, 0, [900.0] * 300), SPEC, 0.0).checks[1]
    assert (check.result, check.bound) == (Result.INCONCLUSIVE, None)  # (one bucket: ratio 1)
    assert check.note.endswith("(too few stable requests to bound its p95 from above)")


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
        0.02, rel=0.0101
    )


def test_inconclusive_wins_over_pass_and_fail_over_both():
    few = assess(sample(100, 0), sample(100, 0), SPEC, 0.0)
    assert few.result is Result.INCONCLUSIVE
    assert all(c.result is Result.INCONCLUSIVE for c in few.checks)
    all_errors = assess(sample(300, 0), Sample.unweighted(300, 300, histogram([])), SPEC, 0.0)
    assert [c.result for c in all_errors.checks] == [Result.FAIL, Result.INCONCLUSIVE]
    assert all_errors.result is Result.FAIL


def test_metric_checks_join_the_verdict_and_decide_it_like_any_check():
    metric = MetricCheck("gpu", "q", ((Comparison.MAX, 1.0),))
    over = metric_check(metric, Reading("q", 0.5), Reading("q", 2.0))
    unsure = metric_check(metric, Reading("q", 0.5), Reading("q", None, "no data"))
    within = metric_check(metric, Reading("q", 0.5), Reading("q", 0.5))
    passing = sample(5000, 0), sample(5000, 0)
    failed = assess(*passing, SPEC, 0.0, metrics=(within, over))
    assert failed.result is Result.FAIL and failed.failing == (over,)
    assert failed.checks[2:] == (within, over)
    assert assess(*passing, SPEC, 0.0, metrics=(unsure,)).result is Result.INCONCLUSIVE
    assert assess(*passing, SPEC, 0.0, metrics=(within,)).result is Result.PASS
    mismatched = replace(passing[1], assigned=300, expected=150.0)
    skewed = replace(passing[0], assigned=0, expected=150.0)
    held = assess(skewed, mismatched, SPEC, 0.0, metrics=(over,))
    assert held.checks[-1].name == "sample_ratio" and held.checks[-1].result is Result.FAIL
    assert held.result is Result.ERROR  # (a broken split: nothing measured can be trusted)
    assert held.note == "the split is broken (sample ratio): nothing measured can be trusted"


def test_exactly_min_requests_per_variant_is_enough_for_a_verdict():
    verdict = assess(sample(200, 0), sample(200, 0), SPEC, 0.0)
    assert all(c.bound is not None for c in verdict.checks)  # (bounded: not "too few")
    assert assess(sample(199, 0), sample(200, 0), SPEC, 0.0).checks[0].bound is None


def test_latency_needs_min_requests_successful_requests_per_variant():
    verdict = assess(sample(300, 0), sample(300, 101), SPEC, 0.0)  # 199 successes
    assert [c.result for c in verdict.checks] == [Result.FAIL, Result.INCONCLUSIVE]


def test_inconclusive_checks_report_threshold_sizes_and_why():
    stable, candidate = sample(300, 0), sample(150, 0)
    error, latency = (c.to_json() for c in assess(stable, candidate, SPEC, 0.0).checks)
    sizes = {"stable": stable.summary(), "candidate": candidate.summary()}
    why = "fewer than 200 compared requests per variant"
    assert error == {
        "check": "error_rate",
        "result": "inconclusive",
        "threshold": 0.01,
        "observed": None,
        "bound": None,
        **sizes,
        "note": why,
        "scope": "window",
        "alpha": None,
        "upper": None,
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
        "alpha": None,
        "upper": None,
    }


@pytest.mark.parametrize(
    ("candidate_errors", "result", "observed", "note"),
    [
        (30, "fail", 0.09, "candidate error rate is higher than allowed"),
        (9, "suspect", 0.02, "the error rate increase looks higher than allowed, not yet proven"),
        (
            6,
            "inconclusive",
            0.01,
            "not yet known whether the error rate increase is within the allowed one",
        ),
    ],
)
def test_error_rate_check_reports_the_difference_its_bound_and_the_outcome(
    candidate_errors, result, observed, note
):
    stable, candidate = sample(300, 3), sample(300, candidate_errors)
    check = assess(stable, candidate, SPEC, 0.0).checks[0]
    assert check.to_json() == {
        "check": "error_rate",
        "result": result,
        "threshold": 0.01,
        "observed": pytest.approx(observed, rel=1e-12),
        "bound": pytest.approx(rate_bound(3, 300, candidate_errors, 300, ALPHA), rel=1e-12),
        # (the upper bound: the lower bound of the other difference, negated)
        "upper": pytest.approx(-rate_bound(candidate_errors, 300, 3, 300, ALPHA), rel=1e-12),
        "stable": stable.summary(),
        "candidate": candidate.summary(),
        "note": note,
        "scope": "window",
        "alpha": ALPHA,
    }


def test_an_error_rate_bound_exactly_at_the_threshold_decides_nothing():
    stable, candidate = sample(300, 3), sample(300, 30)
    check = assess(stable, candidate, SPEC, 0.0).checks[0]
    bound, upper = check.bound, check.upper
    assert bound is not None and upper is not None
    at = replace(SPEC, max_error_rate_increase=bound)
    below = replace(SPEC, max_error_rate_increase=math.nextafter(bound, 0.0))
    assert assess(stable, candidate, at, 0.0).checks[0].result is Result.SUSPECT
    assert assess(stable, candidate, below, 0.0).checks[0].result is Result.FAIL
    at_upper = replace(SPEC, max_error_rate_increase=upper)
    under = replace(SPEC, max_error_rate_increase=math.nextafter(upper, 0.0))
    assert assess(stable, candidate, at_upper, 0.0).checks[0].result is Result.PASS
    assert assess(stable, candidate, under, 0.0).checks[0].result is Result.INCONCLUSIVE


# Bucket 187 holds 0.02 s and bucket 242 holds 0.06 s; a bucket stands for its geometric middle
# 0.0005 · 1.02^(i - ½) in reports, and its bounds are its outer edges: a single-bucket sample's
# lower bound is 0.0005 · 1.02^(i - 1), its upper bound 0.0005 · 1.02^i.
P95_AT_20MS = 0.0005 * 1.02**186.5  # 0.0199 s
P95_AT_60MS = 0.0005 * 1.02**241.5  # 0.0597 s


def test_latency_check_reports_the_ratio_its_bound_and_the_quantiles():
    assert (bucket_of(0.02), bucket_of(0.06)) == (187, 242)
    stable, candidate = sample(300, 0, [0.02] * 300), sample(300, 0, [0.06] * 300)
    check = assess(stable, candidate, SPEC, 0.0).checks[1]
    assert check.to_json() == {
        "check": "latency",
        "result": "fail",
        "threshold": 1.5,
        "observed": pytest.approx(1.02**55, rel=1e-9),
        "bound": pytest.approx(1.02**54, rel=1e-9),  # 1.02^241 / 1.02^187
        "upper": pytest.approx(1.02**56, rel=1e-9),  # 1.02^242 / 1.02^186
        "stable": {**stable.summary(), "latency_quantile_seconds": pytest.approx(P95_AT_20MS)},
        "candidate": {
            **candidate.summary(),
            "latency_quantile_seconds": pytest.approx(P95_AT_60MS),
        },
        "note": "candidate p95 is slower than allowed",
        "scope": "window",
        "alpha": ALPHA,
    }


@pytest.mark.parametrize(
    ("q", "slower", "note"),
    [
        (0.95, 0.06, "candidate p95 is slower than allowed"),
        (0.95, 0.021, "candidate p95 is within the allowed ratio"),
        (
            0.999,
            0.021,
            "not yet known whether the candidate p99.9 is within the ratio "
            "(too few stable requests to bound its p99.9 from above)",
        ),
        (0.5, 0.06, "candidate p50 is slower than allowed"),
    ],
)
def test_latency_note_names_the_quantile_as_a_percentile(q, slower, note):
    spec = replace(SPEC, latency_quantile=q)
    stable, candidate = sample(300, 0, [0.02] * 300), sample(300, 0, [slower] * 300)
    assert assess(stable, candidate, spec, 0.0).checks[1].note == note


def test_a_latency_bound_exactly_at_the_threshold_decides_nothing():
    rng = random.Random(5)
    fast = Sample.unweighted(
        300, 0, histogram([rng.lognormvariate(math.log(0.02), 0.3) for _ in range(300)])
    )
    slow = Sample.unweighted(
        300, 0, histogram([rng.lognormvariate(math.log(0.05), 0.3) for _ in range(300)])
    )
    check = assess(fast, slow, SPEC, 0.0).checks[1]
    bound, upper = check.bound, check.upper
    assert bound is not None and upper is not None
    at = replace(SPEC, max_latency_ratio=bound)
    below = replace(SPEC, max_latency_ratio=math.nextafter(bound, 0.0))
    assert assess(fast, slow, at, 0.0).checks[1].result is Result.SUSPECT
    assert assess(fast, slow, below, 0.0).checks[1].result is Result.FAIL
    at_upper = replace(SPEC, max_latency_ratio=upper)
    under = replace(SPEC, max_latency_ratio=math.nextafter(upper, 0.0))
    assert assess(fast, slow, at_upper, 0.0).checks[1].result is Result.PASS
    assert assess(fast, slow, under, 0.0).checks[1].result is Result.INCONCLUSIVE


# --- windows ----------------------------------------------------------------------------------


def test_window_keeps_only_the_last_span():
    window = Window(span=60.0)
    for t in range(120):  # one request a second for two minutes, every fifth an error
        window.add(1000.0 + t, 1.0, t % 5 == 0, 0.01)
    s = window.sample(1119.5)
    assert 55 <= s.requests <= 60  # the newest slot is still filling
    assert abs(s.errors - s.requests / 5) <= 1
    assert sum(s.latency) == s.requests - s.errors
    assert window.sample(1119.5 + 61).requests == 0  # a minute of silence empties it


def test_window_slots_are_numbered_by_time_and_hold_exactly_what_was_counted():
    window = Window(span=60.0)  # 5 s slots
    window.add(1000.0, 0.25, False, 0.01)  # slot 200
    window.add(1004.9, 0.5, True, None)  # slot 200
    window.add(1005.0, 0.75, False, 2.0)  # slot 201
    slots = sorted(window.slots(1005.0))
    assert [(slot.number, slot.requests, slot.errors) for slot in slots] == [
        (200, 2, 1),
        (201, 1, 0),
    ]
    # sums of w, w², w over errors, w² over errors; the histogram holds weights
    assert slots[0].weights == (0.75, 0.0625 + 0.25, 0.5, 0.25)
    assert slots[1].weights == (0.75, 0.5625, 0.0, 0.0)
    assert slots[0].latency[bucket_of(0.01)] == 0.25 and sum(slots[0].latency) == 0.25
    assert slots[1].latency[bucket_of(2.0)] == 0.75 and sum(slots[1].latency) == 0.75
    assert (slots[0].latency_weight2, slots[1].latency_weight2) == (0.0625, 0.5625)
    assert [n for n, *_ in window.slots(1059.9)] == [200, 201]  # the window holds 200..211
    assert [n for n, *_ in window.slots(1060.0)] == [201]  # 201..212
    assert window.slots(1065.0) == []
    assert window.slots(999.0) == []  # slots newer than `now` are not in its window


def test_a_window_sample_sums_the_weights_of_its_requests():
    window = Window(span=60.0)
    window.add(1000.0, 0.25, False, 0.01)
    window.add(1004.9, 0.5, True, None)
    window.add(1005.0, 0.75, False, 2.0)
    window.add(1006.0, 0.75, True, 1.0)  # (an error's latency is not counted)
    s = window.sample(1006.0)
    assert (s.requests, s.errors) == (4, 2)
    assert (s.weight, s.weight2, s.error_weight, s.error_weight2) == (
        2.25,
        0.0625 + 0.25 + 0.5625 + 0.5625,
        1.25,
        0.25 + 0.5625,
    )
    assert sum(s.latency) == 1.0 and s.latency_weight2 == 0.0625 + 0.5625
    assert s.error_rate == pytest.approx(1.25 / 2.25)


def test_window_memory_is_bounded():
    window = Window(span=10.0)
    for i in range(50_000):
        window.add(i * 0.001, 1.0, False, 0.001 * (i % 100))
    assert len(window._latency) == SLOTS and all(len(h) == SIZE for h in window._latency)


def test_local_observations_per_route_and_variant():
    observations = LocalObservations({"r": 30.0})
    observations.windows["r"]["candidate"].add(5.0, 0.5, True, None)
    stable, candidate = observations.samples("r", 5.0)
    assert (stable.requests, candidate.requests, candidate.errors) == (0, 1, 1)
    assert candidate.error_weight == 0.5


def test_observations_keep_windows_of_unchanged_span_across_updates():
    observations = LocalObservations({"a": 30.0, "b": 30.0})
    a, b = observations.windows["a"], observations.windows["b"]
    observations.use({"a": 30.0, "b": 60.0, "c": 10.0})
    assert observations.windows["a"] is a
    assert observations.windows["b"] is not b
    assert set(observations.windows) == {"a", "b", "c"}


def test_a_slot_from_exactly_one_span_ago_has_left_the_window():
    window = Window(span=60.0)  # 5 s slots
    window.add(1000.0, 1.0, False, 0.01)  # slot 200
    assert window.sample(1059.9).requests == 1  # slot 211: the window holds slots 200..211
    assert window.sample(1060.0).requests == 0  # slot 212: slots 201..212


# A 10 s window has slots of 10/12 s, which is not exact in binary: at these wall-clock times the
# rounded quotient now / slot is a whole number while the floor division is one less. Slots are
# numbered by floor division everywhere, so a request and a sample agree on where it belongs.
EPOCH = 1_800_000_000.0  # 1800000000.0 / (10 / 12) rounds to 2160000000; its floor is 2159999999


def test_a_request_is_in_a_sample_taken_the_instant_it_was_counted():
    window = Window(span=10.0)
    window.add(EPOCH, 1.0, True, None)
    assert (window.sample(EPOCH).requests, window.sample(EPOCH).errors) == (1, 1)


def test_a_request_stays_in_the_window_until_its_slot_is_a_full_span_old():
    window = Window(span=10.0)
    window.add(EPOCH, 1.0, False, 0.01)
    last_instant = 1800000009.1666667  # floor(t / slot) is 11 slots later; t / slot rounds to 12
    assert window.sample(last_instant).requests == 1
    assert window.sample(math.nextafter(last_instant, math.inf)).requests == 0
    assert len(window.slots(last_instant)) == 1  # what a fleet's flush sends: the same slots
    assert window.slots(math.nextafter(last_instant, math.inf)) == []


# reports of "click": 1.0 at weight 0.5 and 2.0 at weight 0.25; of "rating": 4.0 at weight 1
# (count, sum w, sum w², sum w·value, sum w²·value, sum w²·value²)
CLICKS = Moments(2, 0.75, 0.25 + 0.0625, 0.5 + 0.5, 0.25 + 0.125, 0.25 + 0.25)
RATING = Moments(1, 1.0, 1.0, 4.0, 4.0, 16.0)


def test_outcomes_go_into_their_slot_with_their_weights_and_leave_with_it():
    window = Window(span=60.0)  # 5 s slots
    window.add_outcome(1000.0, "click", 1.0, 0.5)
    window.add_outcome(1004.0, "click", 2.0, 0.25)
    window.add_outcome(1005.0, "rating", 4.0, 1.0)
    assert window.sample(1005.0).outcomes == {"click": CLICKS, "rating": RATING}
    slots = sorted(window.slots(1005.0))
    assert [slot.outcomes for slot in slots] == [{"click": CLICKS}, {"rating": RATING}]
    assert window.sample(1060.0).outcomes == {"rating": RATING}
    assert window.sample(1065.0).outcomes == {}
    window.add(1065.0, 1.0, False, 0.01)  # the slot is reused: its outcomes are gone
    window.add_outcome(1120.0, "click", 1.0, 0.5)  # slot 224 reuses 200's place in the ring
    assert window.sample(1120.0).outcomes == {"click": Moments(1, 0.5, 0.25, 0.5, 0.25, 0.25)}


def test_an_outcome_name_seen_in_several_slots_is_summed_over_them():
    window = Window(span=60.0)
    for at in (1000.0, 1005.0, 1010.0):
        window.add_outcome(at, "click", 1.0, 0.5)
    assert window.sample(1010.0).outcomes == {"click": Moments(3, 1.5, 0.75, 1.5, 0.75, 0.75)}


def test_slots_and_samples_agree_on_a_slot_whose_number_rounds_up():
    window = Window(span=10.0)
    window.add(EPOCH, 1.0, False, 0.01)
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
            RequestOutcome(
                at=1000.0,
                route=route.name,
                method="POST",
                decision=DECISION,
                variant=Variant.STABLE,
                status=200,
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
        assert stable.latency[bucket_of(expected)] == 0.5, measure  # (weight: the share)


def served(variant: Variant | None, share: float, route: str = "r") -> Served:
    return Served(route, variant, b"\0" * 4, 5.0, share)


def test_observations_take_outcomes_only_for_analysed_routes_and_compared_requests():
    observations = LocalObservations({"r": 30.0})
    observations.add_outcome(served(Variant.CANDIDATE, 0.25), "click", 1.0, 5.0)  # weight 0.75
    observations.add_outcome(served(Variant.STABLE, 0.25), "click", 2.0, 5.0)  # weight 0.25
    observations.add_outcome(served(None, 0.0), "click", 1.0, 5.0)  # not compared
    observations.add_outcome(served(Variant.CANDIDATE, 0.25, "other"), "click", 1.0, 5.0)
    stable, candidate = observations.samples("r", 5.0)
    assert candidate.outcomes == {"click": Moments(1, 0.75, 0.5625, 0.75, 0.5625, 0.5625)}
    assert stable.outcomes == {"click": Moments(1, 0.25, 0.0625, 0.5, 0.125, 0.25)}
    assert set(observations.windows) == {"r"}


def test_random_assignments_are_counted_per_slot_and_reset_with_it():
    window = Window(span=60.0)  # 5 s slots
    assert window.sample(1000.0).assigned == 0 and window.sample(1000.0).expected == 0.0
    window.expect(1000.0, 0.25, True, True)
    window.expect(1001.0, 0.25, False, False)
    window.expect(1005.0, 0.5, True, True)
    window.expect(1006.0, 0.5, False, True)
    s = window.sample(1006.0)
    assert (s.assigned, s.expected) == (2, 1.5)
    assert (s.users, s.users_expected) == (2, 1.25)
    window.expect(1060.0, 0.1, False, True)  # slot 212 reuses slot 200's place: its counts are gone
    s = window.sample(1060.0)
    assert (s.assigned, s.expected) == pytest.approx((1, 1.1))
    assert (s.users, s.users_expected) == pytest.approx((1, 1.1))


def test_the_recorder_counts_random_assignments_for_both_variants():
    observations = LocalObservations({"r": 60.0}, {"r": "identity"})
    recorder = WindowRecorder(observations)
    recorder.use([replace(ROUTE_FOR_WINDOWS, analysis=AnalysisSpec())])
    share = Decision(Variant.STABLE, Reason.BUCKET, 0.3, None, 9000, "u")
    pinned = Decision(Variant.CANDIDATE, Reason.PINNED, 0.3, "staff", None, "s")
    recorder.record(
        RequestOutcome(
            at=1000.0,
            route="r",
            method="GET",
            decision=share,
            variant=Variant.STABLE,
            status=200,
            duration=0.01,
        )
    )
    recorder.record(
        RequestOutcome(
            at=1000.0,
            route="r",
            method="GET",
            decision=pinned,
            variant=Variant.CANDIDATE,
            status=200,
            duration=0.01,
        )
    )
    recorder.record(
        RequestOutcome(
            at=1001.0,
            route="r",
            method="GET",
            decision=share,
            variant=Variant.STABLE,
            status=200,
            duration=0.01,
        )
    )
    stable, candidate = observations.samples("r", 1002.0)
    assert stable.assigned == 2 and stable.expected == pytest.approx(1.4)
    assert candidate.assigned == 0 and candidate.expected == pytest.approx(0.6)
    # the user's second request is not a new user; two requests from one user: 4 / 2
    assert (stable.users, stable.users_expected) == pytest.approx((1, 0.7))
    assert (candidate.users, candidate.users_expected) == pytest.approx((0, 0.3))
    assert stable.design_effect == candidate.design_effect == 2.0
    assert observations.generation("r") == hashlib.blake2b(b"identity", digest_size=6).hexdigest()
    assert observations.generation("other") == hashlib.blake2b(b"", digest_size=6).hexdigest()


def test_while_the_candidate_is_ejected_no_request_is_measured_but_each_counts_as_assigned():
    # Stable's own requests while the candidate is out have nothing at their moments to be
    # compared with: counted, an incident on both that ends while the candidate is ejected
    # would leave the candidate's errors in the comparison and stable's recovery beside them.
    observations = LocalObservations({"r": 60.0}, {"r": "identity"})
    recorder = WindowRecorder(observations)
    recorder.use([replace(ROUTE_FOR_WINDOWS, analysis=AnalysisSpec())])
    stable_user = Decision(Variant.STABLE, Reason.BUCKET, 0.3, None, 9000, "u")
    candidate_user = Decision(Variant.CANDIDATE, Reason.BUCKET, 0.3, None, 10, "v")
    for decision in (stable_user, candidate_user):
        recorder.record(
            RequestOutcome(
                at=1000.0,
                route="r",
                method="GET",
                decision=decision,
                variant=Variant.STABLE,
                status=200,
                duration=0.01,
                fallback=FallbackReason.EJECTED if decision is candidate_user else None,
                candidate_out=True,
            )
        )
    recorder.record(
        RequestOutcome(
            at=1001.0,
            route="r",
            method="GET",
            decision=stable_user,
            variant=Variant.STABLE,
            status=500,
            duration=0.01,
        )
    )
    stable, candidate = observations.samples("r", 1002.0)
    assert (stable.assigned, candidate.assigned) == (2, 1)  # the sample-ratio check sees all
    assert (stable.requests, stable.errors, candidate.requests) == (1, 1, 0)  # measured: one


def test_the_recorder_weighs_a_candidates_request_one_less_the_share_and_stables_the_share():
    observations = LocalObservations({"r": 60.0})
    recorder = WindowRecorder(observations)
    recorder.use([replace(ROUTE_FOR_WINDOWS, analysis=AnalysisSpec())])
    to_stable = Decision(Variant.STABLE, Reason.BUCKET, 0.3, None, 9000, "u")
    to_candidate = Decision(Variant.CANDIDATE, Reason.RANDOM, 0.1, None, 5)  # keyless, drawn
    for decision, variant, status in (
        (to_stable, Variant.STABLE, 200),
        (to_stable, Variant.STABLE, 503),
        (to_candidate, Variant.CANDIDATE, 200),
        (to_candidate._replace(share=0.4), Variant.CANDIDATE, 500),
    ):
        recorder.record(
            RequestOutcome(
                at=1000.0,
                route="r",
                method="GET",
                decision=decision,
                variant=variant,
                status=status,
                duration=0.01,
            )
        )
    stable, candidate = observations.samples("r", 1001.0)
    assert stable.requests == candidate.requests == 2
    # stable: two requests at share 0.3, one an error; the candidate: at 0.1 and at 0.4, the
    # second a 500
    assert (stable.weight, stable.weight2) == pytest.approx((0.6, 0.18))
    assert (stable.error_weight, stable.error_weight2) == pytest.approx((0.3, 0.09))
    assert stable.latency[bucket_of(0.01)] == 0.3
    assert (candidate.weight, candidate.weight2) == pytest.approx((1.5, 0.81 + 0.36))
    assert (candidate.error_weight, candidate.error_weight2) == pytest.approx((0.6, 0.36))
    assert candidate.latency[bucket_of(0.01)] == 0.9 and candidate.latency_weight2 == 0.81


def test_a_fresh_window_has_assigned_nothing_even_at_the_start_of_time():
    window = Window(span=60.0)
    assert (window.sample(0.0).assigned, window.sample(0.0).expected) == (0, 0.0)
    window.expect(0.0, 0.5, True, True)
    window.expect(0.0, 0.5, True, False)
    assert (window.sample(0.0).assigned, window.sample(0.0).users) == (2, 1)


def test_a_window_sums_the_latencies_of_its_slots_and_is_empty_when_none_is_live():
    window = Window(span=60.0)  # 5 s slots
    window.add(1000.0, 1.0, False, 0.02)
    window.add(1006.0, 1.0, False, 0.06)
    two = window.sample(1006.0).latency  # two live slots
    assert two[bucket_of(0.02)] == 1 and two[bucket_of(0.06)] == 1
    window.add(1011.0, 1.0, False, 0.06)
    latency = window.sample(1011.0).latency
    assert latency[bucket_of(0.02)] == 1 and latency[bucket_of(0.06)] == 2
    assert Window(span=60.0).sample(1000.0).latency == (0.0,) * SIZE


@pytest.mark.parametrize(
    ("candidate_errors", "word", "low", "high"),
    [
        (120, Result.FAIL, 0.0383, 0.0617),  # 6 %: even the lower bound is beyond 1 point
        (50, Result.SUSPECT, 0.0064, 0.0236),  # 2.5 %: looks worse than allowed, not proven
        (26, Result.INCONCLUSIVE, -0.0042, 0.0102),  # 1.3 %: within, not yet proven within
        (22, Result.PASS, -0.0059, 0.0079),  # 1.1 %: even the upper bound is within 1 point
    ],
)
def test_each_word_on_a_worked_example(candidate_errors, word, low, high):
    """Stable: 20 errors in 2,000 requests; the candidate: 2,000 requests; 1 point allowed."""
    check = assess(sample(2000, 20), sample(2000, candidate_errors), SPEC, 0.0).checks[0]
    assert check.result is word
    assert check.bound == pytest.approx(low, abs=1e-4)
    assert check.upper == pytest.approx(high, abs=1e-4)


def test_error_is_the_word_of_what_could_not_be_measured():
    metric = MetricCheck("gpu", "q", ((Comparison.MAX_RATIO, 1.2),))
    down = Reading("q", None, "cannot query http://p:9090: ClientConnectorError", failed=True)
    unmeasured = metric_check(metric, down, Reading("q", 0.5))
    verdict = assess(sample(2000, 20), sample(2000, 22), SPEC, 0.0, metrics=(unmeasured,))
    assert [c.result for c in verdict.checks] == [Result.PASS, Result.PASS, Result.ERROR]
    assert verdict.result is Result.ERROR  # (not a pass: a check could not be seen)
    failing = assess(sample(2000, 20), sample(2000, 120), SPEC, 0.0, metrics=(unmeasured,))
    assert failing.result is Result.FAIL  # (what was measured proves it worse all the same)
    unread = Verdict.unmeasured(5.0, "cannot read the observations: timeout", SPEC.method)
    assert unread.to_json() == {
        "at": 5.0,
        "result": "error",
        "method": "fixed",
        "checks": [],
        "note": "cannot read the observations: timeout",
    }
