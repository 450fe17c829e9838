"""Sliding windows of what the proxy itself forwarded: the in-process observation source.

Memory is bounded whatever the traffic: a window is a ring of time slots, each holding request
and error counts, their weights (see `proxy.analysis.verdict`), a fixed-size latency histogram of
weights, the weighted moments of each reported outcome (their names bounded by the outcomes'
`max_names`) and the sample-ratio counts; each route has a bounded sample of its users
(`proxy.analysis.users`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

from proxy.analysis.histogram import SIZE, bucket_of
from proxy.analysis.users import UserSample
from proxy.analysis.verdict import Moments, Sample
from proxy.config.model import LatencyMeasure, Route, Variant
from proxy.records.request_id import Served
from proxy.records.request_outcome import RequestOutcome
from proxy.routing import Reason, weight_of

SLOTS = 12
_RANDOMIZED = (Reason.BUCKET, Reason.RANDOM)  # decisions made at random: compared and tested
_NONE = Moments()
_STABLE, _CANDIDATE = Variant.STABLE, Variant.CANDIDATE


class Slot(NamedTuple):
    """One time slot of a window, as the fleet pools it: its number, requests, errors, their
    weights, the latency histogram of weights and its sum of squared weights, and outcomes.
    (The sample-ratio counts stay in the process: see `samples`.)"""

    number: int
    requests: int
    errors: int
    weights: tuple[float, ...]  # the sums of w, w², w over errors, w² over errors
    latency: list[float]
    latency_weight2: float
    outcomes: dict[str, Moments]


class Window:
    """One variant's observations over the last `span` seconds, in `SLOTS` time slots.

    The newest slot is still filling, so a sample covers between `span` less one slot and `span`.
    """

    __slots__ = (
        "_assigned",
        "_errors",
        "_expected",
        "_ids",
        "_latency",
        "_latency_weight2",
        "_outcomes",
        "_requests",
        "_slot",
        "_users",
        "_users_expected",
        "_weights",
        "span",
    )

    def __init__(self, span: float):
        self.span = span
        self._slot = span / SLOTS
        self._ids = [-1] * SLOTS  # each slot's number (times are not negative: -1 is unused)
        self._requests = [0] * SLOTS
        self._errors = [0] * SLOTS
        self._weights = [[0.0] * 4 for _ in range(SLOTS)]
        self._latency = [[0.0] * SIZE for _ in range(SLOTS)]
        self._latency_weight2 = [0.0] * SLOTS
        self._outcomes: list[dict[str, Moments]] = [{} for _ in range(SLOTS)]
        self._assigned = [0] * SLOTS
        self._expected = [0.0] * SLOTS
        self._users = [0] * SLOTS
        self._users_expected = [0.0] * SLOTS

    def _index(self, now: float) -> int:
        slot = int(now // self._slot)
        index = slot % SLOTS
        if self._ids[index] != slot:
            self._ids[index] = slot
            self._requests[index] = self._errors[index] = 0
            self._weights[index] = [0.0] * 4
            self._latency[index] = [0.0] * SIZE
            self._latency_weight2[index] = 0.0
            self._outcomes[index] = {}
            self._assigned[index] = self._users[index] = 0
            self._expected[index] = self._users_expected[index] = 0.0
        return index

    def expect(self, now: float, share: float, assigned: bool, new_user: bool) -> None:
        """Count a request assigned at random: `share` is the chance it had of this variant,
        `assigned` whether it was assigned to it, `new_user` whether it is a sampled user's
        first in the window."""
        index = self._index(now)
        self._expected[index] += share
        if assigned:
            self._assigned[index] += 1
        if new_user:
            self._users_expected[index] += share
            if assigned:
                self._users[index] += 1

    def add_outcome(self, now: float, name: str, value: float, weight: float) -> None:
        """Count one reported outcome of a request of weight `weight` (its names are bounded by
        the caller)."""
        moments = self._outcomes[self._index(now)]
        moments[name] = moments.get(name, _NONE) + Moments.of(value, weight)

    def add(self, now: float, weight: float, error: bool, latency: float | None) -> None:
        """Count one compared request of weight `weight`; `latency` of a successful one goes
        into the histogram."""
        index = self._index(now)
        self._requests[index] += 1
        sums = self._weights[index]
        w2 = weight * weight
        sums[0] += weight
        sums[1] += w2
        if error:
            self._errors[index] += 1
            sums[2] += weight
            sums[3] += w2
        elif latency is not None:
            self._latency[index][bucket_of(latency)] += weight
            self._latency_weight2[index] += w2

    def _live(self, now: float) -> list[int]:
        newest = int(now // self._slot)
        ids = self._ids
        return [i for i in range(SLOTS) if newest - SLOTS < ids[i] <= newest and ids[i] >= 0]

    def slots(self, now: float) -> list[Slot]:
        """The live slots of the window ending at `now`; their numbers are times divided by
        the slot's length, the same in every process that has the same span."""
        return [
            Slot(
                self._ids[i],
                self._requests[i],
                self._errors[i],
                tuple(self._weights[i]),
                self._latency[i],
                self._latency_weight2[i],
                self._outcomes[i],
            )
            for i in self._live(now)
        ]

    def sample(self, now: float) -> Sample:
        """Everything observed in the window ending at `now`."""
        live = self._live(now)
        histograms = [self._latency[i] for i in live]
        if len(histograms) == 1:  # (a window without end has one slot)
            latency = tuple(histograms[0])
        else:
            latency = tuple(map(sum, zip(*histograms, strict=True)))
        outcomes: dict[str, Moments] = {}
        for i in live:
            for name, moments in self._outcomes[i].items():
                outcomes[name] = outcomes.get(name, _NONE) + moments
        w, w2, ew, ew2 = (math.fsum(self._weights[i][k] for i in live) for k in range(4))
        return Sample(
            sum(self._requests[i] for i in live),
            sum(self._errors[i] for i in live),
            w,
            w2,
            ew,
            ew2,
            latency or (0.0,) * SIZE,
            math.fsum(self._latency_weight2[i] for i in live),
            outcomes,
            sum(self._assigned[i] for i in live),
            sum(self._expected[i] for i in live),
            sum(self._users[i] for i in live),
            sum(self._users_expected[i] for i in live),
        )


