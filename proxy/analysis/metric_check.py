"""Custom metric checks (`analysis.metrics`): a PromQL query's value for each variant, the
candidate's judged against stable's or against absolute limits. Pure: the queries' answers in,
a `Check` out; `proxy.analysis.prometheus` asks the server.

Invariants:
- A check fails only on two finite values (one for `max`/`min`) that break a limit; a limit at
  its exact value passes. A query that could not be made or answered (Prometheus unreachable, an
  error answer, several series, a result of the wrong type) is an error: the check could not be
  measured, which the policy keeps apart (`analysis.max_errors_in_a_row`). A query that returned
  nothing or NaN/Inf, and a ratio over a stable value not above 0, are inconclusive (no traffic
  yet). Neither is ever a failure: missing data must not roll a candidate back.
- With several limits, the check's word is the worst of theirs (`verdict.worst`).
- Values are compared as the query returns them: how noisy they are is the query's business (its
  range, e.g. `[{{window}}]`); no confidence bound is made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.analysis.verdict import Check, Result, worst
from proxy.config.model import METRIC_PLACEHOLDER, Comparison, MetricCheck

_LOWER_LIMITS = {Comparison.MIN, Comparison.MIN_RATIO}
_COMPARED = {
    Comparison.MAX_INCREASE: "candidate - stable",
    Comparison.MAX_DECREASE: "stable - candidate",
    Comparison.MAX_RATIO: "candidate / stable",
    Comparison.MIN_RATIO: "candidate / stable",
    Comparison.MAX: "candidate",
    Comparison.MIN: "candidate",
}


@dataclass(frozen=True, slots=True)
class Reading:
    """One variant's answer to a metric query: its value, or why there is none."""

    query: str
    value: float | None = None
    problem: str | None = None
    failed: bool = False  # the query could not be made or answered (not merely empty)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "query": self.query,
            "value": self.value,
            "problem": self.problem,
            "failed": self.failed,
        }


def render(query: str, values: Mapping[str, str]) -> str:
    """`query` with each `{{name}}` replaced by `values[name]` (the loader admits only known
    names)."""
    return METRIC_PLACEHOLDER.sub(lambda match: values[match[1]], query)


def promql_duration(seconds: float) -> str:
    """`seconds` as a PromQL duration: `60s`, or `1500ms` when not whole seconds."""
    return f"{seconds:.0f}s" if seconds == int(seconds) else f"{round(seconds * 1000)}ms"


def _number(text: object) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]  # (Prometheus sends numbers as strings)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def reading(query: str, answer: object) -> Reading:
    """The reading in a Prometheus `/api/v1/query` answer (the decoded JSON)."""
    if not isinstance(answer, dict):
        return Reading(query, problem="not an answer of the Prometheus query API", failed=True)
    if answer.get("status") != "success":
        kind, error = answer.get("errorType", "error"), answer.get("error", "no reason given")
        return Reading(query, problem=f"{kind}: {error}", failed=True)
    data = answer.get("data")
    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    if kind == "vector" and isinstance(result, list):
        if not result:
            return Reading(query, problem="no data")
        if len(result) > 1:
            return Reading(
                query,
                problem=f"{len(result)} series: the query must return one "
                "(aggregate it, e.g. with sum or avg)",
                failed=True,
            )
        sample = result[0].get("value") if isinstance(result[0], dict) else None
        result = sample
    elif kind != "scalar":
        return Reading(
            query,
            problem=f"a {kind} result: the query must return one series or a scalar",
            failed=True,
        )
    text = result[1] if isinstance(result, list) and len(result) == 2 else None
    value = _number(text)
    if value is None:
        return Reading(query, problem=f"not a finite number: {text!r}")
    return Reading(query, value)


def _judge(
    kind: Comparison, limit: float, stable: Reading, candidate: Reading
) -> tuple[Result, float | None, str]:
    """One limit: its result, the compared value and what it says."""
    c, s = candidate.value, stable.value
    if candidate.failed:
        return Result.ERROR, None, f"cannot measure candidate ({candidate.problem})"
    if c is None:
        return Result.INCONCLUSIVE, None, f"no candidate value ({candidate.problem})"
    if kind in (Comparison.MAX, Comparison.MIN):
        observed = c
    elif stable.failed:
        return Result.ERROR, None, f"cannot measure stable ({stable.problem})"
    elif s is None:
        return Result.INCONCLUSIVE, None, f"no stable value ({stable.problem})"
    elif kind is Comparison.MAX_INCREASE:
        observed = c - s
    elif kind is Comparison.MAX_DECREASE:
        observed = s - c
    elif s > 0:
        observed = c / s
    else:
        return Result.INCONCLUSIVE, None, "stable's value is not above 0: no ratio to judge"
    lower = kind in _LOWER_LIMITS
    failed = observed < limit if lower else observed > limit
    relation = ("below" if lower else "above") if failed else "within"
    return (
        Result.FAIL if failed else Result.PASS,
        observed,
        f"{_COMPARED[kind]} = {observed:.4g} is {relation} {kind.value} {limit:g}",
    )


def metric_check(metric: MetricCheck, stable: Reading, candidate: Reading) -> Check:
    """The check `metric:<name>` on the two variants' readings."""
    judged = [
        (kind, limit, *_judge(kind, limit, stable, candidate)) for kind, limit in metric.limits
    ]
    result = worst(j[2] for j in judged)
    if result is Result.PASS:
        _, limit, _, observed, _ = judged[0]
        note = "; ".join(j[4] for j in judged)
    else:
        _, limit, _, observed, note = next(j for j in judged if j[2] is result)
    return Check(
        f"metric:{metric.name}",
        result,
        limit,
        observed,
        observed,
        stable.to_json(),
        candidate.to_json(),
        note,
        scope="query",
    )
