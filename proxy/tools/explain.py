"""A verdict told in words, for `grayscale explain`: what was compared, on how much data, against
which threshold, and what followed.

Pure: a verdict record as `GET /routes/{name}/verdicts` returns it, in; a paragraph, out.
"""

from __future__ import annotations

from collections.abc import Callable
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


_MEANING = {
    "fail": "proven worse than allowed",
    "pass": "proven within the limit",
    "suspect": "looks worse than allowed, not yet proven: the ramp holds",
    "inconclusive": "not yet known",
}


def _compared(check: dict[str, Any], said: str, shown: Callable[[float], str], what: str) -> str:
    """`said`, then where the check's bounds of `what` lie against what is allowed, and what
    that makes of the check (or, on thin data, why there are no bounds)."""
    low: float | None = check["bound"]
    high: float | None = check.get("upper")
    if low is not None and high is not None:
        interval = f"between {shown(low)} and {shown(high)}"
    elif low is not None:
        interval = f"at least {shown(low)}"
    elif high is not None:
        interval = f"at most {shown(high)}"
    else:
        return f"{said}; {check['note']}"
    meaning = _MEANING.get(check["result"], check["note"])
    return (
        f"{said}; {what} is {interval} (allowed: {shown(check['threshold'])}) "
        f"{_sizes(check)}: {meaning}"
    )


def _error_rate(check: dict[str, Any]) -> str:
    c, s = check["candidate"], check["stable"]
    said = f"candidate error rate {_percent(c['error_rate'])}, stable {_percent(s['error_rate'])}"
    return _compared(check, said, _points, "the difference")


def _latency(check: dict[str, Any]) -> str:
    c, s = check["candidate"], check["stable"]
    key = "latency_quantile_seconds"
    said = f"latency {_seconds(c.get(key))} against stable's {_seconds(s.get(key))}"
    return _compared(check, said, lambda v: f"{v:.2f}", "their ratio")


def _outcome(check: dict[str, Any]) -> str:
    name = check["check"].removeprefix("outcome:")
    c, s = check["candidate"], check["stable"]
    said = f"{name}: candidate mean {_mean(c.get('mean'))}, stable {_mean(s.get('mean'))}"
    return _compared(check, said, lambda v: f"{v:.4g}", "the decrease")


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


_WORST_FIRST = ("fail", "error", "suspect", "inconclusive", "pass")


def explain(record: dict[str, Any]) -> str:
    """A verdict record in words: the result and what followed (and why), then each check (the
    worst first)."""
    followed = _FOLLOWED.get(record.get("action", ""), "")
    head = f"{record['result']}"
    if followed:
        head += f", {followed}"
    if record.get("why"):
        head += f" ({record['why']})"
    checks = sorted(
        record["checks"],
        key=lambda c: _WORST_FIRST.index(c["result"]) if c["result"] in _WORST_FIRST else 5,
    )
    lines = [head + ":"]
    if record.get("note"):
        lines.append(f"  {record['note']}")
    lines += [f"  {c['result']}: {check_in_words(c)}" for c in checks]
    return "\n".join(lines)
