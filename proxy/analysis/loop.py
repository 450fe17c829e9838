"""The analysis loop: a verdict per route every interval, and what follows from it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from redis.exceptions import RedisError

from proxy.analysis.epochs import Epochs
from proxy.analysis.prometheus import MetricQueries, hostname
from proxy.analysis.verdict import (
    LATENCY_KEY,
    Clustering,
    Result,
    Sample,
    Verdict,
    analysis_share,
    assess,
)
from proxy.analysis.window import ObservationSource
from proxy.config.model import AnalysisMethod, AnalysisSpec, Inconclusive, Route, Variant
from proxy.fleet.connection import cancel_and_wait
from proxy.fleet.member import FleetMember
from proxy.metrics import Recorder
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import Action, IllegalTransition, State
from proxy.rollout.store import StateUnavailable

log = logging.getLogger("grayscale.analysis")
_JUDGED = {State.PENDING, State.RAMPING, State.COMPLETE, State.PAUSED}
HISTORY = 20  # verdicts kept per route for GET /routes/{name}/verdicts


@dataclass
class RouteAnalysis:
    """What the loop remembers of one route between rounds. In a fleet, `published` is the
    decider's latest verdict as it published it (this replica's own, when it decides)."""

    spec: AnalysisSpec
    promote_after: float | None = None  # `promote.after`, if the route promotes on its own
    hosts: dict[Variant, str] = field(default_factory=dict)  # upstream host names, for metrics
    epochs: Epochs = field(default_factory=Epochs)  # of the counts since the start (sequential)
    judging: tuple[str, int] | None = None  # (rollout identity, this analysis's number of it)
    last: Verdict | None = None
    failures: int = 0
    published: dict[str, Any] | None = None
    passing_since: float | None = None  # since when every verdict at the ramp's max passed
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def remember(self, verdict: Verdict, action: str) -> None:
        """Keep a verdict with its inputs, the failure count and what the loop did on it."""
        record = verdict.to_json()
        record |= {"consecutive_failures": self.failures, "action": action}
        record["failures_before_rollback"] = self.spec.failures_before_rollback
        self.history.appendleft(record)

    def status(self, holding: bool, fleet: FleetMember | None) -> dict[str, Any]:
        """The `/status` view."""
        view: dict[str, Any] = {
            "interval_seconds": self.spec.interval,
            "window_seconds": self.spec.window,
            "min_requests": self.spec.min_requests,
            "failures_before_rollback": self.spec.failures_before_rollback,
            "consecutive_failures": self.failures,
            "holding": holding,
            "analysis_number": None if self.judging is None else self.judging[1],
            "last_verdict": None if self.last is None else self.last.to_json(),
        }
        if self.promote_after is not None:
            view["promotes_at"] = (
                None if self.passing_since is None else self.passing_since + self.promote_after
            )
        if fleet is not None:
            published = self.published or {}
            view["consecutive_failures"] = published.get("failures", 0)
            view["last_verdict"] = published.get("verdict")
            view["decided_by"] = published.get("decider")
            view["decider"] = fleet.decider.holder
            view["this_replica_decides"] = fleet.decider.deciding
        return view


def _reason(verdict: Verdict) -> str:
    parts = []
    for check in verdict.failing:
        if check.name.startswith("metric:"):
            parts.append(f"{check.name} {check.note}")
            continue
        observed = "?" if check.observed is None else f"{check.observed:.4g}"
        bound = "?" if check.bound is None else f"{check.bound:.4g}"
        epoch = " in the current epoch" if check.scope == "recent" else ""
        parts.append(f"{check.name} {observed} (bound {bound} > {check.threshold:g}){epoch}")
    return "analysis: " + "; ".join(parts)


def _own_ratio(pooled: Sample, own: Sample) -> Sample:
    """The fleet's sample with this process's sample-ratio counts and design effects. A design
    effect seen in this process's share of the traffic is scaled to the fleet's: if a user's
    requests are spread over the replicas, each sees 1/R of them and the excess over 1 that
    clustering adds is R times smaller (R: the fleet's weight over this process's); with users
    kept on one replica this overstates it, which only widens the bounds."""
    spread = pooled.weight / own.weight if own.weight > 0 else 1.0
    clustering = Clustering(
        1.0 + (own.clustering.errors - 1.0) * max(spread, 1.0),
        1.0 + (own.clustering.latency - 1.0) * max(spread, 1.0),
    )
    return replace(
        pooled,
        assigned=own.assigned,
        expected=own.expected,
        users=own.users,
        users_expected=own.users_expected,
        design_effect=own.design_effect,
        clustering=clustering,
    )


def refer(source: ObservationSource, route: str, verdict: Verdict) -> None:
    """Tell `source` stable's latest latency quantile, above which a request counts as slow in
    the users' sums (`Clustering`), if the verdict has one."""
    for check in verdict.checks:
        seconds = check.stable.get(LATENCY_KEY) if check.name == "latency" else None
        if isinstance(seconds, float):
            source.refer(route, seconds)
            return


