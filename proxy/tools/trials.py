"""Seeded simulated rollouts in the regimes production lives in, judged by the real analysis.

A trial sends simulated users' requests through the real parts that decide and count them: the
sticky bucket and threshold of the routing core, the candidate's ejection breaker, the fallback
to stable, the analysis windows' recorder, request ids and the reported outcomes, and the analysis
itself (epochs, checks, their share of the error rate) and the decision policy
(`proxy.analysis.policy.step`). What is simulated is
only the world around them: users and how often they come, the share over time, errors, latency,
incidents that hit both variants, conversions that arrive late, restarts.

Each regime states what an equal (or in-limit) candidate faces; `run` says when it was rolled
back, if it was. Seeded: the same regime and seed give the same answer.

Invariants
- Pure: no I/O, no clock, no sleeping; randomness from `random.Random(seed)` only.
- Requests go through the recorder as `RequestOutcome`s, exactly as the gateway makes them, so
  what a trial measures is what the proxy would count.
- The share follows the regime's schedule whatever the policy says of holding (as if it never
  held): a held ramp would hide the regimes where the share moves. Its rollbacks end the run.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from dataclasses import dataclass, field, replace

from proxy.analysis.assessment import analysis_share, assess
from proxy.analysis.epochs import Epochs
from proxy.analysis.outcome_reports import Report, ReportedOutcomes
from proxy.analysis.policy import Act, Memory, Ramp, Rules, step
from proxy.analysis.verdict import Verdict
from proxy.analysis.window import LocalObservations, WindowRecorder
from proxy.config.model import (
    AnalysisSpec,
    Cohort,
    Ejection,
    KeySource,
    OutcomeCheck,
    OutcomesConfig,
    Route,
    Source,
    Upstream,
    Variant,
)
from proxy.dataplane.ejection import Breaker
from proxy.records.request_id import Minter, Reader, Served, assignment, key_of
from proxy.records.request_outcome import Failure, FallbackReason, RequestOutcome
from proxy.rollout.machine import State, identity_of
from proxy.routing import BUCKETS, Decision, Reason, bucket

ROUTE = "trial"
MEDIAN = 0.05  # seconds: the latency's median (log-normal, sigma 0.5)
OUTCOME = "conversion"
_STABLE, _CANDIDATE = Variant.STABLE, Variant.CANDIDATE


@dataclass(frozen=True, slots=True)
class Incident:
    """From `start` to `end` seconds into the rollout, both variants fail `error_rate` of their
    requests and are `slowdown` times slower."""

    start: float
    end: float
    error_rate: float = 0.01
    slowdown: float = 1.0


@dataclass(frozen=True, slots=True)
class Regime:
    """What a rollout faces. Candidates are equal to stable unless `extra_errors`, `slowdown`,
    `refused` or `conversion_drop` say otherwise (from `onset` seconds on)."""

    name: str
    rate: float = 10.0  # requests a second, both variants
    hours: float = 1.0
    share: float = 0.1  # the candidate's share at the start
    share_to: float | None = None  # ...ramping linearly to this by the end
    users: int = 0  # 0: every request is a user of its own
    tail: float | None = None  # Pareto shape of users' request rates (None: all alike)
    failing_users: float = 0.0  # users whose every request fails, on either variant
    error_rate: float = 0.01
    incident: Incident | None = None
    extra_errors: float = 0.0  # the candidate's errors beyond stable's
    slowdown: float = 1.0  # the candidate's latency over stable's
    onset: float = 0.0  # seconds into the rollout when the candidate's difference begins
    refused: float = 0.0  # the candidate refuses this share of its connections
    answer_errors: float = 0.0  # the candidate answers this share with 500
    ejection: Ejection | None = None
    conversion: float | None = None  # the chance a request converts (an outcome of 1)
    conversion_drop: float = 0.0  # the candidate's conversions fall by this share of stable's
    delay: tuple[float, float] = (0.0, 0.0)  # seconds until a conversion is reported
    restart_every: float | None = None  # the process restarts: counts start anew
    spec: AnalysisSpec = field(default_factory=AnalysisSpec)


def share_at(regime: Regime, t: float) -> float:
    """The candidate's share `t` seconds into the rollout."""
    if regime.share_to is None:
        return regime.share
    progress = min(1.0, t / (regime.hours * 3600.0))
    return regime.share + (regime.share_to - regime.share) * progress


def _route(spec: AnalysisSpec) -> Route:
    return Route(
        ROUTE,
        "/",
        Upstream("http://stable.invalid"),
        Upstream("http://candidate.invalid"),
        Cohort((KeySource(Source.HEADER, "x-user-id"),), salt="trial"),
        analysis=spec,
    )