class LocalObservations:
    """Observations of the requests this process forwards, per analysed route."""

    def __init__(self, spans: dict[str, float], identities: dict[str, str] | None = None):
        """`spans`: the analysis window (seconds) of each analysed route, `math.inf` for one
        that counts everything since its rollout began; `identities`: each route's rollout."""
        self.windows: dict[str, dict[str, Window]] = {}
        self.users: dict[str, UserSample] = {}
        self.references: dict[str, float] = {}  # route -> latency above which a request is slow
        self._identities: dict[str, str] = {}
        self._runs: dict[str, str] = {}  # route -> the rollout run counted (`count`)
        self.use(spans, identities)

    def use(self, spans: dict[str, float], identities: dict[str, str] | None = None) -> None:
        """Follow a new config: windows of unchanged span and rollout keep what they observed
        (a new rollout starts its counts anew)."""
        identities = identities or {}

        def kept(route: str, span: float) -> bool:
            same_rollout = identities.get(route) == self._identities.get(route)
            return (
                route in self.windows and self.windows[route]["stable"].span == span
            ) and same_rollout

        fresh = {route for route, span in spans.items() if not kept(route, span)}
        self.windows = {
            route: (
                {"stable": Window(span), "candidate": Window(span)}
                if route in fresh
                else self.windows[route]
            )
            for route, span in spans.items()
        }
        self.users = {
            route: UserSample(span) if route in fresh else self.users[route]
            for route, span in spans.items()
        }
        self.references = {
            route: seconds
            for route, seconds in self.references.items()
            if route in spans and route not in fresh
        }
        self._identities = dict(identities)
        self._runs = {r: run for r, run in self._runs.items() if r in spans and r not in fresh}

    def count(self, route: str, run: str) -> None:
        """Count `route`'s requests toward rollout run `run` (`machine.run_of`): a run other
        than the one counted so far starts the counts anew (what was counted before the first
        run was named is the first's: a process counts from its start)."""
        counted = self._runs.get(route)
        self._runs[route] = run
        if counted is None or counted == run or route not in self.windows:
            return
        span = self.windows[route]["stable"].span
        self.windows[route] = {"stable": Window(span), "candidate": Window(span)}
        self.users[route] = UserSample(span)
        self.references.pop(route, None)

    def generation(self, route: str) -> str:
        """A short name of the rollout run that `route`'s counts belong to: its candidate, and
        the run once `count` named it (the fleet's pooled keys carry it)."""
        identity = self._identities.get(route, "")
        run = self._runs.get(route)
        named = identity if run is None else run
        return hashlib.blake2b(named.encode(), digest_size=6).hexdigest()

    def samples(self, route: str, now: float) -> tuple[Sample, Sample]:
        windows = self.windows[route]
        users = self.users[route]
        effect = users.design_effect(now)
        return (
            replace(
                windows["stable"].sample(now),
                design_effect=effect,
                clustering=users.clustering(_STABLE),
            ),
            replace(
                windows["candidate"].sample(now),
                design_effect=effect,
                clustering=users.clustering(_CANDIDATE),
            ),
        )

    def refer(self, route: str, seconds: float) -> None:
        """Count requests slower than `seconds` as slow from now on, in the users' sums that
        measure how much the latency check's share of slow requests varies (the analysis gives
        stable's latest quantile)."""
        self.references[route] = seconds

    def add_outcome(self, served: Served, name: str, value: float, now: float) -> None:
        """Count a reported outcome in its route's window with its request's weight, if the
        route is analysed and the request compared (a sink of the reported outcomes)."""
        windows = self.windows.get(served.route)
        if windows is not None and served.variant is not None:
            windows[served.variant].add_outcome(now, name, value, served.weight)


