"""Replicas on one Redis act as one proxy: an action on any of them reaches all of them, two
actions at once both hold, and an outage or an emptied Redis loses nothing."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import aiohttp

from proxy.rollout.redis_store import RECONNECT_EVERY
from tests.support.fleet import eventually_state, fleet_config, state_of, variant
from tests.support.replicas import TOKEN, Replica, ReplicaFactory
from tests.support.waiting import eventually, until


async def test_a_rollback_on_one_replica_reaches_the_others_within_a_second(
    tmp_path, redis_server, upstreams, replicas: ReplicaFactory
):
    config = fleet_config(tmp_path, redis_server, *upstreams)
    fleet = [await replicas(config) for _ in range(3)]
    async with aiohttp.ClientSession() as session:
        for replica in fleet:
            assert await variant(session, replica.proxy_url, "u1") == "candidate"
        status, body = await fleet[0].action(session, "models", "rollback", reason="bad scores")
        assert (status, body["after"]) == (200, "rolled_back"), body

        async def rolled_back(replica: Replica) -> bool:
            return await state_of(session, replica.admin_url) == "rolled_back"

        reached = await asyncio.gather(
            *(until(partial(rolled_back, replica), within=5, every=0.01) for replica in fleet[1:])
        )
        print(f"\nrollback reached the other replicas after {reached} s")
        assert None not in reached, reached
        assert max(t for t in reached if t is not None) < 1.0
        for replica in fleet:
            assert await variant(session, replica.proxy_url, "u1") == "stable"
            assert replica.logged("ERROR") == []


async def test_actions_on_two_replicas_at_once_are_both_applied_or_refused(
    tmp_path, redis_server, upstreams, replicas: ReplicaFactory
):
    """A rollback racing a share change: whichever lands second works on the first's result,
    so the rollback is never overwritten (the route ends rolled back every time)."""
    config = fleet_config(tmp_path, redis_server, *upstreams)
    a, b = await replicas(config), await replicas(config)
    outcomes = {"share first": 0, "rollback first": 0}
    async with aiohttp.ClientSession() as session:
        for _ in range(15):
            (share_status, share_body), (rollback_status, _) = await asyncio.gather(
                a.action(session, "models", "share", share=0.3),
                b.action(session, "models", "rollback"),
            )
            assert rollback_status == 200
            if share_status == 200:
                outcomes["share first"] += 1
            else:
                assert (share_status, share_body["state"]) == (409, "rolled_back")
                outcomes["rollback first"] += 1
            for replica in (a, b):
                assert await eventually_state(session, replica.admin_url, "rolled_back")
                route = (await replica.status(session))["routes"][0]  # type: ignore[index]
                assert route["last_transition"]["action"] == "rollback"
            resumed, body = await a.action(session, "models", "resume")
            assert resumed == 200, body
            assert await eventually_state(session, b.admin_url, "complete")
    print(f"\nraces: {outcomes}")


async def test_the_ramp_starts_once_for_the_whole_fleet(
    tmp_path, redis_server, upstreams, replicas: ReplicaFactory
):
    stable, candidate = upstreams
    config = fleet_config(tmp_path, redis_server, stable, candidate, share=0.1)
    first = await replicas(config)
    # (time passing is the point: a second replica that started a ramp of its own would show
    # a start at least this much later)
    await asyncio.sleep(1.1)
    second = await replicas(config)
    async with aiohttp.ClientSession() as session:
        starts = [
            (await replica.status(session))["routes"][0]["rollout"]["started_at"]  # type: ignore[index]
            for replica in (first, second)
        ]
    assert starts[0] == starts[1]


async def test_a_redis_outage_costs_no_request_and_an_emptied_redis_no_rollback(
    tmp_path, redis_server, upstreams, replicas: ReplicaFactory
):
    stable, candidate = upstreams
    config = fleet_config(tmp_path, redis_server, stable, candidate, share=0.5)
    a, b = await replicas(config), await replicas(config)
    async with aiohttp.ClientSession() as session:
        status, _ = await a.action(session, "models", "rollback", reason="bad scores")
        assert status == 200
        assert await eventually_state(session, b.admin_url, "rolled_back")
        redis_server.kill()

        # The data plane serves on the last known state.
        for i in range(40):
            assert await variant(session, (a, b)[i % 2].proxy_url, f"u{i}") == "stable"
        # Actions are refused quickly, with a reason, and change nothing.
        started = time.monotonic()
        status, body = await b.action(session, "models", "resume")
        assert time.monotonic() - started < 3
        assert (status, body["error"]) == (503, "state_unavailable"), body
        for replica in (a, b):
            assert (await replica.status(session))["state"]["healthy"] is False  # type: ignore[index]
            async with session.get(f"{replica.admin_url}/readyz") as response:
                assert response.status == 200
                assert (await response.json())["state_store"] == "unavailable"
            async with session.get(f"{replica.admin_url}/metrics") as response:
                assert "grayscale_state_store_healthy 0.0" in await response.text()
        # (time passing is the point: reconnection attempts, at least one a second, are
        # logged once per outage, not each time)
        await asyncio.sleep(2 * RECONNECT_EVERY + 0.2)
        for replica in (a, b):
            assert len(replica.logged("state store unavailable")) == 1, replica.lines

        # Redis comes back empty (a failover to a fresh instance): the replicas write back what
        # they knew, and the route stays rolled back everywhere, for a new replica too.
        redis_server.start()
        back = time.monotonic()
        for replica in (a, b):

            async def healthy(replica: Replica = replica) -> bool:
                return (await replica.status(session))["state"]["healthy"] is True  # type: ignore[index]

            assert await eventually(healthy, within=10, every=0.05)
            assert len(replica.logged("state store reachable again")) == 1
        # (reconnection is tried at least once a second: RECONNECT_EVERY, and a re-read)
        assert time.monotonic() - back < RECONNECT_EVERY + 1.5
        c = await replicas(config)
        for replica in (a, b, c):
            assert await state_of(session, replica.admin_url) == "rolled_back"
        assert [line for r in (a, b, c) for line in r.logged("ERROR")] == []


async def test_a_replica_started_or_reloaded_while_redis_is_down_serves_stable_until_it_answers(
    tmp_path, redis_server, upstreams, replicas: ReplicaFactory
):
    stable, candidate = upstreams
    config = fleet_config(tmp_path, redis_server, stable, candidate)
    redis_server.kill()
    replica = await replicas(config)
    async with aiohttp.ClientSession() as session:
        assert await variant(session, replica.proxy_url, "u1") == "stable"
        async with session.get(f"{replica.admin_url}/readyz") as response:
            assert (await response.json())["state_store"] == "unavailable"
        # A reload in the outage applies the new config; its rollouts wait for the store.
        config.write_text(config.read_text().replace("timeout: 10s", "timeout: 9s"))
        async with session.post(
            f"{replica.admin_url}/reload", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["result"] == "applied"
        assert await variant(session, replica.proxy_url, "u2") == "stable"

        redis_server.start()  # the rollout starts when the store answers, for the fleet
        assert await eventually_state(session, replica.admin_url, "complete")
        assert await variant(session, replica.proxy_url, "u1") == "candidate"
    assert replica.logged("ERROR") == []
