"""`grayscale selftest`'s simulation of a route's analysis."""

from __future__ import annotations

from dataclasses import replace

from proxy.config.loader import parse_config
from proxy.config.model import AnalysisMethod, Comparison, MetricCheck, PrometheusSource
from proxy.selftest import Traffic, report, seconds_to_roll_back

ROUTE = parse_config(
    "routes:\n"
    "  - name: r\n"
    "    match: {path_prefix: /}\n"
    '    stable: {url: "http://127.0.0.1:1"}\n'
    '    candidate: {url: "http://127.0.0.1:2"}\n'
    '    cohort: {keys: ["header:X-User-Id"]}\n'
    "    analysis: {interval: 10s, min_requests: 100}\n"
).routes[0]


def test_a_bad_candidate_is_caught_and_the_figures_are_reproducible():
    spec = ROUTE.analysis
    assert spec is not None and spec.method is AnalysisMethod.SEQUENTIAL
    stable, worse = Traffic(40.0), Traffic(10.0, error_rate=0.2)
    caught = seconds_to_roll_back(spec, stable, worse, 3600.0, seed=1)
    assert caught is not None and caught % 10 == 0  # at a verdict
    assert seconds_to_roll_back(spec, stable, Traffic(10.0), 600.0, seed=1) is None
    text = report(ROUTE, rate=20.0, share=0.5, runs=4, hours=0.25, seed=3, workers=1)
    # the same figures whichever process simulates which run
    assert text == report(ROUTE, rate=20.0, share=0.5, runs=4, hours=0.25, seed=3, workers=2)
    lines = text.splitlines()
    assert lines[0].startswith("route r: sequential analysis every 10s, min_requests 100")
    assert lines[2].startswith("  equal candidates (A/A): 0 of 4 rolled back within 15.0m")
    assert lines[3].startswith("  +5 points of errors: rolled back in median ")
    assert lines[4].startswith("  2x slower: rolled back in median ")
    assert lines[5].startswith(
        "  +5 points of errors from 7.5m in (times since then): rolled back in median "
    )


def test_a_late_change_is_simulated_from_its_onset_and_timed_from_it():
    spec = ROUTE.analysis
    assert spec is not None
    stable = Traffic(40.0)
    late = Traffic(40.0, error_rate=0.5, onset=600.0)
    caught = seconds_to_roll_back(spec, stable, late, 3600.0, seed=1)
    assert caught is not None and 600.0 < caught < 1200.0
    before = Traffic(40.0, error_rate=0.5, onset=3600.0)  # never within the horizon
    assert seconds_to_roll_back(spec, stable, before, 3600.0, seed=1) is None


def test_the_fixed_method_is_simulated_on_its_window():
    assert ROUTE.analysis is not None
    fixed = replace(ROUTE, analysis=replace(ROUTE.analysis, method=AnalysisMethod.FIXED))
    text = report(fixed, rate=20.0, share=0.5, runs=2, hours=0.1, workers=1)
    assert text.startswith("route r: fixed analysis")
    assert "never caught" not in text.splitlines()[3]


def test_metric_checks_are_named_as_not_simulated_and_do_not_hold_the_simulation():
    assert ROUTE.analysis is not None
    metrics = (
        MetricCheck("gpu", "q", ((Comparison.MAX, 1.0),)),
        MetricCheck("score", "q", ((Comparison.MIN, 0.5),)),
    )
    analysis = replace(ROUTE.analysis, prometheus=PrometheusSource("http://p:1"), metrics=metrics)
    lines = report(
        replace(ROUTE, analysis=analysis), rate=20.0, share=0.5, runs=2, hours=0.1, workers=1
    )
    lines_without = report(ROUTE, rate=20.0, share=0.5, runs=2, hours=0.1, workers=1)
    assert lines.splitlines()[:-1] == lines_without.splitlines()
    assert lines.splitlines()[-1] == (
        "  not simulated: the custom metric checks (gpu, score), whose values Prometheus has"
    )
