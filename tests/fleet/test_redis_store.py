"""The Redis state store against a real redis-server: compare-and-set under contention,
unreadable records, and an emptied Redis written back by the replicas that knew its state."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from proxy.fleet.redis_connection import connect
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import Action, Rollout, State, Status, identity_of
from proxy.rollout.redis_store import REREAD_EVERY, RedisStore
from proxy.rollout.store import Fence, LeaseLost, StateUnavailable
from tests.support.fleet import held_for
from tests.support.redis_server import MISSING, RedisServer
from tests.support.rollouts import ROUTE, T0
from tests.support.waiting import eventually


async def test_concurrent_changes_from_two_stores_lose_none(redis_server: RedisServer):
    """Fifty read-modify-writes of one record from two connections, all at once: each one
    counts (the rollout's `held` serves as a counter)."""
    clients = [connect(redis_server.url) for _ in range(2)]
    stores = [RedisStore(client, "t") for client in clients]

    def add_one(stored: Rollout | None) -> Rollout:
        base = stored if stored is not None else Rollout("id", started_at=T0)
        return replace(base, held=base.held + 1)

    try:
        await asyncio.gather(*(stores[i % 2].change("r", "id", add_one) for i in range(50)))
        assert (await stores[0].load({"r": "id"}))["r"].held == 50
    finally:
        for store, client in zip(stores, clients, strict=True):
            await store.close()
            await client.aclose()


async def test_a_fenced_change_is_made_only_while_the_lease_holds_its_token(
    redis_server: RedisServer,
):
    raw = Redis.from_url(redis_server.url)
    store = RedisStore(raw, "t")
    fence = Fence("t:decider", "replica-a#1")
    try:
        await store.change("r", "a", lambda _: Rollout("a", started_at=T0))
        await raw.set("t:decider", "replica-a#1")
        held = await store.change("r", "a", held_for(1.0), fence)
        assert held.held == 1.0
        await raw.set("t:decider", "replica-b#2")  # another replica took the lease
        with pytest.raises(LeaseLost):
            await store.change("r", "a", held_for(2.0), fence)
        await raw.delete("t:decider")  # (expired: no holder at all)
        with pytest.raises(LeaseLost):
            await store.change("r", "a", held_for(3.0), fence)
        assert (await store.load({"r": "a"}))["r"].held == 1.0  # nothing changed
        assert (await store.change("r", "a", held_for(4.0))).held == 4.0  # unfenced
    finally:
        await store.close()
        await raw.aclose()


async def test_records_are_per_candidate_and_under_the_prefix(redis_server: RedisServer):
    raw = Redis.from_url(redis_server.url)
    store = RedisStore(raw, "prod:eu")
    try:
        await store.change("r", "a", lambda _: Rollout("a", started_at=T0))
        await store.change("r", "b", lambda _: Rollout("b", started_at=T0 + 1))
        keys = sorted(key.decode() for key in await raw.keys("*"))
        assert keys == sorted([store.key("r", "a"), store.key("r", "b")])
        assert all(key.startswith("prod:eu:rollout:{r}:") for key in keys)
        assert 0 < await raw.ttl(keys[0]) <= 30 * 86400
    finally:
        await store.close()
        await raw.aclose()


@pytest.mark.logs_errors("rollout record unreadable")
async def test_an_unreadable_record_is_set_aside_and_the_route_starts_rolled_back(
    redis_server: RedisServer,
):
    raw = Redis.from_url(redis_server.url)
    store = RedisStore(raw, "t")
    key = store.key("r", identity_of(ROUTE))
    await raw.set(key, b'{"version": 3, "rollout": {"identity": 7}}')
    controller = RolloutController(store)
    try:
        await controller.start([ROUTE], T0)
        assert controller.state("r", T0) is State.ROLLED_BACK
        assert controller.load_error is not None
        assert "rollout record unreadable: rollout.history: missing" in controller.load_error
        assert f"{key}:unreadable-" in controller.load_error
        aside = [k.decode() for k in await raw.keys("*unreadable*")]
        assert len(aside) == 1
        assert await raw.get(aside[0]) == b'{"version": 3, "rollout": {"identity": 7}}'
    finally:
        await controller.close()
        await raw.aclose()


async def test_a_change_refused_when_redis_is_gone_changes_nothing_but_a_rollback_holds_here(
    redis_server: RedisServer,
):
    client = connect(redis_server.url)
    controller = RolloutController(RedisStore(client, "t"))
    try:
        await controller.start([ROUTE], T0)
        redis_server.kill()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StateUnavailable):
            await controller.act("r", Action.PAUSE, T0 + 1, actor="op")
        assert loop.time() - started < 3
        assert controller.state("r", T0 + 1) is State.RAMPING
        assert controller.store_error is not None
        # A rollback is never refused: applied here at once, recorded when Redis is back.
        outcome = await controller.act("r", Action.ROLLBACK, T0 + 2, actor="op")
        assert not outcome.persisted and "recorded as soon as" in (outcome.error or "")
        assert controller.state("r", T0 + 2) is State.ROLLED_BACK
        assert "not yet recorded" in (controller.store_error or "")
    finally:
        await controller.close()
        await client.aclose()


