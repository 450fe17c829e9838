"""Custom metric checks, pure: the Prometheus answer read, the query filled in, each limit judged
at its exact boundary, and missing data inconclusive, never failed."""

from __future__ import annotations

import math
from typing import Any

import pytest

from proxy.analysis.metric_check import Reading, metric_check, promql_duration, reading, render
from proxy.analysis.verdict import Result
from proxy.config.model import Comparison, MetricCheck


def vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {"v": str(i)}, "value": [1700000000.5, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_a_vector_of_one_series_or_a_scalar_is_a_value():
    assert reading("q", vector("0.25")) == Reading("q", 0.25)
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1.0, "-3e2"]}}
    assert reading("q", scalar) == Reading("q", -300.0)


@pytest.mark.parametrize(
    ("answer", "problem", "failed"),
    [
        (vector(), "no data", False),  # (no traffic yet: inconclusive)
        (
            vector("1", "2"),
            "2 series: the query must return one (aggregate it, e.g. with sum or avg)",
            True,
        ),
        (vector("NaN"), "not a finite number: 'NaN'", False),
        (vector("+Inf"), "not a finite number: '+Inf'", False),
        (vector("fast"), "not a finite number: 'fast'", False),
        (
            {"status": "success", "data": {"resultType": "matrix", "result": []}},
            "a matrix result: the query must return one series or a scalar",
            True,
        ),
        (
            {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
            "not a finite number: None",
            False,
        ),
        (
            {"status": "success", "data": {"resultType": "vector", "result": [[1.0, "2"]]}},
            "not a finite number: None",
            False,
        ),
        (
            {"status": "error", "errorType": "bad_data", "error": "parse error at char 4"},
            "bad_data: parse error at char 4",
            True,
        ),
        ({"status": "error"}, "error: no reason given", True),
        ([1, 2], "not an answer of the Prometheus query API", True),
        (
            {"status": "success"},
            "a None result: the query must return one series or a scalar",
            True,
        ),
    ],
)
def test_anything_but_one_finite_number_is_a_problem(answer: object, problem: str, failed: bool):
    """A query that could not be answered as asked is a failure (an error check); an answer
    without a usable value is not (an inconclusive one)."""
    assert reading("q", answer) == Reading("q", None, problem, failed)


def test_placeholders_are_filled_with_or_without_spaces():
    values = {"route": "chat", "variant": "candidate", "host": "10.0.0.7", "window": "60s"}
    query = 'rate(x{r="{{route}}",v="{{ variant }}",i=~"{{host}}:.*"}[{{window}}]) > {{route}}'
    assert render(query, values) == ('rate(x{r="chat",v="candidate",i=~"10.0.0.7:.*"}[60s]) > chat')
    assert render("sum(up)", values) == "sum(up)"


def test_the_window_is_a_promql_duration():
    assert promql_duration(60.0) == "60s"
    assert promql_duration(1.0) == "1s"
    assert promql_duration(1.5) == "1500ms"
    assert promql_duration(0.25) == "250ms"


def check(**limits: float) -> MetricCheck:
    return MetricCheck("m", "q", tuple((Comparison(k), v) for k, v in limits.items()))


def judged(metric: MetricCheck, stable: float | None, candidate: float | None) -> Any:
    def read(value: float | None) -> Reading:
        return Reading("q", value, None if value is not None else "no data")

    return metric_check(metric, read(stable), read(candidate))


@pytest.mark.parametrize(
    ("limits", "stable", "candidate", "result", "observed"),
    [
        ({"max_increase": 0.5}, 1.0, 1.5, Result.PASS, 0.5),
        ({"max_increase": 0.5}, 1.0, 1.75, Result.FAIL, 0.75),
        ({"max_increase": 0.0}, 2.0, 1.0, Result.PASS, -1.0),
        ({"max_decrease": 0.25}, 1.0, 0.75, Result.PASS, 0.25),
        ({"max_decrease": 0.25}, 1.0, 0.5, Result.FAIL, 0.5),
        ({"max_ratio": 1.5}, 2.0, 3.0, Result.PASS, 1.5),
        ({"max_ratio": 1.5}, 2.0, 3.5, Result.FAIL, 1.75),
        ({"min_ratio": 0.5}, 2.0, 1.0, Result.PASS, 0.5),
        ({"min_ratio": 0.5}, 2.0, 0.5, Result.FAIL, 0.25),
        ({"max": 1.0}, None, 1.0, Result.PASS, 1.0),
        ({"max": 1.0}, None, 1.5, Result.FAIL, 1.5),
        ({"min": 1.0}, None, 1.0, Result.PASS, 1.0),
        ({"min": 1.0}, None, 0.5, Result.FAIL, 0.5),
        ({"min": -1.0}, 5.0, -1.0, Result.PASS, -1.0),
    ],
)
def test_each_limit_passes_at_its_value_and_fails_beyond(
    limits: dict[str, float],
    stable: float | None,
    candidate: float | None,
    result: Result,
    observed: float,
):
    found = judged(check(**limits), stable, candidate)
    assert (found.result, found.observed, found.bound) == (result, observed, observed)
    ((_, limit),) = limits.items()
    assert found.threshold == limit and found.name == "metric:m"


def test_notes_say_what_was_compared_with_which_limit():
    assert judged(check(max_ratio=1.5), 2.0, 3.5).note == (
        "candidate / stable = 1.75 is above max_ratio 1.5"
    )
    assert judged(check(min=1), None, 0.5).note == "candidate = 0.5 is below min 1"
    assert judged(check(max_increase=0.5), 1.0, 1.25).note == (
        "candidate - stable = 0.25 is within max_increase 0.5"
    )
    assert judged(check(max_decrease=0.5), 1.0, 0.0).note == (
        "stable - candidate = 1 is above max_decrease 0.5"
    )
    both = judged(check(max=2, min=1), None, 1.5)
    assert both.result is Result.PASS
    assert both.note == "candidate = 1.5 is within max 2; candidate = 1.5 is within min 1"


@pytest.mark.parametrize(
    ("limits", "stable", "candidate", "note"),
    [
        ({"max": 1.0}, 0.5, None, "no candidate value (no data)"),
        ({"max_increase": 1.0}, None, 0.5, "no stable value (no data)"),
        ({"max_decrease": 1.0}, None, 0.5, "no stable value (no data)"),
        ({"max_ratio": 2.0}, None, 0.5, "no stable value (no data)"),
        ({"max_ratio": 2.0}, 0.0, 0.5, "stable's value is not above 0: no ratio to judge"),
        ({"min_ratio": 0.5}, -1.0, 0.5, "stable's value is not above 0: no ratio to judge"),
    ],
)
def test_missing_data_is_inconclusive_never_a_failure(
    limits: dict[str, float], stable: float | None, candidate: float | None, note: str
):
    found = judged(check(**limits), stable, candidate)
    assert (found.result, found.observed, found.bound, found.note) == (
        Result.INCONCLUSIVE,
        None,
        None,
        note,
    )


def test_an_absolute_limit_needs_no_stable_value():
    assert judged(check(max=1.0), None, 0.5).result is Result.PASS


def test_any_failing_limit_fails_then_any_inconclusive_one_holds():
    failing = judged(check(max_ratio=10.0, max=1.0), 0.0, 2.0)
    assert (failing.result, failing.threshold, failing.note) == (
        Result.FAIL,
        1.0,
        "candidate = 2 is above max 1",
    )
    unsure = judged(check(max=5.0, max_ratio=10.0), 0.0, 2.0)
    assert (unsure.result, unsure.threshold) == (Result.INCONCLUSIVE, 10.0)
    assert judged(check(max=5.0, min=3.0, max_ratio=10.0), 1.0, 2.0).threshold == 3.0


def test_the_check_reports_both_readings_with_their_queries():
    found = metric_check(
        check(max=1.0), Reading("s{}", 0.5), Reading("c{}", None, "bad_data: oops")
    )
    assert found.stable == {"query": "s{}", "value": 0.5, "problem": None, "failed": False}
    assert found.candidate == {
        "query": "c{}",
        "value": None,
        "problem": "bad_data: oops",
        "failed": False,
    }
    assert found.note == "no candidate value (bad_data: oops)"


def test_a_query_that_failed_is_an_error_and_a_failure_still_wins():
    broken = Reading("c{}", None, "cannot query http://p:9090: ClientConnectorError", True)
    found = metric_check(check(max=1.0), Reading("s{}", 0.5), broken)
    assert (found.result, found.observed) == (Result.ERROR, None)
    assert (
        found.note == "cannot measure candidate (cannot query http://p:9090: ClientConnectorError)"
    )
    ratio = check(max_ratio=1.5)
    assert metric_check(ratio, broken, Reading("c{}", 2.0)).note == (
        "cannot measure stable (cannot query http://p:9090: ClientConnectorError)"
    )
    two = MetricCheck("m", "q", ((Comparison.MAX, 1.0), (Comparison.MAX_RATIO, 1.5)))
    over = metric_check(two, broken, Reading("c{}", 2.0))
    assert over.result is Result.FAIL  # (max: the candidate alone is beyond it)
    within = metric_check(two, broken, Reading("c{}", 0.5))
    assert within.result is Result.ERROR  # (the ratio could not be measured)
    assert found.to_json()["check"] == "metric:m"
    assert found.scope == "query"  # what the query's own range holds


def test_values_are_compared_exactly_as_returned():
    assert judged(check(max_ratio=1.1), 1.0, 1.1).result is Result.PASS  # 1.1 / 1.0 == 1.1
    assert judged(check(max_ratio=1.1), 1.0, math.nextafter(1.1, 2.0)).result is Result.FAIL
