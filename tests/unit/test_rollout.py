"""The rollout state machine, its file store and the controller."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from functools import partial

import pytest

from proxy.config.loader import parse_config
from proxy.config.model import Ramp, Upstream, Variant
from proxy.config.reload import restart_required
from proxy.rollout.controller import FORGET_AFTER, RolloutController
from proxy.rollout.machine import (
    ALLOWED,
    Action,
    IllegalTransition,
    Rollout,
    State,
    Status,
    apply,
    forced_variant,
    hold,
    identity_of,
    route_share,
    state_of,
)
from proxy.rollout.store import FileStore, MemoryStore, StateError, decode, encode
from tests.support.rollouts import HOUR, ROUTE, T0
from tests.support.waiting import eventually


def fresh() -> Rollout:
    return Rollout(identity_of(ROUTE), started_at=T0)


def in_state(state: State) -> tuple[Rollout, float]:
    """A rollout in `state`, and a time at which it is in it."""
    rollout = fresh()
    if state is State.PENDING:
        return rollout, T0 - 1
    if state is State.RAMPING:
        return rollout, T0 + HOUR
    if state is State.COMPLETE:
        return rollout, T0 + 10 * HOUR
    action = {
        State.PAUSED: Action.PAUSE,
        State.PROMOTED: Action.PROMOTE,
        State.ROLLED_BACK: Action.ROLLBACK,
    }[state]
    return apply(rollout, ROUTE, action, T0 + HOUR, actor="t"), T0 + 2 * HOUR


EXPECTED_AFTER = {
    Action.PAUSE: State.PAUSED,
    Action.PROMOTE: State.PROMOTED,
    Action.ROLLBACK: State.ROLLED_BACK,
    Action.SET_SHARE: State.PAUSED,
}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("action", list(Action))
def test_transition_table(state, action):
    rollout, now = in_state(state)
    assert state_of(rollout, ROUTE, now) is state
    legal = {
        Action.PAUSE: {State.PENDING, State.RAMPING, State.COMPLETE},
        Action.RESUME: {State.PAUSED, State.ROLLED_BACK},
        Action.PROMOTE: {State.PENDING, State.RAMPING, State.COMPLETE, State.PAUSED},
        Action.ROLLBACK: set(State) - {State.ROLLED_BACK},
        Action.SET_SHARE: {State.PENDING, State.RAMPING, State.COMPLETE, State.PAUSED},
    }[action]
    assert ALLOWED[action] == legal
    share = 0.3 if action is Action.SET_SHARE else None
    if state not in legal:
        with pytest.raises(IllegalTransition) as info:
            apply(rollout, ROUTE, action, now, actor="t", share=share)
        assert info.value.state is state
        return
    after = apply(rollout, ROUTE, action, now, actor="alice", reason="why", share=share)
    expected = EXPECTED_AFTER.get(action, State.RAMPING)  # resume at T0+2h: ramping again
    assert state_of(after, ROUTE, now) is expected
    last = after.history[-1]
    # (a resume after a rollback begins the next run, and says so)
    said = "; run 2 of this candidate, from the ramp's base, judged on fresh counts"
    new_run = action is Action.RESUME and state is State.ROLLED_BACK
    assert (last.action, last.before, last.after, last.actor, last.reason) == (
        action,
        state,
        expected,
        "alice",
        "why" + (said if new_run else ""),
    )
    assert after.run == (2 if new_run else 1)


def test_pause_freezes_share_and_resume_continues_where_it_stopped():
    rollout = fresh()
    at_1h = route_share(rollout, ROUTE, T0 + HOUR)
    assert at_1h == pytest.approx(0.2)
    paused = apply(rollout, ROUTE, Action.PAUSE, T0 + HOUR, actor="t")
    assert route_share(paused, ROUTE, T0 + 3 * HOUR) == pytest.approx(0.2)  # frozen
    resumed = apply(paused, ROUTE, Action.RESUME, T0 + 3 * HOUR, actor="t")
    assert resumed.held == pytest.approx(2 * HOUR)
    assert route_share(resumed, ROUTE, T0 + 3 * HOUR) == pytest.approx(0.2)  # no jump
    assert route_share(resumed, ROUTE, T0 + 4 * HOUR) == pytest.approx(0.3)  # ramp goes on
    assert state_of(resumed, ROUTE, T0 + 6 * HOUR) is State.COMPLETE  # two hours later than planned
    assert state_of(resumed, ROUTE, T0 + 5.5 * HOUR) is State.RAMPING


def test_shares_and_forced_variants_per_state():
    now = T0 + HOUR
    promoted = apply(fresh(), ROUTE, Action.PROMOTE, now, actor="t")
    rolled_back = apply(fresh(), ROUTE, Action.ROLLBACK, now, actor="t", reason="errors")
    overridden = apply(fresh(), ROUTE, Action.SET_SHARE, now, actor="t", share=0.42)
    assert (route_share(promoted, ROUTE, now), forced_variant(promoted)) == (1.0, Variant.CANDIDATE)
    assert (route_share(rolled_back, ROUTE, now), forced_variant(rolled_back)) == (
        0.0,
        Variant.STABLE,
    )
    assert (route_share(overridden, ROUTE, now), forced_variant(overridden)) == (0.42, None)
    resumed = apply(overridden, ROUTE, Action.RESUME, now + HOUR, actor="t")
    assert resumed.share_override is None
    assert route_share(resumed, ROUTE, now + HOUR) == pytest.approx(0.2)


def test_set_share_needs_a_share_in_range():
    for bad in (None, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"^set_share needs a share between 0 and 1$"):
            apply(fresh(), ROUTE, Action.SET_SHARE, T0, actor="t", share=bad)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_set_share_accepts_exactly_zero_and_exactly_one(share):
    after = apply(fresh(), ROUTE, Action.SET_SHARE, T0 + HOUR, actor="t", share=share)
    assert (after.share_override, route_share(after, ROUTE, T0 + 2 * HOUR)) == (share, share)
    assert (after.history[-1].after, after.history[-1].share) == (State.PAUSED, share)


def test_a_share_given_with_another_action_is_ignored():
    paused = apply(fresh(), ROUTE, Action.PAUSE, T0 + HOUR, actor="t", share=0.9)
    assert (paused.share_override, paused.history[-1].share) == (None, None)
    assert route_share(paused, ROUTE, T0 + 2 * HOUR) == pytest.approx(0.2)  # frozen at 1 h


def test_a_refused_action_names_itself_and_the_state_in_plain_words():
    promoted = apply(fresh(), ROUTE, Action.PROMOTE, T0 + HOUR, actor="t")
    with pytest.raises(IllegalTransition) as info:
        apply(promoted, ROUTE, Action.SET_SHARE, T0 + HOUR, actor="t", share=0.3)
    assert str(info.value) == "cannot set the share of a rollout that is promoted"


def test_holding_an_already_held_rollout_does_not_move_its_frozen_clock():
    held = hold(fresh(), T0 + HOUR)
    again = hold(held, T0 + 2 * HOUR)
    assert again.frozen_at == T0 + HOUR and again.clock(T0 + 3 * HOUR) == T0 + HOUR
    assert route_share(again, ROUTE, T0 + 3 * HOUR) == pytest.approx(0.2)  # the share at 1 h


def test_pausing_a_held_rollout_keeps_the_clock_where_the_hold_stopped_it():
    """The ramp stood still from the hold on, not from the pause: resume counts both."""
    paused = apply(hold(fresh(), T0 + HOUR), ROUTE, Action.PAUSE, T0 + 2 * HOUR, actor="t")
    assert paused.frozen_at == T0 + HOUR
    assert route_share(paused, ROUTE, T0 + 3 * HOUR) == pytest.approx(0.2)  # the share at 1 h
    resumed = apply(paused, ROUTE, Action.RESUME, T0 + 3 * HOUR, actor="t")
    assert resumed.held == 2 * HOUR
    assert route_share(resumed, ROUTE, T0 + 4 * HOUR) == pytest.approx(0.3)


def test_explicit_ramp_start_decides_pending():
    route = replace(ROUTE, ramp=replace(ROUTE.ramp, start=T0 + 5 * HOUR))
    assert state_of(fresh(), route, T0 + HOUR) is State.PENDING
    assert route_share(fresh(), route, T0 + HOUR) == 0.0
    assert state_of(fresh(), route, T0 + 5 * HOUR) is State.RAMPING


def test_history_is_bounded():
    rollout = fresh()
    for i in range(30):
        rollout = apply(rollout, ROUTE, Action.PAUSE, T0 + i, actor="t")
        rollout = apply(rollout, ROUTE, Action.RESUME, T0 + i + 0.5, actor="t")
    assert len(rollout.history) == 20


def test_identity_is_candidate_url_and_salt():
    assert identity_of(ROUTE) == "http://127.0.0.1:2#salt"
    assert identity_of(replace(ROUTE, ramp=Ramp(base=0.9))) == identity_of(ROUTE)


# --- store ------------------------------------------------------------------------------------


def sample() -> dict[str, Rollout]:
    paused = apply(fresh(), ROUTE, Action.SET_SHARE, T0 + HOUR, actor="a", reason="r", share=0.3)
    return {"r": paused, "other": replace(fresh(), identity="x#y", status=Status.ROLLED_BACK)}


def test_encode_decode_round_trip():
    rollouts = sample()
    assert decode(json.loads(json.dumps(encode(rollouts)))) == rollouts


async def save(store: FileStore, rollouts: dict[str, Rollout]) -> None:
    for name, rollout in rollouts.items():
        await store.change(name, rollout.identity, partial(lambda r, _: r, rollout))


async def test_file_store_round_trip_and_leaves_no_temp_files(tmp_path):
    store = FileStore(tmp_path / "sub" / "state.json")
    assert await store.load() == {}
    await save(store, sample())
    await save(store, sample())
    assert await FileStore(tmp_path / "sub" / "state.json").load() == sample()
    assert sorted(os.listdir(tmp_path / "sub")) == ["state.json", "state.json.lock"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "corrupt"),
        ('{"version": 99, "rollouts": {}}', "unknown format version 99"),
        ('{"version": 1, "rollouts": {"r": {"identity": "x"}}}', "corrupt"),
        (
            '{"version": 1, "rollouts": {"r": '
            + json.dumps({**encode(sample())["rollouts"]["r"], "status": "exploded"})
            + "}}",
            "corrupt",
        ),
    ],
)
async def test_corrupt_state_file_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateError, match=message) as info:
        await FileStore(path).load()
    assert str(path) in str(info.value)


async def test_unwritable_state_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="cannot write"):
        await save(FileStore(blocker / "state.json"), sample())


# --- controller -------------------------------------------------------------------------------


async def test_controller_keeps_rollouts_of_same_candidate_and_restarts_new_ones():
    store = MemoryStore()
    first = RolloutController(store)
    await first.start([ROUTE], T0)
    await first.act("r", Action.ROLLBACK, T0 + 10, actor="t", reason="bad")

    again = RolloutController(store)
    moved_ramp = replace(ROUTE, ramp=Ramp(base=0.3))
    await again.start([moved_ramp], T0 + 100)
    assert again.state("r", T0 + 100) is State.ROLLED_BACK  # a ramp change keeps the rollout

    new_candidate = replace(ROUTE, candidate=Upstream("http://127.0.0.1:3"))
    third = RolloutController(store)
    await third.start([new_candidate], T0 + 200)
    assert third.state("r", T0 + 200) is State.RAMPING
    assert third.rollout("r").started_at == T0 + 200


async def test_controller_keeps_rollouts_of_routes_that_left_the_config():
    store = MemoryStore()
    first = RolloutController(store)
    await first.start([ROUTE], T0)
    await first.act("r", Action.PAUSE, T0 + 10, actor="t")
    gone = RolloutController(store)
    await gone.start([], T0 + 20)
    back = RolloutController(store)
    await back.start([ROUTE], T0 + 30)
    assert back.state("r", T0 + 30) is State.PAUSED


async def test_rollouts_of_routes_long_out_of_the_config_are_forgotten():
    store = MemoryStore()
    first = RolloutController(store)
    await first.start([ROUTE], T0)
    await first.act("r", Action.PAUSE, T0 + 10, actor="t")  # its last change
    kept = RolloutController(store)
    await kept.start([], T0 + 10 + FORGET_AFTER - 1)
    assert "r" in await store.load()
    forgotten = RolloutController(store)
    await forgotten.start([], T0 + 10 + FORGET_AFTER)
    assert "r" not in await store.load()


class FlakyStore(MemoryStore):
    failing = False

    async def change(self, name, identity, change, fence=None, durable=False):
        if self.failing:
            raise StateError("disk on fire")
        return await super().change(name, identity, change, fence, durable)


@pytest.mark.logs_errors("disk on fire")
async def test_controller_applies_change_even_when_store_fails():
    store = FlakyStore()
    controller = RolloutController(store)
    await controller.start([ROUTE], T0)
    store.failing = True
    outcome = await controller.act("r", Action.ROLLBACK, T0 + 1, actor="t")
    assert (outcome.persisted, outcome.error) == (False, "disk on fire")
    assert controller.state("r", T0 + 2) is State.ROLLED_BACK
    assert controller.control("r", T0 + 2).forced is Variant.STABLE


async def test_controller_rejects_unknown_routes_and_illegal_actions():
    controller = RolloutController(MemoryStore())
    await controller.start([ROUTE], T0)
    assert "r" in controller and "zzz" not in controller
    with pytest.raises(KeyError):
        await controller.act("zzz", Action.PAUSE, T0, actor="t")
    with pytest.raises(IllegalTransition):
        await controller.act("r", Action.RESUME, T0, actor="t")


def test_restart_required_names_what_a_reload_cannot_change():
    route = (
        "routes:\n  - {name: r, match: {path_prefix: /}, stable: {url: 'http://a:1'}, "
        "candidate: {url: 'http://b:1'}, cohort: {keys: ['header:U']}}\n"
    )
    base = parse_config(route)
    assert restart_required(base, parse_config(route.replace("http://b:1", "http://c:1"))) == ()
    moved = parse_config(
        'server: {listen: "0.0.0.0:1"}\nstate: {backend: memory}\n'
        "access_log: {path: stdout}\n" + route
    )
    assert restart_required(base, moved) == ("server.listen", "state", "access_log")


@pytest.mark.parametrize(
    ("action", "state", "message"),
    [
        (
            Action.SET_SHARE,
            State.ROLLED_BACK,
            "cannot set the share of a rollout that is rolled back",
        ),
        (Action.ROLLBACK, State.ROLLED_BACK, "cannot roll back a rollout that is rolled back"),
        (Action.RESUME, State.RAMPING, "cannot resume a rollout that is ramping"),
    ],
)
def test_a_refused_action_is_explained_in_a_sentence(action, state, message):
    assert str(IllegalTransition(action, state)) == message


async def test_processes_sharing_a_state_file_lose_no_update_and_follow_each_other(tmp_path):
    """The workers of one host on the file backend: one start for both, no lost action."""
    path = tmp_path / "state.json"
    first, second = RolloutController(FileStore(path)), RolloutController(FileStore(path))
    await first.start([ROUTE], T0)
    await second.start([ROUTE], T0 + 5)
    assert second.rollout("r").started_at == T0  # the ramp started once, for both
    await asyncio.gather(  # valid in either order: both must be in the history
        first.act("r", Action.SET_SHARE, T0 + 10, actor="a", share=0.3),
        second.act("r", Action.SET_SHARE, T0 + 10, actor="b", share=0.4),
    )
    stored = (await FileStore(path).load())["r"]
    assert sorted(t.actor for t in stored.history) == ["a", "b"]
    try:
        await first.act("r", Action.ROLLBACK, T0 + 20, actor="a")
        # (followed by polling the file twice a second)
        assert await eventually(lambda: second.state("r", T0 + 21) is State.ROLLED_BACK, within=3)
    finally:
        for controller in (first, second):
            await controller.close()
