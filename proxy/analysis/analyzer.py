"""The analysis loop: every interval, each analysed route is judged and the policy's step applied.

A round gathers (the samples, the custom metrics), assesses (`assessment.assess`), steps the policy
(`policy.step`) and applies what it says once (hold, release, roll back, promote). What is
remembered between rounds is the policy's `Memory`, the epochs of one rollout run, and the
route's `Timeline` (each round's share and figures, for the status page's charts).

Invariants
- Nothing here knows where observations live: `sources.Observations` gives them, and raises
  `sources.Unavailable` when they cannot be read; that round's verdict is then an error.
- A round acts once: the ramp's hold is set, or the rollout rolled back or promoted.
- In a fleet, only the decider judges; the others read its published record. A replica that
  begins deciding continues the fleet's memory of the same run.
- A round that judges adds its point to the route's timeline (with figures when its
  observations could be read), and so does a round in a state not judged (its share and state
  alone); a replica that does not decide keeps, while the state is judged, the points the
  decider publishes with its records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.analysis.assessment import analysis_share, assess
from proxy.analysis.epochs import Epochs
from proxy.analysis.policy import Act, Memory, Ramp, Rules, Step, step
from proxy.analysis.prometheus import MetricQueries, hostname
from proxy.analysis.sources import Observations, SharedVerdicts, Unavailable, VerdictSink
from proxy.analysis.timeline import Figures, Timeline
from proxy.analysis.verdict import Result, Sample, Verdict
from proxy.config.model import AnalysisMethod, AnalysisSpec, Route, Variant
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import Action, IllegalTransition, State
from proxy.rollout.store import Fence, StateUnavailable
from proxy.runtime import clock
from proxy.runtime.tasks import cancel_and_wait

log = logging.getLogger("grayscale.analysis")
JUDGED = frozenset({State.PENDING, State.RAMPING, State.COMPLETE, State.PAUSED})
HISTORY = 20  # verdicts kept per route for GET /routes/{name}/verdicts


@dataclass
class RouteAnalysis:
    """What the loop remembers of one route between rounds. In a fleet, `published` is the
    decider's latest record as it published it (this replica's own, when it decides)."""

    spec: AnalysisSpec
    rules: Rules
    hosts: dict[Variant, str] = field(default_factory=dict)  # upstream host names, for metrics
    epochs: Epochs = field(default_factory=Epochs)  # of the counts since the start (sequential)
    judging: tuple[str, int] | None = None  # (rollout run, this analysis's number of it)
    memory: Memory = field(default_factory=Memory)
    last: Verdict | None = None
    step: Step | None = None  # what followed the last verdict
    published: dict[str, Any] | None = None
    counts: dict[str, Any] | None = None  # the requests and errors last judged
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    timeline: Timeline = field(init=False)
    seen: tuple[Figures, Figures] | None = None  # the figures of the round being judged

    def __post_init__(self) -> None:
        self.timeline = Timeline(self.spec)

    def record(self, verdict: Verdict, done: Step) -> dict[str, Any]:
        """A verdict with what the policy remembered and did on it."""
        return verdict.to_json() | {
            "consecutive_failures": self.memory.failures,
            "failures_before_rollback": self.rules.failures_before_rollback,
            "errors_in_a_row": self.memory.errors,
            "max_errors_in_a_row": self.rules.max_errors_in_a_row,
            "action": done.act.value,
            "why": done.reason,
            "alarm": done.alarm,
        }

    def status(self, holding: bool, fleet: SharedVerdicts | None) -> dict[str, Any]:
        """The `/status` view."""
        latest = (
            None if self.last is None or self.step is None else self.record(self.last, self.step)
        )
        if fleet is not None and not fleet.deciding:
            latest = (self.published or {}).get("record")
        latest = latest if isinstance(latest, dict) else {}
        view: dict[str, Any] = {
            "method": self.spec.method.value,
            "confidence": self.spec.confidence,
            "latency_quantile": self.spec.latency_quantile,
            "interval_seconds": self.spec.interval,
            "window_seconds": self.spec.window,
            "min_requests": self.spec.min_requests,
            "failures_before_rollback": self.rules.failures_before_rollback,
            "consecutive_failures": latest.get("consecutive_failures", 0),
            "max_errors_in_a_row": self.rules.max_errors_in_a_row,
            "on_error": self.rules.on_error.value,
            "errors_in_a_row": latest.get("errors_in_a_row", 0),
            "alarm": latest.get("alarm", False),
            "holding": holding,
            "action": latest.get("action"),
            "why": latest.get("why"),
            "analysis_number": None if self.judging is None else self.judging[1],
            "last_verdict": _verdict_of(latest),
        }
        if self.rules.promote_after is not None:
            since = self.memory.passing_since
            view["promotes_at"] = None if since is None else since + self.rules.promote_after
        judged = self.counts if fleet is None else (self.published or {}).get("counts")
        view["counts"] = judged if isinstance(judged, dict) else None
        if fleet is not None:
            view["decided_by"] = (self.published or {}).get("decider")
            view["decider"] = fleet.holder
            view["this_replica_decides"] = fleet.deciding
        return view


_RECORD_ONLY = (
    "consecutive_failures",
    "failures_before_rollback",
    "errors_in_a_row",
    "max_errors_in_a_row",
    "action",
    "why",
    "alarm",
)


def judged_counts(stable: Sample, candidate: Sample, at: float, pooled: bool) -> dict[str, Any]:
    """The requests and errors a verdict is taken on, for `/status`: in the analysis window (or
    since the run began, for the sequential method), over every replica when `pooled`."""
    return {
        "at": at,
        "pooled": pooled,
        **{
            variant: {"requests": sample.requests, "errors": sample.errors}
            for variant, sample in (("stable", stable), ("candidate", candidate))
        },
    }


def _verdict_of(record: dict[str, Any]) -> dict[str, Any] | None:
    """The verdict in a record (without what the policy added), or None."""
    if "result" not in record:
        return None
    return {k: v for k, v in record.items() if k not in _RECORD_ONLY}


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


class Analyzer:
    """Judges each analysed route every `interval` and does what the policy says."""

    def __init__(
        self,
        routes: Sequence[Route],
        controller: RolloutController,
        source: Observations,
        recorder: VerdictSink,
        fleet: SharedVerdicts | None = None,
    ):
        """With `fleet`, only the fleet's decider judges (`source` then gives the fleet's
        pooled observations) and publishes its records; the other replicas read them."""
        self.controller = controller
        self.source = source
        self.recorder = recorder
        self.fleet = fleet
        self.queries = MetricQueries()
        self.routes: dict[str, RouteAnalysis] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False
        self.use(routes)

    def use(self, routes: Sequence[Route]) -> None:
        """Follow a (new) config: routes whose analysis is unchanged keep their history."""
        previous = self.routes
        self.routes = {}
        for route in routes:
            if route.analysis is None:
                continue
            kept = previous.get(route.name)
            rules = Rules.of(route.analysis, route)
            same = kept is not None and (kept.spec, kept.rules) == (route.analysis, rules)
            fresh = RouteAnalysis(route.analysis, rules)
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
                await self.round(name, clock.now())
            except Exception:
                log.exception("analysis round failed", extra={"route": name})

    async def round(self, name: str, now: float) -> Verdict | None:
        """One analysis round of route `name` at `now`; None when nothing was judged (the state
        is not judged, or another replica decides)."""
        analysis = self.routes.get(name)
        if analysis is None or name not in self.controller:
            return None  # (the route left the config, or its analysis did)
        run = self.controller.run(name)
        state = self.controller.state(name, now)
        if state not in JUDGED:
            analysis.memory = Memory()  # (rolled back or promoted: this run is over)
            if self.fleet is not None and not self.fleet.deciding:
                with contextlib.suppress(Unavailable):  # the verdict that ended it, and its
                    analysis.published = await self.fleet.latest(name) or analysis.published
                analysis.timeline.follow((analysis.published or {}).get("point"))
            analysis.timeline.add(now, state.value, self.controller.share(name, now))
            return None
        self.source.count(name, run)  # (a resume began a new run: new counts)
        if self.fleet is not None and not await self._deciding(name, analysis, run):
            return None
        verdict = await self._verdict(name, analysis, run, now)
        if self.fleet is not None and not self.fleet.deciding:
            return None  # (the lease ran out while the data was gathered: another decides)
        ramp = Ramp(run, self.controller.state(name, now), self.controller.share(name, now))
        analysis.memory, done = step(analysis.memory, verdict, ramp, analysis.rules, now)
        analysis.last, analysis.step = verdict, done
        record = analysis.record(verdict, done)
        analysis.history.appendleft(record)
        point = analysis.timeline.add(
            now, ramp.state.value, ramp.share, verdict.result.value, analysis.seen
        )
        if self.fleet is not None:
            analysis.published = {
                "at": now,
                "run": run,
                "memory": {
                    "failures": analysis.memory.failures,
                    "errors": analysis.memory.errors,
                    "passing_since": analysis.memory.passing_since,
                },
                "record": record,
                "counts": analysis.counts,
                "point": point.to_json(),
                "decider": self.fleet.name,
            }
            with contextlib.suppress(Unavailable):
                await self.fleet.publish(name, analysis.published, 3 * analysis.spec.interval + 10)
        self.recorder.observe_verdict(name, verdict, analysis.memory.errors)
        loud = verdict.result in (Result.FAIL, Result.ERROR) or done.alarm
        log.log(
            logging.WARNING if loud else logging.INFO,
            "verdict %s (%s): %s",
            verdict.result.value,
            ", ".join(f"{c.name} {c.result.value}" for c in verdict.checks) or verdict.note,
            f"{done.act.value}, {done.reason}",
            extra={"route": name},
        )
        await self._apply(name, verdict, done, now)
        return verdict

    async def _deciding(self, name: str, analysis: RouteAnalysis, run: str) -> bool:
        """Whether this replica judges `name` now; a replica that does not reads the decider's
        latest record, one that begins to continues the fleet's memory of the same run."""
        assert self.fleet is not None
        if not self.fleet.deciding:
            analysis.last, analysis.memory = None, Memory()
            with contextlib.suppress(Unavailable):  # (else the last one read stays)
                analysis.published = await self.fleet.latest(name)
            analysis.timeline.follow((analysis.published or {}).get("point"))
            return False
        if analysis.last is None:  # deciding from now on: continue the fleet's memory
            published: dict[str, Any] = {}
            with contextlib.suppress(Unavailable):  # (the round's verdict says what failed)
                published = await self.fleet.latest(name) or {}
            memory = published.get("memory")
            if published.get("run") == run and isinstance(memory, dict):
                analysis.memory = _memory(run, memory)
        return True

    async def _verdict(self, name: str, analysis: RouteAnalysis, run: str, now: float) -> Verdict:
        """Gather and assess: the round's verdict, an error when its data could not be read."""
        spec = analysis.spec
        analysis.seen = None
        try:
            stable, candidate = await self.source.samples(name, now)
        except Unavailable as exc:
            return Verdict.unmeasured(now, f"cannot read the observations: {exc}", spec.method)
        analysis.counts = judged_counts(stable, candidate, now, pooled=self.fleet is not None)
        analysis.seen = analysis.timeline.figures(now, stable, candidate)
        metrics = await self.queries.checks(name, spec, analysis.hosts, now)
        recent, share = None, 1.0
        if spec.method is AnalysisMethod.SEQUENTIAL:
            if analysis.judging is None or analysis.judging[0] != run:
                # Counts judged anew (this process, this decider): a new share of the rate.
                fence = await self._fence(name)
                lost = self.fleet is not None and fence is None
                number = 0 if lost else await self.controller.judge_anew(name, fence)
                if number == 0:
                    why = "the shared state cannot be reached to number this analysis"
                    return Verdict.unmeasured(now, why, spec.method)
                analysis.judging, analysis.epochs = (run, number), Epochs()
            recent = analysis.epochs.recent(stable, candidate, spec.min_requests)
            share = analysis_share(analysis.judging[1])
        verdict = assess(stable, candidate, spec, now, metrics=metrics, recent=recent, share=share)
        seconds = verdict.reference
        if seconds is not None:
            self.source.refer(name, seconds)
        return verdict

    async def _apply(self, name: str, verdict: Verdict, done: Step, now: float) -> None:
        """Do what the policy said, once."""
        fence = await self._fence(name)
        if self.fleet is not None and fence is None:
            return  # (no longer the decider: what it saw is another's to act on)
        if done.act in (Act.HOLD, Act.CONTINUE):
            await self.controller.set_hold(name, done.act is Act.HOLD, now, fence)
            return
        action = Action.ROLLBACK if done.act is Act.ROLLBACK else Action.PROMOTE
        reason = _reason(verdict) if verdict.failing else f"analysis: {done.reason}"
        try:
            await self.controller.act(
                name,
                action,
                now,
                actor="analysis",
                reason=reason,
                details=verdict.to_json(),
                fence=fence,
            )
        except (IllegalTransition, StateUnavailable):
            return  # an operator acted meanwhile, the state cannot be changed now, or the
            # lease was lost (another replica decides: `LeaseLost`)
        what = "rolled back" if action is Action.ROLLBACK else "promoted"
        log.warning("%s automatically: %s", what, reason, extra={"route": name})

    async def _fence(self, name: str) -> Fence | None:
        """The decider's lease on route `name` in a fleet (its changes are refused once the
        lease is lost)."""
        return None if self.fleet is None else await self.fleet.fence(name)

    def verdicts(self, name: str) -> list[dict[str, Any]] | None:
        """Route `name`'s latest verdicts with what followed, newest first (a replica that does
        not decide has the decider's latest only), or None when it has no analysis."""
        analysis = self.routes.get(name)
        if analysis is None:
            return None
        if self.fleet is not None and not self.fleet.deciding:
            published = analysis.published or {}
            record = published.get("record")
            if not isinstance(record, dict):
                return []
            return [record | {"decided_by": published.get("decider")}]
        return list(analysis.history)

    def timeline(self, name: str) -> dict[str, Any] | None:
        """Route `name`'s last hour of rounds (`Timeline.to_json`), or None when it has no
        analysis."""
        analysis = self.routes.get(name)
        return None if analysis is None else analysis.timeline.to_json()

    def status(self, route: Route) -> dict[str, Any] | None:
        """The `/status` view of `route`'s analysis, or None when it has none."""
        analysis = self.routes.get(route.name)
        if analysis is None:
            return None
        return analysis.status(self.controller.holding(route.name), self.fleet)


def _memory(run: str, published: dict[str, Any]) -> Memory:
    """The policy's memory as a decider published it (fields of the wrong type: left out)."""
    failures, errors = published.get("failures"), published.get("errors")
    since = published.get("passing_since")
    return Memory(
        run,
        failures if isinstance(failures, int) else 0,
        errors if isinstance(errors, int) else 0,
        float(since) if isinstance(since, int | float) else None,
    )