async def test_connections_killed_by_redis_are_replaced_and_the_next_action_succeeds(
    redis_server: RedisServer,
):
    # (`CLIENT KILL`, an idle timeout, a proxy in between that drops connections)
    client = connect(redis_server.url)
    raw = Redis.from_url(redis_server.url)
    controller = RolloutController(RedisStore(client, "t"))
    try:
        await controller.start([ROUTE], T0)

        async def subscribed() -> bool:  # (the follower's connection is killed too)
            return bool((await raw.pubsub_numsub("t:changes"))[0][1])

        assert await eventually(subscribed, within=5)
        assert await raw.client_kill_filter(_type="normal", skipme=True) >= 1
        outcome = await controller.act("r", Action.PAUSE, T0 + 1, actor="op")
        assert outcome.persisted and controller.store_error is None
    finally:
        await controller.close()
        await client.aclose()
        await raw.aclose()


async def test_an_emptied_redis_gets_back_what_the_replicas_knew(redis_server: RedisServer):
    raw = Redis.from_url(redis_server.url)
    first = RolloutController(RedisStore(raw, "t"))
    try:
        await first.start([ROUTE], T0)
        await first.act("r", Action.ROLLBACK, T0 + 1, actor="op", reason="bad")
        await raw.flushall()
        # (re-read once a second: the missing record is written back)
        assert await eventually(lambda: raw.keys("*"), within=REREAD_EVERY + 2)
        second = RolloutController(RedisStore(raw, "t"))
        await second.start([ROUTE], T0 + 5)
        assert second.state("r", T0 + 5) is State.ROLLED_BACK
        await second.close()
    finally:
        await first.close()
        await raw.aclose()


def test_a_bad_record_is_no_crash_for_the_parser():
    with pytest.raises(ValueError, match="not JSON"):
        RedisStore._parse(b"\xff")
    with pytest.raises(ValueError, match="version: expected a positive whole number"):
        RedisStore._parse(b'{"version": true, "rollout": {}}')
    assert RedisStore._parse(None) == (0, None)


async def test_a_durable_change_waits_for_a_replica_and_says_when_none_acknowledged():
    master, replica = RedisServer.find(), RedisServer.find()
    if master is None or replica is None:
        pytest.skip(MISSING)
    master.start()
    client = connect(master.url)
    try:
        replica.start(replica_of=master.port)
        assert await eventually(master.acknowledged, within=5)
        store = RedisStore(client, "t")  # (waits for one replica when the master has any)
        controller = RolloutController(store)
        await controller.start([ROUTE], T0)
        # (the replicas are counted at each re-read)
        assert await eventually(lambda: store.replicas == 1, within=REREAD_EVERY + 2)
        assert (await controller.act("r", Action.PAUSE, T0 + 1, actor="op")).persisted
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)  # a replica that acknowledges nothing
        try:
            outcome = await controller.act("r", Action.ROLLBACK, T0 + 2, actor="op")
        finally:
            replica.process.send_signal(signal.SIGCONT)
        assert not outcome.persisted and "acknowledged by 0 of 1 replicas" in str(outcome.error)
        assert controller.state("r", T0 + 2) is State.ROLLED_BACK  # made, on the master
        assert (await store.load({"r": identity_of(ROUTE)}))["r"].status.value == "rolled_back"
        await controller.close()
    finally:
        await client.aclose()
        replica.kill()
        master.kill()


async def test_a_rollback_made_while_redis_refuses_writes_is_not_lost_to_a_race_after(
    redis_server: RedisServer,
):
    # Redis refuses writes (out of memory); an operator rolls back on replica A, which applies
    # it at once and writes it when Redis takes writes again. Replica B, knowing nothing of it,
    # writes first (a new analysis judging the run): its record has the revision A's rollback
    # has. A must record its rollback on top of B's change, not take B's record for the latest.
    raw = Redis.from_url(redis_server.url)
    clients = [connect(redis_server.url) for _ in range(2)]
    a, b = (RolloutController(RedisStore(client, "t")) for client in clients)
    key = RedisStore(raw, "t").key("r", identity_of(ROUTE))

    async def stored_record() -> Rollout | None:
        value = await raw.get(key)
        assert not isinstance(value, str)
        return RedisStore._parse(value)[1]

    try:
        await a.start([ROUTE], T0)
        await b.start([ROUTE], T0)
        await raw.config_set("maxmemory", "1")
        outcome = await a.act("r", Action.ROLLBACK, T0 + 1, actor="op", reason="bad")
        assert not outcome.persisted and a.state("r", T0 + 1) is State.ROLLED_BACK
        rolled_back = a.rollout("r")
        await raw.config_set("maxmemory", "0")
        assert await b.judge_anew("r") == 1  # (B's first write after the outage)
        stored = await stored_record()
        assert stored is not None and stored.revision == rolled_back.revision

        async def recorded() -> bool:
            stored = await stored_record()
            return stored is not None and stored.status is Status.ROLLED_BACK

        assert await eventually(recorded, within=2 * REREAD_EVERY + 3)
        stored = await stored_record()
        assert stored is not None and stored.judged == 1  # (B's change kept under it)
        assert a.state("r", T0 + 2) is State.ROLLED_BACK
        assert await eventually(lambda: a.store_error is None, within=3)
        assert await eventually(lambda: b.state("r", T0 + 2) is State.ROLLED_BACK, within=3)
    finally:
        await raw.config_set("maxmemory", "0")
        for controller in (a, b):
            await controller.close()
        for client in clients:
            await client.aclose()
        await raw.aclose()