class _Users:
    """Who sends each request: their key, bucket, whether they always fail."""

    def __init__(self, regime: Regime, rng: random.Random):
        self._rng = rng
        self._independent = regime.users == 0
        self._next = 0
        self._failing = regime.failing_users
        if self._independent:
            return
        weights = [
            rng.paretovariate(regime.tail) if regime.tail is not None else 1.0
            for _ in range(regime.users)
        ]
        total = 0.0
        self._cumulative = []
        for weight in weights:
            total += weight
            self._cumulative.append(total)
        self._keys = [f"user-{rng.getrandbits(48):x}" for _ in range(regime.users)]
        self._buckets = [bucket("trial", key) for key in self._keys]
        self._fails = [rng.random() < regime.failing_users for _ in range(regime.users)]

    def draw(self) -> tuple[str, int, bool]:
        """(key, bucket, always fails) of the next request's user."""
        if self._independent:
            self._next += 1
            key = f"r{self._next}"
            return key, bucket("trial", key), self._rng.random() < self._failing
        at = self._rng.random() * self._cumulative[-1]
        user = min(bisect.bisect_right(self._cumulative, at), len(self._keys) - 1)
        return self._keys[user], self._buckets[user], self._fails[user]


class _Analysis:
    """The analysis of one process: its windows, epochs and number of the rollout's analyses."""

    def __init__(self, spec: AnalysisSpec, route: Route, number: int):
        self.observations = LocalObservations({ROUTE: math.inf}, {ROUTE: identity_of(route)})
        self.recorder = WindowRecorder(self.observations)
        self.recorder.use([route])
        self.epochs = Epochs()
        self.number = number
        self.spec = spec

    def verdict(self, now: float) -> Verdict:
        stable, candidate = self.observations.samples(ROUTE, now)
        recent = self.epochs.recent(stable, candidate, self.spec.min_requests)
        verdict = assess(
            stable,
            candidate,
            self.spec,
            now,
            recent=recent,
            share=analysis_share(self.number),
        )
        if verdict.reference is not None:
            self.observations.refer(ROUTE, verdict.reference)
        return verdict


