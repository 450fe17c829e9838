"""The rollout state machine: pure, time is an argument.

A rollout is stored as a `Rollout` record; what an operator sees (`State`) is derived from the
record, the route's ramp and the time. Pausing, promoting and rolling back stop the ramp's clock;
resuming restarts it where it stopped, so a paused ramp continues from the share it had, later by
exactly the time it stood still.

Transitions (anything else is illegal and answered with the current state):

=========  =======  =======  ========  ======  ========  ===========
action     pending  ramping  complete  paused  promoted  rolled_back
=========  =======  =======  ========  ======  ========  ===========
pause      paused   paused   paused    -       -         -
resume     -        -        -         (ramp)  -         (ramp)
promote    promoted promoted promoted  promoted -        -
rollback   rolled_b rolled_b rolled_b  rolled_b rolled_b -
set_share  paused   paused   paused    paused  -         -
=========  =======  =======  ========  ======  ========  ===========

"(ramp)" is pending, ramping or complete, whichever the ramp's clock says. Resuming a rolled-back
rollout begins a new run of it (`Rollout.run`): from the ramp's base, as if it had just started,
with fresh analysis counts; with `keep_share`, where it stopped (the counts still start anew).

Besides these transitions, the analysis may `hold` a running ramp (stop its clock while data is
too thin for a verdict) and `release` it; the state stays what the clock says.

A route with a shadow gate (`shadow.min_agreement`) starts its rollouts held with the clock just
before the ramp's start (pending, share 0): the ramp waits there, whatever the analysis says,
until the gate opens (`open_gate`). Whether a rollout waits at its gate is read from the record
(held, clock before the start), so it survives restarts with nothing more stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from proxy.config.model import Route, Variant
from proxy.routing import current_share

HISTORY = 20  # transitions kept per rollout


class Status(StrEnum):
    """What is stored: whether the ramp runs, and whether a person or the analysis stopped it."""

    ACTIVE = "active"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


class State(StrEnum):
    """What an operator sees."""

    PENDING = "pending"
    RAMPING = "ramping"
    COMPLETE = "complete"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


class Action(StrEnum):
    """What an operator (or the analysis) can do to a rollout."""

    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    SET_SHARE = "set_share"


_RUNNING = {State.PENDING, State.RAMPING, State.COMPLETE}
ALLOWED: dict[Action, frozenset[State]] = {
    Action.PAUSE: frozenset(_RUNNING),
    Action.RESUME: frozenset({State.PAUSED, State.ROLLED_BACK}),
    Action.PROMOTE: frozenset(_RUNNING | {State.PAUSED}),
    Action.ROLLBACK: frozenset(_RUNNING | {State.PAUSED, State.PROMOTED}),
    Action.SET_SHARE: frozenset(_RUNNING | {State.PAUSED}),
}
_STATUS_AFTER = {
    Action.PAUSE: Status.PAUSED,
    Action.RESUME: Status.ACTIVE,
    Action.PROMOTE: Status.PROMOTED,
    Action.ROLLBACK: Status.ROLLED_BACK,
    Action.SET_SHARE: Status.PAUSED,
}


class IllegalTransition(Exception):
    """`action` cannot be applied in `state`."""

    def __init__(self, action: Action, state: State):
        self.action, self.state = action, state
        what = _VERBS[action]
        super().__init__(f"cannot {what} a rollout that is {state.value.replace('_', ' ')}")


_VERBS = {
    Action.PAUSE: "pause",
    Action.RESUME: "resume",
    Action.PROMOTE: "promote",
    Action.ROLLBACK: "roll back",
    Action.SET_SHARE: "set the share of",
}


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of a rollout, for the audit trail and `/status`."""

    action: Action
    at: float
    actor: str
    before: State
    after: State
    reason: str | None = None
    share: float | None = None


@dataclass(frozen=True, slots=True)
class Rollout:
    """The stored state of one route's rollout of one candidate.

    `identity` names the candidate (URL and salt): a different one is a new rollout. The ramp's
    clock reads `(frozen_at or now) - held`: `held` is the time it stood still before, `frozen_at`
    is when it stopped, if it is stopped now. `revision` grows by one with every change (see
    `proxy.rollout.controller`): a record with a lower one is older, as a store restored from a
    snapshot or failed over with writes lost holds it, and never replaces a higher one.
    """

    identity: str
    started_at: float
    status: Status = Status.ACTIVE
    held: float = 0.0
    frozen_at: float | None = None
    share_override: float | None = None
    history: tuple[Transition, ...] = field(default=())
    judged: int = 0  # how many analyses began judging this run from fresh counts (the Analyzer)
    run: int = 1  # 1, then one more at each resume after a rollback: the analysis's counts'
    revision: int = 0  # changes made to it, counted over the fleet: of two records, the newer

    def clock(self, now: float) -> float:
        """The ramp's time at wall time `now`."""
        return (self.frozen_at if self.frozen_at is not None else now) - self.held

    @property
    def last(self) -> Transition | None:
        """The latest transition, if any."""
        return self.history[-1] if self.history else None


def run_of(rollout: Rollout) -> str:
    """What identifies one run of a rollout: its candidate, and how many times it began."""
    return f"{rollout.identity}@{rollout.run}"


