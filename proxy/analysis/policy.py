"""The decision policy: what follows from a verdict.

One pure function, `step`: what the analysis remembers of a rollout, a verdict, the rollout as
it stands and the route's rules in; what it remembers next and what to do out. The analysis loop
(`proxy.analysis.analyzer`), `grayscale selftest` and the simulations (`proxy.tools.trials`) all
step this one, so the figures they measure are those of the policy that runs.

Invariants
- Pure: no I/O, no clock (time is an argument), no randomness.
- Memory belongs to one rollout run (`Ramp.run`: a candidate, from its start or its latest
  resume after a rollback); a verdict on another run starts from empty memory, so no failure,
  error or passing streak outlives the rollout it was counted on.
- `failures_before_rollback` failed verdicts in a row roll back. Any other word ends the row but
  an error, which neither ends nor extends it (it says nothing of the candidate).
- `max_errors_in_a_row` errors in a row (verdicts that could not be measured) roll back under
  `on_error: rollback`; under `on_error: hold` the ramp stays held and every such step says so
  (`Step.alarm`). Any measured verdict ends the row.
- Fail, suspect and error hold the ramp whatever `on_inconclusive` says; inconclusive holds it
  under `on_inconclusive: hold`; pass releases it. A ramp without candidate traffic (share 0)
  is never held: there would be nothing to wait for.
- With `promote.after`, the rollout is promoted once its verdicts have passed for that long at
  the ramp's max (state complete): inconclusive neither counts nor ends the streak; fail,
  suspect, error, or leaving the max end it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from proxy.analysis.verdict import Result, Verdict
from proxy.config.model import AnalysisSpec, Inconclusive, OnError, Route
from proxy.rollout.machine import State

_HOLDING = (Result.FAIL, Result.SUSPECT, Result.ERROR)


class Act(StrEnum):
    """What the loop does after a verdict."""

    CONTINUE = "continue"  # the ramp runs (released if it was held)
    HOLD = "hold"  # the ramp's clock stops: the share does not grow
    ROLLBACK = "rollback"
    PROMOTE = "promote"


@dataclass(frozen=True, slots=True)
class Rules:
    """A route's settings that the policy follows."""

    failures_before_rollback: int = 3
    on_inconclusive: Inconclusive = Inconclusive.HOLD
    max_errors_in_a_row: int = 4
    on_error: OnError = OnError.HOLD
    promote_after: float | None = None

    @classmethod
    def of(cls, spec: AnalysisSpec, route: Route | None = None) -> Rules:
        """The rules of an analysis `spec`, with `route`'s automatic promotion if any."""
        promote = None if route is None or route.promote is None else route.promote.after
        return cls(
            spec.failures_before_rollback,
            spec.on_inconclusive,
            spec.max_errors_in_a_row,
            spec.on_error,
            promote,
        )


@dataclass(frozen=True, slots=True)
class Ramp:
    """What the policy sees of a rollout: which run it is, its state and the candidate's share."""

    run: str
    state: State
    share: float


@dataclass(frozen=True, slots=True)
class Memory:
    """What the policy remembers of one rollout run between verdicts."""

    run: str | None = None
    failures: int = 0  # failed verdicts in a row
    errors: int = 0  # verdicts in a row that could not be measured
    passing_since: float | None = None  # since when the verdicts passed at the ramp's max


@dataclass(frozen=True, slots=True)
class Step:
    """What to do, why, and whether it is an alarm (errors beyond the limit, held)."""

    act: Act
    reason: str
    alarm: bool = False


def step(
    memory: Memory, verdict: Verdict, ramp: Ramp, rules: Rules, now: float
) -> tuple[Memory, Step]:
    """The memory after `verdict` on `ramp` at `now`, and what to do (see the module's text)."""
    if memory.run != ramp.run:
        memory = Memory(ramp.run)
    result = verdict.result
    if result is Result.FAIL:
        failures = memory.failures + 1
    elif result is Result.ERROR:
        failures = memory.failures  # (an error says nothing of the candidate)
    else:
        failures = 0
    errors = memory.errors + 1 if result is Result.ERROR else 0
    since = None
    if ramp.state is State.COMPLETE and result in (Result.PASS, Result.INCONCLUSIVE):
        since = memory.passing_since
        if since is None and result is Result.PASS:
            since = now
    after = Memory(ramp.run, failures, errors, since)
    if failures >= rules.failures_before_rollback:
        return after, Step(Act.ROLLBACK, f"{failures} failed verdicts in a row")
    unmeasured = errors >= rules.max_errors_in_a_row
    if unmeasured and rules.on_error is OnError.ROLLBACK:
        why = f"{errors} verdicts in a row could not be measured (on_error: rollback)"
        return after, Step(Act.ROLLBACK, why)
    if since is not None and rules.promote_after is not None and now - since >= rules.promote_after:
        why = f"every verdict passed for {rules.promote_after:g} s at the ramp's max"
        return Memory(ramp.run, 0, 0, None), Step(Act.PROMOTE, why)
    if ramp.share <= 0.0:
        return after, Step(Act.CONTINUE, "no candidate traffic to wait for")
    if unmeasured:
        why = f"{errors} verdicts in a row could not be measured: held (on_error: hold)"
        return after, Step(Act.HOLD, why, alarm=True)
    if result in _HOLDING:
        why = {
            Result.FAIL: f"failed ({failures} of {rules.failures_before_rollback} to roll back)",
            Result.SUSPECT: "suspect: the candidate looks worse than allowed",
            Result.ERROR: f"could not be measured ({errors} of {rules.max_errors_in_a_row})",
        }[result]
        return after, Step(Act.HOLD, why)
    if result is Result.INCONCLUSIVE:
        if rules.on_inconclusive is Inconclusive.HOLD:
            return after, Step(Act.HOLD, "inconclusive (on_inconclusive: hold)")
        return after, Step(Act.CONTINUE, "inconclusive (on_inconclusive: continue)")
    return after, Step(Act.CONTINUE, "passed")
