"""A verdict told in words, for `grayscale explain`: what was compared, on how much data, against
which threshold, and what followed.

Pure: a verdict record as `GET /routes/{name}/verdicts` returns it, in; a paragraph, out.
"""

from __future__ import annotations

from typing import Any

_FOLLOWED = {
    "rollback": "rolled back",
    "promote": "promoted",
    "hold": "the ramp held",
    "continue": "the ramp goes on",
}


def _percent(value: float | None) -> str:
    return "?" if value is None else f"{value * 100:.1f} %"


def _points(value: float | None) -> str:
    return "?" if value is None else f"{value * 100:.1f} points"


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def _sizes(check: dict[str, Any]) -> str:
    sizes = f"after {check['candidate']['requests']} and {check['stable']['requests']} requests"
    if check.get("scope") == "recent":
        sizes += " of the current epoch (a change the counts since the start would dilute)"
    alpha = check.get("alpha")
    if isinstance(alpha, float):
        sizes += f", at an error rate of {alpha:.2g} (its share of the route's)"
    return sizes


def _compared(check: dict[str, Any], said: str, bound: str, what: str, allowed: str) -> str:
    """`said`, then how the check's bound of `what` compares with what is allowed (or, on thin
    data, why there is no bound)."""
    if check["bound"] is None:
        return f"{said}; {check['note']}"
    verb = "exceeds" if check["result"] == "fail" else "is within"
    return f"{said}; the bound of {what}, {bound}, {verb} the allowed {allowed} {_sizes(check)}"


def _error_rate(check: dict[str, Any]) -> str:
    c, s = check["candidate"], check["stable"]
    said = f"candidate error rate {_percent(c['error_rate'])}, stable {_percent(s['error_rate'])}"
    bound = _points(check["bound"])
    return _compared(check, said, bound, "the difference", _points(check["threshold"]))


def _latency(check: dict[str, Any]) -> str:
    c, s = check["candidate"], check["stable"]
    key = "latency_quantile_seconds"
    said = f"latency {_seconds(c.get(key))} against stable's {_seconds(s.get(key))}"
    bound = "?" if check["bound"] is None else f"{check['bound']:.2f}"
    return _compared(check, said, bound, "their ratio", f"{check['threshold']:g}")


def _outcome(check: dict[str, Any]) -> str:
    name = check["check"].removeprefix("outcome:")
    c, s = check["candidate"], check["stable"]
    said = f"{name}: candidate mean {_mean(c.get('mean'))}, stable {_mean(s.get('mean'))}"
    bound = "?" if check["bound"] is None else f"{check['bound']:.4g}"
    return _compared(check, said, bound, "the decrease", f"{check['threshold']:g}")


def _metric(check: dict[str, Any]) -> str:
    name = check["check"].removeprefix("metric:")
    c, s = check["candidate"], check["stable"]
    return f"{name}: candidate {_mean(c['value'])}, stable {_mean(s['value'])}; {check['note']}"


def _mean(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def check_in_words(check: dict[str, Any]) -> str:
    """One check of a verdict in words."""
    name = check["check"]
    if name == "error_rate":
        return _error_rate(check)
    if name == "latency":
        return _latency(check)
    if name.startswith("outcome:"):
        return _outcome(check)
    if name.startswith("metric:"):
        return _metric(check)
    if name == "sample_ratio" and check["bound"] is not None:
        c = check["candidate"]
        served = c["assigned"] + check["stable"]["assigned"]
        return (
            f"sample ratio: the candidate served {c['assigned']} of {served} randomly assigned "
            f"requests, {c['expected']:.1f} expected (p = {check['bound']:.2g}, "
            f"a mismatch below {check['threshold']:g})"
        )
    return f"{name} {check['result']}: {check['note']}"


def explain(record: dict[str, Any]) -> str:
    """A verdict record in words: the result and what followed, then each check (the failing
    ones first)."""
    followed = _FOLLOWED.get(record.get("action", ""), "")
    failures = record.get("consecutive_failures")
    needed = record.get("failures_before_rollback")
    head = f"{record['result']}"
    if followed:
        head += f", {followed}"
    if failures is not None and needed is not None and record["result"] == "fail":
        head += f" ({failures} of {needed} failures in a row)"
    order = {"fail": 0, "inconclusive": 1, "pass": 2}
    checks = sorted(record["checks"], key=lambda c: order.get(c["result"], 3))
    lines = [head + ":"]
    lines += [f"  {c['result']}: {check_in_words(c)}" for c in checks]
    return "\n".join(lines)
