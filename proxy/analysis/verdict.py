"""What a verdict on a candidate is made of: the words, each variant's observations, the checks
and the verdict. Pure values; `proxy.analysis.assessment.assess` makes a round's verdict from the
built-in checks (`proxy.analysis.checks`, `proxy.analysis.sample_ratio`), whose bounds are made
in `proxy.analysis.intervals`.

What is compared. Every request that the routing core assigned at random (by the user's bucket,
or by a draw for a keyless one, at a share strictly between 0 and 1) counts for the variant it
was assigned, whoever answered it (intention to treat: a fallback to stable after the candidate
failed is the candidate's error). Each counts with an **overlap weight**: 1 - share for the
candidate's, share for stable's (Li, Morgan and Zaslavsky 2018, "Balancing covariates via
propensity score weighting", JASA 113). At any moment both variants' weights then add up to the
same expected amount, share (1 - share) per request, so each variant's weighted mean is a mean
over the same moments: an incident that hits both alike, a share that moves, segments with their
own shares and outcomes that have not arrived yet for the newest requests weigh on both alike,
and the difference of the weighted means (Hajek's estimator) compares like with like. With a
constant share every weight is the same and the means are the plain ones.

Words. Each check bounds how much worse the candidate is, from below and from above, each bound
at the check's share of the error rate. It **fails** when the lower bound is beyond the limit
(proven worse than allowed), **passes** when the upper bound is within it (proven within the
limit), and is otherwise **suspect** when the estimate is beyond the limit (it looks worse, not
yet proven: the ramp is held whatever `on_inconclusive` says) or **inconclusive**. A check that
could not be measured is an **error** (a metric query that failed; a verdict whose observations
could not be read; a broken split, see `proxy.analysis.sample_ratio`). A verdict's word is its
checks' worst (`worst`: fail, error, suspect, inconclusive, pass). What follows from a verdict is
`proxy.analysis.policy`'s.

Invariants:
- Pure: frozen values and their arithmetic; no I/O, no clock.
- A sample less an earlier one of the same counts is what was observed between them.
- A check's or verdict's JSON holds no number that is not finite (None in its place).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

from proxy.config.model import AnalysisMethod

LATENCY_KEY = "latency_quantile_seconds"


class Result(StrEnum):
    """The outcome of a check or of a whole verdict (a verdict's is its checks' worst, in this
    order from the worst)."""

    FAIL = "fail"  # proven worse than allowed: the bound on the better side is beyond the limit
    ERROR = "error"  # could not be measured (a query or the fleet's data failed, a broken split)
    SUSPECT = "suspect"  # not proven either way, and the estimate is beyond the limit
    INCONCLUSIVE = "inconclusive"  # not proven either way (too little data, or too close)
    PASS = "pass"  # proven within the limit: the bound on the worse side is inside it


_WORST_FIRST = tuple(Result)


def worst(results: Iterable[Result]) -> Result:
    """The worst of `results` (pass when there are none)."""
    found = set(results)
    return next((r for r in _WORST_FIRST if r in found), Result.PASS)


def judged(observed: float, low: float, high: float | None, threshold: float) -> Result:
    """A check's word for an estimate `observed` of how much worse the candidate is, with its
    confidence interval (`low`, `high`; no `high`: not bounded on that side): fail when even the
    lower bound is beyond `threshold`, pass when even the upper bound is within it, otherwise
    suspect when the estimate is beyond it, inconclusive when not."""
    if low > threshold:
        return Result.FAIL
    if high is not None and high <= threshold:
        return Result.PASS
    return Result.SUSPECT if observed > threshold else Result.INCONCLUSIVE


@dataclass(frozen=True, slots=True)
class Moments:
    """Reported values of one outcome, each with its request's weight w: how many, and the sums
    of w, w², w·value, w²·value and w²·value²."""

    count: int = 0
    weight: float = 0.0
    weight2: float = 0.0
    total: float = 0.0
    total2: float = 0.0
    squares2: float = 0.0

    @classmethod
    def of(cls, value: float, weight: float) -> Moments:
        """One report of `value` for a request of weight `weight`."""
        w2 = weight * weight
        return cls(1, weight, w2, weight * value, w2 * value, w2 * value * value)

    def __add__(self, other: Moments) -> Moments:
        return Moments(*map(operator.add, _fields(self), _fields(other)))

    def __sub__(self, other: Moments) -> Moments:
        return Moments(*map(operator.sub, _fields(self), _fields(other)))


def _fields(m: Moments) -> tuple[Any, ...]:
    return (m.count, m.weight, m.weight2, m.total, m.total2, m.squares2)


_NO_MOMENTS = Moments()


@dataclass(frozen=True, slots=True)
class Clustering:
    """How many times more a variant's estimates vary than if every request were a user of its
    own (design effects, at least 1): of its error rate and of its share of slow requests (the
    latency check's), from the sampled users (`proxy.analysis.users`)."""

    errors: float = 1.0
    latency: float = 1.0


_ALONE = Clustering()


@dataclass(frozen=True)  # (not slots: `latency_total` is cached)
class Sample:
    """One variant's observations: compared requests (assigned at random, see the module's
    text) and their errors, the sums of their weights w and w², of w and w² over errors, the
    latency histogram (w per bucket) with its sum of w², and the outcomes reported, by name; then
    the sample-ratio counts and the design effects."""

    requests: int = 0
    errors: int = 0
    weight: float = 0.0
    weight2: float = 0.0
    error_weight: float = 0.0
    error_weight2: float = 0.0
    latency: tuple[float, ...] = ()
    latency_weight2: float = 0.0
    outcomes: Mapping[str, Moments] = field(default_factory=dict)
    assigned: int = 0  # requests assigned at random (by bucket) to this variant
    expected: float = 0.0  # how many of the randomly assigned it should have: the sum of shares
    users: int = 0  # sampled users whose first request in the window was assigned to it
    users_expected: float = 0.0  # how many of those it should have: the sum of their shares
    design_effect: float = 1.0  # the route's requests per user, squared over plain (see users.py)
    clustering: Clustering = _ALONE

    @classmethod
    def unweighted(
        cls,
        requests: int,
        errors: int,
        latency: Sequence[float] = (),
        outcomes: Mapping[str, Moments] | None = None,
    ) -> Sample:
        """Counts in which every request weighs 1 (a constant share)."""
        return cls(
            requests,
            errors,
            float(requests),
            float(requests),
            float(errors),
            float(errors),
            tuple(float(n) for n in latency),
            float(sum(latency)),
            outcomes or {},
        )

    def __sub__(self, earlier: Sample) -> Sample:
        """What was observed since `earlier` (a sample of the same counts, taken before); the
        sample-ratio counts are not carried, the design effects are."""
        outcomes = {
            name: moments - earlier.outcomes.get(name, _NO_MOMENTS)
            for name, moments in self.outcomes.items()
        }
        return Sample(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            self.weight - earlier.weight,
            self.weight2 - earlier.weight2,
            self.error_weight - earlier.error_weight,
            self.error_weight2 - earlier.error_weight2,
            tuple(map(operator.sub, self.latency, earlier.latency or (0.0,) * len(self.latency))),
            self.latency_weight2 - earlier.latency_weight2,
            outcomes,
            clustering=self.clustering,
        )

    @cached_property
    def latency_total(self) -> float:
        """The latency histogram's total weight."""
        return sum(self.latency)

    @property
    def error_rate(self) -> float | None:
        """The weighted error rate, or None without requests."""
        return self.error_weight / self.weight if self.weight > 0 else None

    def summary(self) -> dict[str, Any]:
        """Sizes and rate, for reports."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "latency_samples": self.latency_total,
        }


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome with what it saw.

    `observed` is the point estimate of how much worse the candidate is (error-rate difference,
    latency ratio, outcome decrease), `bound` and `upper` its confidence bounds: it fails when
    `bound` is beyond `threshold` and passes when `upper` is within it (`judged`); `alpha` is
    the share of the error rate each bound spent.
    """

    name: str
    result: Result
    threshold: float
    observed: float | None
    bound: float | None
    stable: dict[str, Any]
    candidate: dict[str, Any]
    note: str
    # what was judged: "window" (method fixed), "total" (since the start) or "recent" (the
    # current epoch) with method sequential, "query" (a metric check: the query's own range)
    scope: str = "window"
    alpha: float | None = None
    upper: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; a number that is not finite (a bound whose arithmetic overflowed)
        is None, as NaN and infinities are not JSON."""
        return {
            "check": self.name,
            "result": self.result.value,
            "threshold": finite_or_none(self.threshold),
            "observed": finite_or_none(self.observed),
            "bound": finite_or_none(self.bound),
            "upper": finite_or_none(self.upper),
            "stable": json_ready(self.stable),
            "candidate": json_ready(self.candidate),
            "note": self.note,
            "scope": self.scope,
            "alpha": finite_or_none(self.alpha),
        }


def finite_or_none(value: float | None) -> float | None:
    """`value`, or None when it is not finite."""
    return value if value is None or math.isfinite(value) else None


def json_ready(value: Any) -> Any:
    """`value` with every float in it (in dicts and lists) that is not finite made None."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class Verdict:
    """All checks of one analysis round; `result` is the worst of theirs (`worst`), or error
    when the sample-ratio check found the split broken; `note` says why a verdict without
    checks could not be taken."""

    at: float
    result: Result
    checks: tuple[Check, ...]
    method: AnalysisMethod = AnalysisMethod.FIXED
    note: str | None = None

    @classmethod
    def unmeasured(cls, at: float, why: str, method: AnalysisMethod) -> Verdict:
        """The verdict of a round whose observations could not be read."""
        return cls(at, Result.ERROR, (), method, why)

    @property
    def failing(self) -> tuple[Check, ...]:
        """The checks that failed."""
        return tuple(c for c in self.checks if c.result is Result.FAIL)

    @property
    def reference(self) -> float | None:
        """Stable's latency quantile, above which a request counts as slow in the users' sums
        (`Clustering`), if the verdict has one."""
        for check in self.checks:
            seconds = check.stable.get(LATENCY_KEY) if check.name == "latency" else None
            if isinstance(seconds, float):
                return seconds
        return None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (numbers that are not finite: None)."""
        return {
            "at": self.at,
            "result": self.result.value,
            "method": self.method.value,
            "checks": [c.to_json() for c in self.checks],
            "note": self.note,
        }
