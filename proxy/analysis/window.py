"""Sliding windows of what the proxy itself forwarded: the in-process observation source.

Memory is bounded whatever the traffic: a window is a ring of time slots, each holding request
and error counts, a fixed-size latency histogram, the moments of each reported outcome (their
names bounded by the outcomes' `max_names`) and the sample-ratio counts; each route has a
bounded sample of its users (`proxy.analysis.users`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple, Protocol

from proxy.analysis.histogram import SIZE, bucket_of
from proxy.analysis.users import UserSample
from proxy.analysis.verdict import Moments, Sample
from proxy.config.model import LatencyMeasure, Route, Variant
from proxy.outcome import Outcome
from proxy.routing import Reason

SLOTS = 12
_RANDOMIZED = (Reason.BUCKET, Reason.RANDOM)  # decisions the sample-ratio check can test
_NONE = Moments()


class Slot(NamedTuple):
    """One time slot of a window, as the fleet pools it: its number, requests, errors, latency
    histogram and outcomes. (The sample-ratio counts stay in the process: see `samples`.)"""

    number: int
    requests: int
    errors: int
    latency: list[int]
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
        "_outcomes",
        "_requests",
        "_slot",
        "_users",
        "_users_expected",
        "span",
    )

    def __init__(self, span: float):
        self.span = span
        self._slot = span / SLOTS
        self._ids = [-1] * SLOTS
        self._requests = [0] * SLOTS
        self._errors = [0] * SLOTS
        self._latency = [[0] * SIZE for _ in range(SLOTS)]
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
            self._latency[index] = [0] * SIZE
            self._outcomes[index] = {}
            self._assigned[index] = self._users[index] = 0
            self._expected[index] = self._users_expected[index] = 0.0
        return index

    def expect(self, now: float, share: float, served: bool, new_user: bool) -> None:
        """Count a request assigned at random: `share` is the chance it had of this variant,
        `served` whether this variant served it, `new_user` whether it is a sampled user's first
        in the window."""
        index = self._index(now)
        self._expected[index] += share
        if served:
            self._assigned[index] += 1
        if new_user:
            self._users_expected[index] += share
            if served:
                self._users[index] += 1

    def add_outcome(self, now: float, name: str, value: float) -> None:
        """Count one reported outcome (its names are bounded by the caller)."""
        moments = self._outcomes[self._index(now)]
        moments[name] = moments.get(name, _NONE) + Moments(1, value, value * value)

    def add(self, now: float, error: bool, latency: float | None) -> None:
        """Count one request; `latency` of a successful one goes into the histogram."""
        index = self._index(now)
        self._requests[index] += 1
        if error:
            self._errors[index] += 1
        elif latency is not None:
            self._latency[index][bucket_of(latency)] += 1

    def slots(self, now: float) -> list[Slot]:
        """The live slots of the window ending at `now`; their numbers are times divided by
        the slot's length, the same in every process that has the same span."""
        newest = int(now // self._slot)
        return [
            Slot(
                self._ids[i],
                self._requests[i],
                self._errors[i],
                self._latency[i],
                self._outcomes[i],
            )
            for i in range(SLOTS)
            if newest - SLOTS < self._ids[i] <= newest
        ]

    def sample(self, now: float) -> Sample:
        """Everything observed in the window ending at `now`."""
        newest = int(now // self._slot)
        live = [i for i in range(SLOTS) if newest - SLOTS < self._ids[i] <= newest]
        histograms = [self._latency[i] for i in live]
        if len(histograms) == 1:  # (a window without end has one slot)
            latency = tuple(histograms[0])
        else:
            latency = tuple(map(sum, zip(*histograms, strict=True)))
        outcomes: dict[str, Moments] = {}
        for i in live:
            for name, moments in self._outcomes[i].items():
                outcomes[name] = outcomes.get(name, _NONE) + moments
        return Sample(
            sum(self._requests[i] for i in live),
            sum(self._errors[i] for i in live),
            latency or (0,) * SIZE,
            outcomes,
            sum(self._assigned[i] for i in live),
            sum(self._expected[i] for i in live),
            sum(self._users[i] for i in live),
            sum(self._users_expected[i] for i in live),
        )


class ObservationSource(Protocol):
    """Where the analysis reads a route's stable and candidate samples from."""

    def samples(self, route: str, now: float) -> tuple[Sample, Sample]:
        """(stable, candidate) over the route's analysis window ending at `now`."""
        ...


class LocalObservations:
    """Observations of the requests this process forwards, per analysed route."""

    def __init__(self, spans: dict[str, float], identities: dict[str, str] | None = None):
        """`spans`: the analysis window (seconds) of each analysed route, `math.inf` for one
        that counts everything since its rollout began; `identities`: each route's rollout."""
        self.windows: dict[str, dict[str, Window]] = {}
        self.users: dict[str, UserSample] = {}
        self._identities: dict[str, str] = {}
        self.update(spans, identities)

    def update(self, spans: dict[str, float], identities: dict[str, str] | None = None) -> None:
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
        self._identities = dict(identities)

    def generation(self, route: str) -> str:
        """A short name of the rollout that `route`'s counts belong to."""
        identity = self._identities.get(route, "")
        return hashlib.blake2b(identity.encode(), digest_size=6).hexdigest()

    def samples(self, route: str, now: float) -> tuple[Sample, Sample]:
        windows = self.windows[route]
        effect = self.users[route].design_effect(now)
        return (
            replace(windows["stable"].sample(now), design_effect=effect),
            replace(windows["candidate"].sample(now), design_effect=effect),
        )

    def add_outcome(
        self, route: str, variant: Variant, name: str, value: float, now: float
    ) -> None:
        """Count a reported outcome in its route's window, if the route is analysed (an
        outcome book's sink)."""
        windows = self.windows.get(route)
        if windows is not None:
            windows[variant].add_outcome(now, name, value)


class WindowRecorder:
    """Feeds each finished request to its route's analysis windows (an `Observer`).

    A request the proxy refused itself says nothing of the upstreams and is left out; one whose
    client left first counts, without a latency (cut short, it says nothing of speed); a
    candidate that failed before stable answered in its place counts as a candidate error.
    """

    def __init__(self, observations: LocalObservations):
        self._observations = observations
        self._latency: dict[str, LatencyMeasure] = {}

    def use(self, routes: Sequence[Route]) -> None:
        """Follow a (new) config: which routes are analysed, on which latency."""
        self._latency = {r.name: r.analysis.latency for r in routes if r.analysis is not None}

    def record(self, outcome: Outcome) -> None:
        measure = self._latency.get(outcome.route)
        windows = self._observations.windows.get(outcome.route)
        if measure is None or windows is None or outcome.refused:
            return
        now = outcome.at + outcome.duration
        decision = outcome.decision
        if decision.reason in _RANDOMIZED:
            served, share = outcome.variant, decision.share
            new = decision.key is not None and self._observations.users[outcome.route].see(
                decision.key, now
            )
            windows[Variant.STABLE].expect(now, 1.0 - share, served is Variant.STABLE, new)
            windows[Variant.CANDIDATE].expect(now, share, served is Variant.CANDIDATE, new)
        if outcome.candidate_failed:
            windows[Variant.CANDIDATE].add(now, True, None)
        latency = None
        if outcome.status is not None:
            if measure is LatencyMeasure.DURATION:
                latency = outcome.duration
            else:
                latency = outcome.ttfb if measure is LatencyMeasure.TTFB else outcome.ttft
        windows[outcome.variant].add(now, outcome.failed, latency)