class WindowRecorder:
    """Feeds each finished request to its route's analysis windows (an `Observer`).

    Only requests assigned at random are compared, each for the variant it was assigned,
    whoever answered it (intention to treat): a fallback to stable after the candidate failed
    (unreachable, out of connection slots, a 5xx replayed) is the candidate's error; a request
    sent to stable because the candidate was ejected counts toward the assignment (the
    sample-ratio check) but is measured for neither, since the candidate never saw it and
    stable's answer says nothing of it; so is every request assigned while the candidate is
    ejected, stable's too: the candidate has no requests at those moments to compare them with
    (counted, they would tilt the comparison toward whatever those moments held: the end of an
    incident on both variants, the quiet after it). A request the proxy refused itself says
    nothing of the upstreams and is left out; one whose client left first counts, without a
    latency (cut short, it says nothing of speed).
    """

    def __init__(self, observations: LocalObservations):
        self._observations = observations
        self._latency: dict[str, LatencyMeasure] = {}

    def use(self, routes: Sequence[Route]) -> None:
        """Follow a (new) config: which routes are analysed, on which latency."""
        self._latency = {r.name: r.analysis.latency for r in routes if r.analysis is not None}

    def record(self, outcome: RequestOutcome) -> None:
        measure = self._latency.get(outcome.route)
        observations = self._observations
        windows = observations.windows.get(outcome.route)
        decision = outcome.decision
        if (
            measure is None
            or windows is None
            or outcome.refused
            or decision.reason not in _RANDOMIZED
        ):
            return
        now = outcome.at + outcome.duration
        assigned, share = decision.variant, decision.share
        users = observations.users[outcome.route]
        user, new = None, False
        if decision.key is not None:
            user, new = users.see(decision.key, now)
        windows[_STABLE].expect(now, 1.0 - share, assigned is _STABLE, new)
        windows[_CANDIDATE].expect(now, share, assigned is _CANDIDATE, new)
        if outcome.candidate_out or outcome.overloaded or not decision.compared:
            # Not measured: the candidate ejected, or a full queue (the proxy's doing, not a
            # variant's); at a share of 0 or 1 there is nothing to compare with.
            return
        latency = None
        if assigned is _CANDIDATE and outcome.candidate_failed:
            error = True
        else:
            error = outcome.failed
            if outcome.status is not None:
                if measure is LatencyMeasure.DURATION:
                    latency = outcome.duration
                else:
                    latency = outcome.ttfb if measure is LatencyMeasure.TTFB else outcome.ttft
        weight = weight_of(assigned, share)
        windows[assigned].add(now, weight, error, latency)
        if user is not None:
            reference = observations.references.get(outcome.route, math.inf)
            slow = not error and latency is not None and latency > reference
            users.add(user, assigned, weight, error, slow)