def identity_of(route: Route) -> str:
    """What identifies a rollout: the candidate's URL and the salt its users are bucketed with."""
    return f"{route.candidate.url}#{route.cohort.salt}"


GATE_LEAD = 0.001  # seconds a gated rollout's clock stands before the ramp's start


def ramp_start(rollout: Rollout, route: Route) -> float:
    """When the ramp starts on its clock: the config's `start`, else the rollout's."""
    return route.ramp.start if route.ramp.start is not None else rollout.started_at


def fresh(route: Route, now: float) -> Rollout:
    """A new rollout of `route` at `now`; waiting at its start if the route has a shadow gate."""
    rollout = Rollout(identity_of(route), started_at=now)
    if route.shadow is None or route.shadow.min_agreement is None:
        return rollout
    clock = min(now, ramp_start(rollout, route)) - GATE_LEAD
    return replace(rollout, frozen_at=now, held=now - clock)


def gated(rollout: Rollout, route: Route, now: float) -> bool:
    """Whether the rollout waits at its start for the route's shadow gate."""
    if route.shadow is None or route.shadow.min_agreement is None or not holding(rollout):
        return False
    return rollout.clock(now) < ramp_start(rollout, route)


def open_gate(rollout: Rollout, route: Route, now: float) -> Rollout:
    """Let a rollout that waits at its gate start its ramp."""
    return release(rollout, now) if gated(rollout, route, now) else rollout


def route_share(rollout: Rollout, route: Route, now: float) -> float:
    """The candidate's share for requests outside segments at `now`."""
    if rollout.status is Status.PROMOTED:
        return 1.0
    if rollout.status is Status.ROLLED_BACK:
        return 0.0
    if rollout.share_override is not None:
        return rollout.share_override
    return current_share(route.ramp, rollout.started_at, rollout.clock(now))


def state_of(rollout: Rollout, route: Route, now: float) -> State:
    """What an operator sees at `now`."""
    if rollout.status is not Status.ACTIVE:
        return State(rollout.status.value)
    clock = rollout.clock(now)
    if clock < ramp_start(rollout, route):
        return State.PENDING
    if current_share(route.ramp, rollout.started_at, clock) >= route.ramp.max:
        return State.COMPLETE
    return State.RAMPING


def forced_variant(rollout: Rollout) -> Variant | None:
    """The variant every request gets, when the rollout's state decides alone."""
    if rollout.status is Status.PROMOTED:
        return Variant.CANDIDATE
    if rollout.status is Status.ROLLED_BACK:
        return Variant.STABLE
    return None


def apply(
    rollout: Rollout,
    route: Route,
    action: Action,
    now: float,
    *,
    actor: str,
    reason: str | None = None,
    share: float | None = None,
    keep_share: bool = False,
) -> Rollout:
    """`rollout` after `action` at `now`; raises `IllegalTransition` when not allowed.

    `share` is required for `set_share`, which pauses the ramp at that share. Resuming a rolled
    back rollout begins its next run from the ramp's base, or with `keep_share` where it stopped.
    """
    before = state_of(rollout, route, now)
    if before not in ALLOWED[action]:
        raise IllegalTransition(action, before)
    if action is Action.RESUME and before is State.ROLLED_BACK:
        rollout = replace(rollout, run=rollout.run + 1, judged=0)
        how = "where it stopped" if keep_share else "from the ramp's base"
        said = f"run {rollout.run} of this candidate, {how}, judged on fresh counts"
        reason = f"{reason}; {said}" if reason else said
        if not keep_share:
            restarted = replace(rollout, started_at=now, held=0.0, frozen_at=now)
            # (the clock at the ramp's start: a configured start in the past is reached anew)
            start = ramp_start(restarted, route)
            rollout = replace(restarted, held=max(0.0, now - start))
    status = _STATUS_AFTER[action]
    if status is Status.ACTIVE:
        assert rollout.frozen_at is not None
        held, frozen_at = rollout.held + (now - rollout.frozen_at), None
    else:
        held, frozen_at = rollout.held, rollout.frozen_at if rollout.frozen_at is not None else now
    if action is Action.SET_SHARE and (share is None or not 0.0 <= share <= 1.0):
        raise ValueError("set_share needs a share between 0 and 1")
    after = replace(
        rollout,
        status=status,
        held=held,
        frozen_at=frozen_at,
        share_override=share if action is Action.SET_SHARE else None,
    )
    transition = Transition(
        action, now, actor, before, state_of(after, route, now), reason, after.share_override
    )
    return replace(after, history=(*rollout.history, transition)[-HISTORY:])


def hold(rollout: Rollout, now: float) -> Rollout:
    """Stop the ramp's clock of a running rollout (the analysis has too little data)."""
    if rollout.status is not Status.ACTIVE or rollout.frozen_at is not None:
        return rollout
    return replace(rollout, frozen_at=now)


def release(rollout: Rollout, now: float) -> Rollout:
    """Restart the ramp's clock of a running rollout held by `hold`."""
    if rollout.status is not Status.ACTIVE or rollout.frozen_at is None:
        return rollout
    return replace(rollout, held=rollout.held + (now - rollout.frozen_at), frozen_at=None)


def holding(rollout: Rollout) -> bool:
    """Whether a running rollout's ramp is held."""
    return rollout.status is Status.ACTIVE and rollout.frozen_at is not None
