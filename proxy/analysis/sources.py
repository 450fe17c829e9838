"""Where the analysis loop reads observations and shares verdicts: the seams between the loop
and what lies behind it (this process's windows, or a fleet's store).

Invariants
- The loop sees only these protocols: nothing here or in the loop knows of Redis. A source that
  cannot be read raises `Unavailable`, and the loop turns that into an error verdict (never into
  a pass, and never into silence).
- `restart` starts a route's counts anew: a new run of its rollout is judged on its own
  requests alone.
"""

from __future__ import annotations

from typing import Any, Protocol

from proxy.analysis.verdict import Sample, Verdict
from proxy.analysis.window import LocalObservations
from proxy.rollout.store import Fence


class Unavailable(Exception):
    """Observations or verdicts kept outside this process could not be read or written."""


class Observations(Protocol):
    """A route's stable and candidate samples, as the analysis judges them."""

    async def samples(self, route: str, now: float) -> tuple[Sample, Sample]:
        """(stable, candidate) over the route's analysis window ending at `now`; raises
        `Unavailable`."""
        ...

    def refer(self, route: str, seconds: float) -> None:
        """Count requests slower than `seconds` as slow from now on (see `Clustering`)."""
        ...

    def count(self, route: str, run: str) -> None:
        """Count the route's requests toward rollout run `run` (`machine.run_of`) from now on:
        a run other than the one counted so far (a resume, a new candidate) starts anew."""
        ...


class SharedVerdicts(Protocol):
    """A fleet's choice of the replica that decides, and the verdicts it publishes."""

    @property
    def name(self) -> str:
        """This replica's name."""
        ...

    @property
    def holder(self) -> str | None:
        """The decider's name, as last seen."""
        ...

    @property
    def deciding(self) -> bool:
        """Whether this replica decides for the fleet."""
        ...

    async def fence(self, route: str) -> Fence | None:
        """The decider's lease on `route`, for the changes only the decider may make (each is
        refused once another holds it); None when this replica does not decide."""
        ...

    async def publish(self, route: str, record: dict[str, Any], keep: float) -> None:
        """Publish this decider's latest record on `route` for `keep` seconds; raises
        `Unavailable`."""
        ...

    async def latest(self, route: str) -> dict[str, Any] | None:
        """The fleet's latest record on `route`, if any; raises `Unavailable`."""
        ...


class VerdictSink(Protocol):
    """Where each verdict is counted (the metrics' `Recorder`)."""

    def observe_verdict(self, route: str, verdict: Verdict, errors_in_a_row: int) -> None:
        """Count `verdict` on `route`, with how many verdicts in a row could not be measured."""
        ...


class InProcess:
    """The observations of this process alone (`LocalObservations`), as an `Observations`."""

    def __init__(self, local: LocalObservations):
        self.local = local

    async def samples(self, route: str, now: float) -> tuple[Sample, Sample]:
        return self.local.samples(route, now)

    def refer(self, route: str, seconds: float) -> None:
        self.local.refer(route, seconds)

    def count(self, route: str, run: str) -> None:
        self.local.count(route, run)