def run(regime: Regime, seed: int) -> float | None:
    """Seconds into the rollout when the analysis rolled the candidate back, or None if it did
    not within the regime's hours."""
    rng = random.Random(seed)
    spec = regime.spec
    route = _route(spec)
    users = _Users(regime, rng)
    breaker = None if regime.ejection is None else Breaker(ROUTE, regime.ejection)
    key = key_of(f"trial-{seed}")
    minter, reader = Minter(key), Reader(key)
    label = minter.label(ROUTE, identity_of(route))
    book: ReportedOutcomes | None = None
    analysis = _Analysis(spec, route, 1)

    def sink(served: Served, name: str, value: float, now: float) -> None:
        analysis.observations.add_outcome(served, name, value, now)

    if regime.conversion is not None:
        book = ReportedOutcomes(reader, [sink])
        book.use(OutcomesConfig(ttl=regime.hours * 3600.0 + 1.0), [route])
    pending: list[tuple[float, int, str]] = []  # (when reported, tiebreak, request id)
    horizon = regime.hours * 3600.0
    interval = spec.interval
    rules = Rules.of(spec)
    memory = Memory()
    carry = 0.0
    incident = regime.incident
    next_restart = regime.restart_every or math.inf
    for index in range(int(horizon // interval)):
        start = index * interval
        if start >= next_restart:  # (a new process: counts and memory start anew)
            analysis, memory = _Analysis(spec, route, analysis.number + 1), Memory()
            next_restart += regime.restart_every or math.inf
        wanted = regime.rate * interval + carry
        n = int(wanted)
        carry = wanted - n
        for i in range(n):
            at = start + interval * (i + rng.random()) / n
            share = share_at(regime, at)
            user, user_bucket, always_fails = users.draw()
            assigned = _CANDIDATE if user_bucket < round(share * BUCKETS) else _STABLE
            decision = Decision(assigned, Reason.BUCKET, share, None, user_bucket, user)
            in_incident = incident is not None and incident.start <= at < incident.end
            base = (
                incident.error_rate if incident is not None and in_incident else regime.error_rate
            )
            slow = incident.slowdown if incident is not None and in_incident else 1.0
            changed = at >= regime.onset
            served = assigned
            fallback: FallbackReason | None = None
            candidate_error: Failure | None = None
            out = breaker is not None and breaker.ejected(at)
            if assigned is _CANDIDATE:
                if out:
                    served, fallback = _STABLE, FallbackReason.EJECTED
                elif changed and rng.random() < regime.refused:
                    served, fallback = _STABLE, FallbackReason.CONNECT
                    candidate_error = Failure.CONNECT
                    if breaker is not None:
                        breaker.record(False, at)
            rate = base
            if served is _CANDIDATE and changed:
                rate += regime.extra_errors
                slow *= regime.slowdown
            failed = always_fails or rng.random() < rate
            if served is _CANDIDATE and changed and rng.random() < regime.answer_errors:
                failed = True
            if served is _CANDIDATE and breaker is not None:
                breaker.record(not failed, at)
            latency = slow * MEDIAN * math.exp(0.5 * rng.gauss(0.0, 1.0))
            request_id = minter.mint(label, at, *assignment(decision, out))
            outcome = RequestOutcome(
                at=at,
                route=ROUTE,
                method="POST",
                decision=decision,
                variant=served,
                status=500 if failed else 200,
                duration=latency,
                ttfb=latency,
                fallback=fallback,
                candidate_error=candidate_error,
                request_id=request_id,
                candidate_out=out,
            )
            analysis.recorder.record(outcome)
            if book is not None and regime.conversion is not None:
                chance = regime.conversion
                if served is _CANDIDATE and changed:
                    chance *= 1.0 - regime.conversion_drop
                if rng.random() < chance:
                    low, high = regime.delay
                    when = at + latency + rng.uniform(low, high)
                    heapq.heappush(pending, (when, len(pending), request_id.decode()))
        now = start + interval
        if book is not None:
            reports = []
            while pending and pending[0][0] <= now:
                reports.append(Report(heapq.heappop(pending)[2], OUTCOME, 1.0))
            if reports:
                book.take(reports, now)
        ramp = Ramp(ROUTE, State.RAMPING, share_at(regime, now))
        memory, done = step(memory, analysis.verdict(now), ramp, rules, now)
        if done.act is Act.ROLLBACK:
            return now
    return None


def runs(regime: Regime, count: int, seed: int = 0) -> list[float | None]:
    """`run` for seeds `seed` .. `seed + count - 1`."""
    return [run(regime, seed + i) for i in range(count)]


def with_spec(regime: Regime, **changes: object) -> Regime:
    """`regime` with its analysis spec changed."""
    return replace(regime, spec=replace(regime.spec, **changes))  # type: ignore[arg-type]


def _outcome_spec(**changes: object) -> AnalysisSpec:
    check = OutcomeCheck(OUTCOME, **changes)  # type: ignore[arg-type]
    return AnalysisSpec(outcomes=(check,))


RAMP = {"hours": 2.0, "rate": 20.0, "share": 0.01, "share_to": 0.5}
EXACT = AnalysisSpec(max_error_rate_increase=0.0)  # no increase allowed: equal is the limit
# Equal (or in-limit) candidates: each is rolled back at most at the stated rate.
EQUAL: tuple[Regime, ...] = (
    Regime("baseline: independent requests, 10 % share"),
    Regime(
        "incident on both (20 % errors, 10 min) while 1 % -> 50 %",
        incident=Incident(2400.0, 3000.0, error_rate=0.2),
        **RAMP,  # type: ignore[arg-type]
    ),
    Regime(
        "incident on both (5x slower, 6 min) while 1 % -> 50 %",
        incident=Incident(4800.0, 5160.0, slowdown=5.0),
        **{**RAMP, "hours": 1.5},  # type: ignore[arg-type]
    ),
    Regime(
        "heavy users (Pareto 1.2, 1,000), 1 % always failing, 10 % share",
        users=1000,
        tail=1.2,
        failing_users=0.01,
        rate=40.0,
        error_rate=0.001,
        spec=EXACT,
    ),
    Regime(
        "heavy users (Pareto 1.2, 300), 1 % always failing, 50 % share",
        users=300,
        tail=1.2,
        failing_users=0.01,
        share=0.5,
        rate=40.0,
        spec=EXACT,
    ),
    Regime("candidate share 90 %", share=0.9, spec=EXACT),
    Regime(
        "candidate share 90 %, restarts every 15 min",
        share=0.9,
        hours=3.0,
        restart_every=900.0,
        spec=EXACT,
    ),
    Regime(
        "clicks at 2 %, max_decrease 0",
        conversion=0.02,
        spec=_outcome_spec(max_decrease=0.0),
    ),
    Regime(
        "conversions at 0.5 %, max_decrease 0",
        conversion=0.005,
        spec=_outcome_spec(max_decrease=0.0),
    ),
    Regime(
        "conversions at 0.5 %, relative max_decrease 0",
        conversion=0.005,
        spec=_outcome_spec(max_decrease=0.0, relative=True),
    ),
    Regime(
        "clicks at 2 % reported 10-30 min late, 1 % -> 50 %",
        conversion=0.02,
        delay=(600.0, 1800.0),
        spec=_outcome_spec(max_decrease=0.0),
        **RAMP,  # type: ignore[arg-type]
    ),
    Regime(
        "candidate 1.19x slower, p50 ratio limit 1.2",
        slowdown=1.19,
        share=0.5,
        rate=40.0,
        spec=AnalysisSpec(max_latency_ratio=1.2, latency_quantile=0.5),
    ),
)
# Worse candidates: each should be rolled back, and soon.
WORSE: tuple[Regime, ...] = (
    Regime("+5 points of errors, 10 % share", extra_errors=0.05, hours=2.0),
    Regime("2x slower, 10 % share", slowdown=2.0, hours=2.0),
    Regime("50 % 5xx, default ejection", answer_errors=0.5, ejection=Ejection(), hours=2.0),
    Regime(
        "30 % of connections refused, default ejection",
        refused=0.3,
        ejection=Ejection(),
        hours=2.0,
    ),
)
