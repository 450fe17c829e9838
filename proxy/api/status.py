"""The `GET /status` document: the one place that decides its shape.

The parts that keep their own state give their own views (the analysis loop, a route's candidate
breaker, its shadow comparisons); everything else is read from the controller and the counters,
and `status_document` puts them together, the same keys for every route whatever it has (a part
a route lacks is `null`).

Invariants
- Rollout salts (with a bucket, a salt narrows a user id down) appear only for a request with
  the token (`privileged`).
- With several workers (`host`), the request counts and error rates are the whole host's, and
  `worker` says which worker answered.
- A segment's entry says what it serves now: when the rollout's state decides alone (rolled
  back, promoted), every segment serves that variant, whatever it is pinned to; `forced` names
  that state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from proxy.analysis.analyzer import Analyzer
from proxy.config.model import Config, Ramp, Route, Segment, Variant
from proxy.config.reload import ReloadResult
from proxy.dataplane.ejection import Breaker
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import Transition
from proxy.routing import RolloutTerms, current_share
from proxy.runtime import clock
from proxy.telemetry.host_metrics import HostMetrics
from proxy.telemetry.metrics import CODE_CLASSES, Recorder


@dataclass(frozen=True, slots=True)
class StatusParts:
    """What `/status` is read from: the rollouts, the counters, the analysis, each route's
    candidate breaker and shadow view, and the host's workers (None: one process)."""

    controller: RolloutController
    recorder: Recorder
    analyzer: Analyzer
    breaker: Callable[[str], Breaker | None]
    shadows: Callable[[Route], dict[str, Any] | None]
    host: HostMetrics | None = None


def status_document(
    parts: StatusParts,
    config: Config,
    *,
    now: float,
    privileged: bool,
    last_reload: ReloadResult | None,
    clock_error: str | None,
) -> dict[str, Any]:
    """The whole `/status` answer at `now`: `config`, `state`, `routes` (see `route_entry`),
    and `worker` with several workers."""
    controller, host = parts.controller, parts.host
    counts: Callable[[str], dict[str, dict[str, int]]] = parts.recorder.counts
    if host is not None:
        counts = partial(host.counts, host.families())  # (the whole host's)
    routes = [
        route_entry(parts, route, counts(route.name), now=now, privileged=privileged)
        for route in controller.routes()
    ]
    document: dict[str, Any] = {
        "config": {
            "hash": config.digest,
            "source": config.source,
            "last_reload": None if last_reload is None else last_reload.to_json(),
        },
        "state": {
            "backend": config.state.backend.value,
            "healthy": controller.store_error is None,
            "error": controller.store_error,
            "unreadable_at_start": controller.load_error,
            "clock_offset_seconds": round(-clock.offset(), 6),
            "clock_error": clock_error,
        },
        "routes": routes,
    }
    if host is not None:
        document["worker"] = {"index": host.index, "of": host.count, "pid": os.getpid()}
    return document


def route_entry(
    parts: StatusParts,
    route: Route,
    counts: dict[str, dict[str, int]],
    *,
    now: float,
    privileged: bool,
) -> dict[str, Any]:
    """One route's entry, with `counts` (requests per variant and code class); its salt only
    for a token holder (`privileged`)."""
    controller, name = parts.controller, route.name
    rollout = controller.rollout(name)
    control = controller.control(name, now)
    state = controller.state(name, now).value
    breaker = parts.breaker(name)
    ramp_fixed = control.forced is not None or rollout.share_override is not None
    return {
        "name": name,
        "path_prefix": route.path_prefix,
        "state": state,
        "share": controller.share(name, now),
        "share_override": rollout.share_override,
        "stable": route.stable.url,
        "candidate": route.candidate.url,
        "rollout": {
            "started_at": rollout.started_at,
            "run": rollout.run,
            "held_seconds": rollout.held + (now - rollout.frozen_at if rollout.frozen_at else 0),
            **({"salt": route.cohort.salt} if privileged else {}),
        },
        "ramp": {
            **_ramp(route.ramp),
            "reaches_max_at": None
            if ramp_fixed
            else _reaches_max_at(route.ramp, control.started_at, control.clock, now),
        },
        "segments": [_segment(segment, control, state) for segment in route.segments],
        "last_transition": transition_entry(rollout.last),
        "history": [transition_entry(t) for t in reversed(rollout.history)],
        "requests": counts,
        "error_rate": {variant: error_rate(by_class) for variant, by_class in counts.items()},
        "analysis": parts.analyzer.status(route),
        "ejection": None if breaker is None else breaker.status(now),
        "shadow": parts.shadows(route),
    }


def _segment(segment: Segment, control: RolloutTerms, state: str) -> dict[str, Any]:
    """A segment's entry: its pinned `variant` (None for one with its own ramp), the
    candidate's `share` in it now, and `forced`: the rollout state that sends every request
    one way (None while the segment decides)."""
    if control.forced is not None:
        share = 1.0 if control.forced is Variant.CANDIDATE else 0.0
    elif segment.ramp is not None:
        share = current_share(segment.ramp, control.started_at, control.clock)
    else:
        share = 1.0 if segment.variant is Variant.CANDIDATE else 0.0
    return {
        "name": segment.name,
        "variant": None if segment.variant is None else segment.variant.value,
        "share": share,
        "forced": None if control.forced is None else state,
    }


def _ramp(ramp: Ramp) -> dict[str, Any]:
    return {
        "start": ramp.start,
        "base": ramp.base,
        "slope": ramp.slope,
        "per_seconds": ramp.per,
        "max": ramp.max,
    }


def _reaches_max_at(ramp: Ramp, started_at: float, ramp_clock: float, now: float) -> float | None:
    """When (wall time) the ramp reaches its max if it is not held or paused again; None for a
    ramp that does not grow."""
    if ramp.slope <= 0 or ramp.max <= ramp.base:
        return None
    start = ramp.start if ramp.start is not None else started_at
    return now + (start + ramp.per * (ramp.max - ramp.base) / ramp.slope - ramp_clock)


def transition_entry(transition: Transition | None) -> dict[str, Any] | None:
    """A rollout change as `/status` and the actions' answers show it."""
    if transition is None:
        return None
    return {
        "action": transition.action.value,
        "at": transition.at,
        "actor": transition.actor,
        "before": transition.before.value,
        "after": transition.after.value,
        "reason": transition.reason,
        "share": transition.share,
    }


def error_rate(by_class: dict[str, int]) -> float | None:
    """5xx answers and upstream failures over all requests (None without requests)."""
    total = sum(by_class[c] for c in CODE_CLASSES)
    return (by_class["5xx"] + by_class["error"]) / total if total else None
