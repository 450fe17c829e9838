"""The shadow gate: a rollout that waits at its start until shadow comparisons agree."""

from __future__ import annotations

from dataclasses import replace

from proxy.config.model import Cohort, KeySource, Ramp, Route, Shadow, Source, Upstream
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import (
    GATE_LEAD,
    State,
    fresh,
    gated,
    hold,
    open_gate,
    release,
    route_share,
    state_of,
)
from proxy.rollout.store import MemoryStore

T0 = 1_796_083_200.0
HOUR = 3600.0
GATED = Route(
    name="r",
    path_prefix="/",
    stable=Upstream("http://127.0.0.1:1"),
    candidate=Upstream("http://127.0.0.1:2"),
    cohort=Cohort((KeySource(Source.HEADER, "X-User-Id"),), "salt"),
    ramp=Ramp(base=0.1, slope=0.1, per=HOUR, max=0.5),
    shadow=Shadow(0.1, "s", min_agreement=0.9),
)


def test_a_gated_rollout_waits_just_before_its_start_with_no_candidate_traffic():
    rollout = fresh(GATED, T0)
    for later in (0.0, HOUR, 30 * 24 * HOUR):
        assert gated(rollout, GATED, T0 + later)
        assert state_of(rollout, GATED, T0 + later) is State.PENDING
        assert route_share(rollout, GATED, T0 + later) == 0.0
    assert rollout.clock(T0 + HOUR) == T0 - GATE_LEAD


def test_an_open_gate_starts_the_ramp_from_its_base_and_later_steps_come_later():
    opened = open_gate(fresh(GATED, T0), GATED, T0 + 2 * HOUR)
    assert not gated(opened, GATED, T0 + 2 * HOUR)
    assert route_share(opened, GATED, T0 + 2 * HOUR + GATE_LEAD) == 0.1  # it starts at base
    assert route_share(opened, GATED, T0 + 3 * HOUR + GATE_LEAD) == 0.2  # an hour of ramp
    assert open_gate(opened, GATED, T0 + 4 * HOUR) is opened  # opens once
    # Held later by the analysis and released: still no gate.
    again = release(hold(opened, T0 + 5 * HOUR), T0 + 6 * HOUR)
    assert not gated(again, GATED, T0 + 6 * HOUR)


def test_without_a_gate_a_rollout_starts_at_once_and_a_past_start_is_gated_before_it():
    plain = replace(GATED, shadow=Shadow(0.1, "s"))  # shadow, but no min_agreement
    assert route_share(fresh(plain, T0), plain, T0) == 0.1
    past = replace(GATED, ramp=replace(GATED.ramp, start=T0 - 10 * HOUR))
    waiting = fresh(past, T0)
    assert gated(waiting, past, T0) and route_share(waiting, past, T0 + HOUR) == 0.0
    assert waiting.clock(T0 + HOUR) == T0 - 10 * HOUR - GATE_LEAD
    future = replace(GATED, ramp=replace(GATED.ramp, start=T0 + HOUR))
    assert fresh(future, T0).clock(T0 + 5 * HOUR) == T0 - GATE_LEAD  # it waits for the gate


async def test_the_analysis_cannot_release_a_rollout_waiting_at_its_gate():
    controller = RolloutController(MemoryStore())
    await controller.start([GATED], T0)
    assert controller.gated("r", T0)
    assert await controller.set_hold("r", False, T0 + 1) is False  # the analysis releases...
    assert controller.gated("r", T0 + 1)  # ...but the gate holds
    assert await controller.open_gate("r", T0 + 2) is True
    assert not controller.gated("r", T0 + 2)
    assert controller.state("r", T0 + 3) is State.RAMPING
    assert await controller.open_gate("r", T0 + 4) is False


def test_a_clock_exactly_at_the_start_has_started_and_open_gate_leaves_other_holds():
    at_start = hold(replace(fresh(GATED, T0), frozen_at=None, held=0.0), T0)
    assert at_start.clock(T0 + 5) == T0 and not gated(at_start, GATED, T0 + 5)
    assert open_gate(at_start, GATED, T0 + 5) is at_start  # held by the analysis: stays held
