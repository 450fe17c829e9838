"""The last hour of a route's analysis rounds, for the status page's charts: each round's share,
state and word, and per variant its requests, errors and latency quantile.

Invariants
- Bounded whatever the interval: one point per round, an hour's worth at the route's interval
  and never more than `CAP`; the oldest point goes first.
- A point's figures cover what the round saw, the same span for every point of a route
  (`covers`): with `method: fixed`, the analysis window ending at the round; with `method:
  sequential` (whose counts run since the rollout began), what came in since the round before,
  the difference of the two rounds' counts. A sequential round with no earlier counts to
  subtract, or only counts older than two intervals (a process that starts, or begins deciding
  again), has no figures rather than figures of a longer span; counts that went down (a new run
  counts anew) are the new run's, all of them.
- A round in a state that is not judged (rolled back, promoted) or whose observations could not
  be read keeps its share and state, without figures.
- Points are in time order: a point read from another replica (`follow`) is kept only when it
  is newer than the last one held, and only with numbers of the right types.
- Pure: samples in, JSON-ready points out; no clock, no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, TypeGuard

from proxy.analysis.histogram import quantile
from proxy.analysis.verdict import Sample
from proxy.config.model import AnalysisMethod, AnalysisSpec

HOUR = 3600.0
CAP = 720  # points per route: an hour at a 5 s interval; a shorter interval keeps less than an hour
_STALE = 2.0  # intervals after which a sequential round's earlier counts are too old to subtract


@dataclass(frozen=True, slots=True)
class Figures:
    """One variant's requests, errors and latency quantile (seconds; None without latencies)
    over a point's span."""

    requests: int
    errors: int
    latency: float | None

    @classmethod
    def of(cls, sample: Sample, q: float) -> Figures:
        """The figures of `sample`, with its latency histogram's `q`-quantile."""
        latency = quantile(sample.latency, q) if sample.latency_total > 0 else None
        return cls(sample.requests, sample.errors, latency)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"requests": self.requests, "errors": self.errors, "latency_seconds": self.latency}

    @classmethod
    def from_json(cls, data: object) -> Figures | None:
        """The figures in `data`, or None when it holds none of the right types."""
        if not isinstance(data, dict):
            return None
        requests, errors = data.get("requests"), data.get("errors")
        latency = data.get("latency_seconds")
        if not (_count(requests) and _count(errors)):
            return None
        return cls(requests, errors, float(latency) if _number(latency) else None)


@dataclass(frozen=True, slots=True)
class Point:
    """One analysis round: when, the rollout's state and the candidate's share then, the
    verdict's word (None in a state that is not judged), and each variant's figures."""

    at: float
    state: str
    share: float
    result: str | None
    stable: Figures | None
    candidate: Figures | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "at": self.at,
            "state": self.state,
            "share": self.share,
            "result": self.result,
            "stable": None if self.stable is None else self.stable.to_json(),
            "candidate": None if self.candidate is None else self.candidate.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> Point | None:
        """The point in `data` (as `to_json` wrote it), or None when it is not one."""
        if not isinstance(data, dict):
            return None
        at, state, share, result = (data.get(k) for k in ("at", "state", "share", "result"))
        if not (_number(at) and isinstance(state, str) and _number(share)):
            return None
        stable = Figures.from_json(data.get("stable"))
        candidate = Figures.from_json(data.get("candidate"))
        if (stable is None) != (candidate is None):
            stable = candidate = None
        word = result if isinstance(result, str) else None
        return cls(float(at), state, float(share), word, stable, candidate)


def size(interval: float) -> int:
    """How many points a route keeps: an hour at `interval` seconds, at most `CAP`."""
    return max(1, min(CAP, math.ceil(HOUR / interval)))


class Timeline:
    """A route's last hour of analysis rounds (see the module's text)."""

    def __init__(self, spec: AnalysisSpec):
        self.spec = spec
        self.points: deque[Point] = deque(maxlen=size(spec.interval))
        self._cumulative = spec.method is AnalysisMethod.SEQUENTIAL
        self._before: tuple[float, Sample, Sample] | None = None  # a sequential round's counts

    @property
    def covers(self) -> float:
        """The seconds a point's figures cover: the window, or the interval (sequential)."""
        return self.spec.interval if self._cumulative else self.spec.window

    def figures(
        self, at: float, stable: Sample, candidate: Sample
    ) -> tuple[Figures, Figures] | None:
        """Each variant's figures of a round at `at` that judged `stable` and `candidate`;
        None for a sequential round with no recent counts to subtract (see the module's
        text)."""
        q = self.spec.latency_quantile
        if not self._cumulative:
            return Figures.of(stable, q), Figures.of(candidate, q)
        before, self._before = self._before, (at, stable, candidate)
        if before is None or at - before[0] > _STALE * self.spec.interval:
            return None
        _, stable_before, candidate_before = before
        if stable.requests < stable_before.requests or candidate.requests < (
            candidate_before.requests
        ):
            return Figures.of(stable, q), Figures.of(candidate, q)  # (a new run: all of it)
        return Figures.of(stable - stable_before, q), Figures.of(candidate - candidate_before, q)

    def add(
        self,
        at: float,
        state: str,
        share: float,
        result: str | None = None,
        figures: tuple[Figures, Figures] | None = None,
    ) -> Point:
        """Keep the point of a round at `at` (its `figures`, if any: see `figures`)."""
        stable, candidate = figures if figures is not None else (None, None)
        point = Point(at, state, share, result, stable, candidate)
        self.points.append(point)
        return point

    def follow(self, data: object) -> None:
        """Keep a point another replica published (`Point.to_json`), if it is one and newer
        than the last held."""
        point = Point.from_json(data)
        if point is not None and (not self.points or point.at > self.points[-1].at):
            self.points.append(point)

    def to_json(self) -> dict[str, Any]:
        """The timeline for `GET /routes/{name}/timeline`: oldest point first."""
        return {
            "interval_seconds": self.spec.interval,
            "covers_seconds": self.covers,
            "method": self.spec.method.value,
            "latency_quantile": self.spec.latency_quantile,
            "capacity": self.points.maxlen,
            "points": [point.to_json() for point in self.points],
        }


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