class Analyzer:
    """Judges each analysed route every `interval` and rolls a failing candidate back.

    After `failures_before_rollback` consecutive failed verdicts the route is rolled back. While a
    verdict is not a pass (too little data, or failures not yet enough to roll back), the ramp is
    held under `on_inconclusive: hold`, so the share does not grow on thin or bad data; a pass
    releases it. A ramp with no candidate traffic to observe (share 0) is never held.
    """

    def __init__(
        self,
        routes: Sequence[Route],
        controller: RolloutController,
        source: ObservationSource,
        recorder: Recorder,
        fleet: FleetMember | None = None,
    ):
        """With `fleet`, only the fleet's decider judges, on the fleet's pooled observations,
        and publishes its verdicts; the other replicas read them."""
        self.controller = controller
        self.source = source
        self.recorder = recorder
        self.fleet = fleet
        self.queries = MetricQueries()
        self.routes: dict[str, RouteAnalysis] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False
        self.update(routes)

    def update(self, routes: Sequence[Route]) -> None:
        """Follow a (new) config: routes whose analysis is unchanged keep their history."""
        previous = self.routes
        self.routes = {}
        for route in routes:
            if route.analysis is None:
                continue
            kept = previous.get(route.name)
            after = None if route.promote is None else route.promote.after
            same = kept is not None and (kept.spec, kept.promote_after) == (route.analysis, after)
            fresh = RouteAnalysis(route.analysis, after)
            self.routes[route.name] = kept if same and kept else fresh
            self.routes[route.name].hosts = {
                Variant.STABLE: hostname(route.stable.url),
                Variant.CANDIDATE: hostname(route.candidate.url),
            }
        for name, task in list(self._tasks.items()):
            if self.routes.get(name) is not previous.get(name):
                task.cancel()
                del self._tasks[name]
        if self._running:
            self.start()

    def start(self) -> None:
        """Start a loop for every analysed route that has none."""
        self._running = True
        for name, analysis in self.routes.items():
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(self._run(name, analysis.spec.interval))

    async def stop(self) -> None:
        """Stop every loop."""
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            await cancel_and_wait(task)
        await self.queries.close()

    async def _run(self, name: str, interval: float) -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time() + interval
        while self._tasks.get(name) is asyncio.current_task():  # (replaced or stopped: end)
            await asyncio.sleep(max(0.0, next_round - loop.time()))
            next_round += interval
            try:
                await self.round(name, time.time())
            except Exception:
                log.exception("analysis round failed", extra={"route": name})

    async def round(self, name: str, now: float) -> Verdict | None:
        """One analysis round of route `name` at `now`; None when the state is not judged."""
        analysis = self.routes.get(name)
        if analysis is None or name not in self.controller:
            return None  # (the route left the config, or its analysis did)
        spec = analysis.spec
        if self.controller.state(name, now) not in _JUDGED:
            analysis.failures = 0
            return None
        if self.fleet is None:
            stable, candidate = self.source.samples(name, now)
        else:
            pooled = await self._pooled(name, analysis, now)
            if pooled is None:
                return None
            stable, candidate = pooled
        metrics = await self.queries.checks(name, spec, analysis.hosts, now)
        recent, share = None, 1.0
        if spec.method is AnalysisMethod.SEQUENTIAL:
            identity = self.controller.rollout(name).identity
            if analysis.judging is None or analysis.judging[0] != identity:
                # Counts judged anew (this process, this decider): a new share of the rate.
                number = await self.controller.judge_anew(name)
                if number == 0:
                    return None  # (the shared store is unreachable: no verdict now)
                analysis.judging, analysis.epochs = (identity, number), Epochs()
            recent = analysis.epochs.recent(stable, candidate, spec.min_requests)
            share = analysis_share(analysis.judging[1])
        verdict = assess(stable, candidate, spec, now, metrics=metrics, recent=recent, share=share)
        refer(self.source, name, verdict)
        analysis.last = verdict
        analysis.failures = analysis.failures + 1 if verdict.result is Result.FAIL else 0
        if self.fleet is not None:
            analysis.published = {
                "at": now,
                "failures": analysis.failures,
                "verdict": verdict.to_json(),
                "decider": self.fleet.decider.name,
            }
            with contextlib.suppress(RedisError, OSError):
                await self.fleet.decider.publish(name, analysis.published, 3 * spec.interval + 10)
        self.recorder.observe_verdict(name, verdict)
        log.log(
            logging.WARNING if verdict.result is Result.FAIL else logging.INFO,
            "verdict %s (%s)%s",
            verdict.result.value,
            ", ".join(f"{c.name} {c.result.value}" for c in verdict.checks),
            f": {analysis.failures}/{spec.failures_before_rollback} failures"
            if analysis.failures
            else "",
            extra={"route": name},
        )
        if analysis.failures >= spec.failures_before_rollback:
            analysis.remember(verdict, "rollback")
            await self._roll_back(name, verdict, now)
            analysis.failures = 0
            return verdict
        if analysis.promote_after is not None and await self._promote_when_due(
            name, analysis, verdict, now
        ):
            analysis.remember(verdict, "promote")
            return verdict
        hold = (
            verdict.result is Result.FAIL
            or verdict.mismatched  # held whatever on_inconclusive says: nothing can be judged
            or (verdict.result is Result.INCONCLUSIVE and spec.on_inconclusive is Inconclusive.HOLD)
        )
        # With no candidate traffic there is nothing to wait for: holding would stall for ever.
        hold = hold and self.controller.share(name, now) > 0.0
        analysis.remember(verdict, "hold" if hold else "continue")
        await self.controller.set_hold(name, hold, now)
        return verdict

    async def _pooled(
        self, name: str, analysis: RouteAnalysis, now: float
    ) -> tuple[Sample, Sample] | None:
        """The fleet's samples when this replica decides; None when it does not (it then reads
        the decider's latest verdict) or cannot read them."""
        assert self.fleet is not None
        decider = self.fleet.decider
        try:
            if not decider.deciding:
                analysis.published = await decider.latest(name)
                analysis.last, analysis.failures = None, 0
                return None
            if analysis.last is None:  # deciding from now on: continue the fleet's count
                published = await decider.latest(name) or {}
                failures = published.get("failures", 0)
                analysis.failures = failures if isinstance(failures, int) else 0
            stable, candidate = await self.fleet.pool.samples(name, now)
        except (RedisError, OSError):
            return None  # no verdict without the fleet's data; the ramp stays as it is
        # The sample-ratio check tests the decider's own traffic (see proxy/fleet/observations).
        own_stable, own_candidate = self.source.samples(name, now)
        return _own_ratio(stable, own_stable), _own_ratio(candidate, own_candidate)

    async def _roll_back(self, name: str, verdict: Verdict, now: float) -> None:
        reason = _reason(verdict)
        try:
            await self.controller.act(
                name,
                Action.ROLLBACK,
                now,
                actor="analysis",
                reason=reason,
                details=verdict.to_json(),
            )
        except IllegalTransition:
            return  # rolled back by someone else meanwhile
        log.warning("rolled back automatically: %s", reason, extra={"route": name})

    async def _promote_when_due(
        self, name: str, analysis: RouteAnalysis, verdict: Verdict, now: float
    ) -> bool:
        """Promote once every verdict has passed for `promote.after` at the ramp's max (an
        inconclusive one neither counts nor resets; a failure, or leaving the max, resets)."""
        assert analysis.promote_after is not None
        if verdict.result is Result.FAIL or self.controller.state(name, now) is not State.COMPLETE:
            analysis.passing_since = None
            return False
        if verdict.result is not Result.PASS:
            return False
        if analysis.passing_since is None:
            analysis.passing_since = now
        if now - analysis.passing_since < analysis.promote_after:
            return False
        reason = f"every verdict passed for {analysis.promote_after:g} s at the ramp's max"
        try:
            await self.controller.act(
                name,
                Action.PROMOTE,
                now,
                actor="analysis",
                reason=reason,
                details=verdict.to_json(),
            )
        except (IllegalTransition, StateUnavailable):
            return False  # an operator acted meanwhile, or the state cannot be changed now
        analysis.passing_since = None
        log.info("promoted automatically: %s", reason, extra={"route": name})
        return True

    def verdicts(self, name: str) -> list[dict[str, Any]] | None:
        """Route `name`'s latest verdicts, newest first (a replica that does not decide has the
        decider's latest only), or None when it has no analysis."""
        analysis = self.routes.get(name)
        if analysis is None:
            return None
        if self.fleet is not None and not self.fleet.decider.deciding:
            published = analysis.published or {}
            verdict = published.get("verdict")
            return (
                []
                if not isinstance(verdict, dict)
                else [
                    verdict
                    | {
                        "consecutive_failures": published.get("failures", 0),
                        "decided_by": published.get("decider"),
                    }
                ]
            )
        return list(analysis.history)

    def status(self, route: Route) -> dict[str, Any] | None:
        """The `/status` view of `route`'s analysis, or None when it has none."""
        analysis = self.routes.get(route.name)
        if analysis is None:
            return None
        return analysis.status(self.controller.holding(route.name), self.fleet)
