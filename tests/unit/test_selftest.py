"""`grayscale selftest`'s simulation of a route's analysis and decision policy."""

from __future__ import annotations

from dataclasses import replace

import pytest

from proxy.config.loader import parse_config
from proxy.config.model import (
    AnalysisMethod,
    Comparison,
    MetricCheck,
    OutcomeCheck,
    PrometheusSource,
)
from proxy.tools.selftest import report, scenarios
from proxy.tools.selftest_rounds import simulate
from proxy.tools.selftest_traffic import Scenario, World

ROUTE = parse_config(
    "routes:\n"
    "  - name: r\n"
    "    match: {path_prefix: /}\n"
    '    stable: {url: "http://127.0.0.1:1"}\n'
    '    candidate: {url: "http://127.0.0.1:2"}\n'
    '    cohort: {keys: ["header:X-User-Id"]}\n'
    "    analysis: {interval: 10s, min_requests: 100}\n"
).routes[0]
assert ROUTE.analysis is not None
SPEC = ROUTE.analysis
FIXED = replace(SPEC, method=AnalysisMethod.FIXED, window=120.0)
CLICKS = replace(SPEC, outcomes=(OutcomeCheck("click", max_decrease=0.02),))


@pytest.mark.parametrize(
    ("spec", "world", "scenario"),
    [
        (SPEC, World(40.0, 0.5), Scenario("equal")),
        (SPEC, World(40.0, 0.5), Scenario("+3 points", extra_errors=0.03)),
        (SPEC, World(40.0, 0.5), Scenario("1.6x slower", slowdown=1.6)),
        (SPEC, World(40.0, 0.5), Scenario("late", extra_errors=0.1, onset=900.0)),
        (SPEC, World(40.0, 0.2, incident=0.3), Scenario("+2 points", extra_errors=0.02)),
        (FIXED, World(40.0, 0.5), Scenario("+5 points", extra_errors=0.05)),
        (FIXED, World(40.0, 0.5), Scenario("2x slower", slowdown=2.0)),
        (CLICKS, World(40.0, 0.5, outcome_rate=0.1), Scenario("clicks", conversion_drop=0.04)),
    ],
)
def test_judging_only_where_a_check_can_fail_finds_what_judging_every_round_finds(
    spec, world, scenario
):
    fast = simulate(spec, world, scenario, horizon=1800.0, runs=6, seed=5)
    every = simulate(spec, world, scenario, horizon=1800.0, runs=6, seed=5, every_round=True)
    assert fast == every
    if scenario.name != "equal":
        assert any(t is not None for t in fast)  # (the comparison saw rollbacks)


def test_a_rollback_lands_on_a_verdict_and_a_late_change_is_caught_after_its_onset():
    late = Scenario("late", extra_errors=0.5, onset=600.0)
    caught = simulate(SPEC, World(40.0, 0.5), late, horizon=3600.0, runs=4, seed=1)
    assert all(t is not None and 600.0 < t < 1200.0 and t % 10 == 0 for t in caught)
    never = Scenario("after the end", extra_errors=0.5, onset=3600.0)
    assert simulate(SPEC, World(40.0, 0.5), never, horizon=3600.0, runs=4, seed=1) == [None] * 4


def test_the_report_is_reproducible_whichever_process_simulates_which_scenario():
    world = World(20.0, 0.5)
    text = report(ROUTE, world, runs=4, hours=0.25, seed=3, workers=1)
    assert text == report(ROUTE, world, runs=4, hours=0.25, seed=3, workers=2)
    lines = text.splitlines()
    assert lines[0].startswith("route r: sequential analysis every 10s, min_requests 100")
    assert lines[2].startswith("  equal candidates (A/A): 0 of 4 rolled back within 15.0m")
    assert lines[3].startswith("  +5 points of errors: rolled back in median ")
    assert lines[4].startswith("  +2 points of errors (2x the allowed): ")
    assert lines[5].startswith("  2x slower: rolled back in median ")
    assert lines[6].startswith("  3x slower (2x the allowed ratio): rolled back in median ")
    assert lines[7].startswith(
        "  +5 points of errors from 7.5m in (times since then): rolled back in median "
    )


def test_scenarios_scale_with_the_limits_and_say_why_one_cannot_be_caught():
    loose = replace(SPEC, max_error_rate_increase=0.05, max_latency_ratio=5.0)
    found = {s.name: s for s in scenarios(loose, World(), 4 * 3600.0)}
    assert found["+5 points of errors"].unseen == "within the allowed increase of 0.05"
    assert found["2x slower"].unseen == "within the allowed ratio of 5"
    assert found["+10 points of errors (2x the allowed)"].extra_errors == pytest.approx(0.1)
    assert found["10x slower (2x the allowed ratio)"].slowdown == 10.0
    exact = {
        s.name: s for s in scenarios(replace(SPEC, max_error_rate_increase=0.0), World(), 3600)
    }
    assert exact["+0 points of errors (2x the allowed)"].unseen == (
        "max_error_rate_increase is 0: see +5 points"
    )
    thin = scenarios(replace(SPEC, method=AnalysisMethod.FIXED), World(rate=1.0), 3600.0)
    assert thin[0].unseen == (
        "a 60s window holds ~6 requests of the smaller variant, fewer than min_requests 100: "
        "every verdict is inconclusive"
    )
    fixed = replace(ROUTE, analysis=replace(SPEC, method=AnalysisMethod.FIXED))
    lines = report(fixed, World(rate=1.0), runs=2, hours=1.0).splitlines()  # (nothing to run)
    assert lines[2] == f"  equal candidates (A/A): never judged: {thin[0].unseen}"
    assert lines[3] == f"  +5 points of errors: cannot be caught: {thin[0].unseen}"
    text = report(replace(ROUTE, analysis=loose), World(20.0, 0.5), runs=2, hours=0.1, workers=1)
    assert "  +5 points of errors: cannot be caught: within the allowed increase of 0.05" in (
        text.splitlines()
    )


def test_outcome_checks_are_simulated_with_a_conversion_rate_or_named_with_why_not():
    rating = OutcomeCheck("rating", max_decrease=0.1, relative=True)
    spec = replace(CLICKS, outcomes=(*CLICKS.outcomes, replace(rating, per=rating.per.OUTCOME)))
    without = {s.name: s.unseen for s in scenarios(spec, World(), 3600.0)}
    assert without["click falls by 2x the allowed"] == (
        "give --outcome-rate to simulate conversions"
    )
    assert without["rating falls by 2x the allowed"] == "per: outcome values are not simulated"
    clicks = {s.name: s for s in scenarios(spec, World(outcome_rate=0.1), 3600.0)}
    assert clicks["click falls by 2x the allowed"].conversion_drop == pytest.approx(0.04)


def test_metric_checks_are_named_as_not_simulated():
    metrics = (
        MetricCheck("gpu", "q", ((Comparison.MAX, 1.0),)),
        MetricCheck("score", "q", ((Comparison.MIN, 0.5),)),
    )
    analysis = replace(SPEC, prometheus=PrometheusSource("http://p:1"), metrics=metrics)
    world = World(20.0, 0.5)
    lines = report(replace(ROUTE, analysis=analysis), world, runs=2, hours=0.1, workers=1)
    assert lines.splitlines()[-1] == (
        "  not simulated: the custom metric checks (gpu, score), whose values Prometheus has"
    )
