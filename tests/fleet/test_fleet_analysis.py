"""Replicas that each see too little to judge a candidate judge it together: one decider, on
the fleet's pooled observations, rolls back once (one webhook); when it dies, another takes
over and carries on."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from proxy.fleet.decider import LEASE
from tests.support.fleet import MIN_REQUESTS, analysed_fleet, analysis_of, spread, variant
from tests.support.replicas import Replica, ReplicaFactory
from tests.support.upstream import PROBE
from tests.support.waiting import eventually, until

# (MIN_REQUESTS, analysed_fleet, spread and until are still imported from here by
# test_fleet_timeline.py: they live in tests/support)
__all__ = ["MIN_REQUESTS", "analysed_fleet", "spread", "until"]


async def deciding_on_failures(
    session: aiohttp.ClientSession, fleet: list[Replica]
) -> tuple[dict[str, Any], Replica]:
    """Send traffic to a fleet whose candidate fails, until its decider has counted two failed
    verdicts: the analysis view then, and the replica that decides."""
    await spread(session, fleet, 3 * MIN_REQUESTS, "u")

    async def failing() -> bool:
        return bool((await analysis_of(session, fleet[0]))["consecutive_failures"] >= 2)

    assert await until(failing, 10) is not None
    view = await analysis_of(session, fleet[0])
    (decider,) = [r for r in fleet if view["decider"].endswith(f":{r.process.pid}")]
    return view, decider


async def test_replicas_that_each_see_too_little_roll_back_together_with_one_webhook(
    tmp_path, redis_server, upstreams, webhook, replicas: ReplicaFactory
):
    hook, received = webhook
    upstreams[1].app[PROBE].error_rate = 0.5
    config = analysed_fleet(tmp_path, redis_server, upstreams, hook)
    fleet = [await replicas(config) for _ in range(3)]
    async with aiohttp.ClientSession() as session:
        await spread(session, fleet, 2 * MIN_REQUESTS + MIN_REQUESTS // 2, "u")

        async def all_rolled_back() -> bool:
            states = [(await analysis_of(session, r))["state"] for r in fleet]
            return states == ["rolled_back"] * 3

        took = await until(all_rolled_back, 10)
        assert took is not None, [await analysis_of(session, r) for r in fleet]
        print(f"\npooled analysis rolled the fleet back {took:.2f} s after the traffic")
        await asyncio.sleep(2)  # (an absence: time for any second webhook to show up)
        assert len(received) == 1, received
        views = [await analysis_of(session, r) for r in fleet]
        for view in views:
            # Each replica alone saw fewer than min_requests of each variant...
            assert all(sum(counts.values()) < MIN_REQUESTS for counts in view["requests"].values())
        # ...and every replica shows the verdict that did it, and who decided it.
        deciders = {view["decided_by"] for view in views}
        assert len(deciders) == 1 and None not in deciders
        assert sum(view["this_replica_decides"] for view in views) == 1
        assert all(view["last_verdict"]["result"] == "fail" for view in views)
        # (the verdict that did it, with its action: `explain` on any replica says why)
        assert all(view["action"] == "rollback" for view in views), views
        # The error rate is judged on the fleet's requests, the sample ratio on the decider's own
        # (a user's requests spread over replicas must not count once per replica; the verdict
        # may have come before the last requests, hence at most).
        (decider,) = [view for view in views if view["this_replica_decides"]]
        checks = {c["check"]: c for c in decider["last_verdict"]["checks"]}
        pooled = sum(checks["error_rate"][v]["requests"] for v in ("stable", "candidate"))
        own = sum(sum(counts.values()) for counts in decider["requests"].values())
        ratio = checks["sample_ratio"]
        assert 0 < ratio["stable"]["assigned"] + ratio["candidate"]["assigned"] <= own < pooled
        # Every replica shows the counts the decider judged, pooled: not its own share of them.
        counts = [view["counts"] for view in views]
        assert all(c == counts[0] for c in counts) and counts[0]["pooled"], counts
        assert sum(counts[0][v]["requests"] for v in ("stable", "candidate")) == pooled
        assert received[0]["route"] == "models"
        assert all(r.logged("ERROR") == [] for r in fleet)


@pytest.mark.slow  # (a lease lapses, then the count goes on: about 10 s)
@pytest.mark.timeout(120)
async def test_when_the_decider_dies_mid_analysis_another_takes_over_and_finishes_it(
    tmp_path, redis_server, upstreams, webhook, replicas: ReplicaFactory
):
    hook, received = webhook
    upstreams[1].app[PROBE].error_rate = 0.5
    config = analysed_fleet(tmp_path, redis_server, upstreams, hook, failures_before_rollback="8")
    fleet = [await replicas(config) for _ in range(3)]
    async with aiohttp.ClientSession() as session:
        view, decider = await deciding_on_failures(session, fleet)
        decider.process.kill()
        killed_at = time.monotonic()
        survivors = [r for r in fleet if r is not decider]

        async def taken_over() -> bool:
            views = [await analysis_of(session, r) for r in survivors]
            return any(v["this_replica_decides"] for v in views)

        took = await until(taken_over, LEASE + 3)
        assert took is not None
        print(f"\nanother replica decides {time.monotonic() - killed_at:.2f} s after the kill")
        assert took <= LEASE + 0.3  # within one lease of the last renewal, before the kill

        async def decided_anew() -> bool:
            return bool((await analysis_of(session, survivors[0]))["decided_by"] != view["decider"])

        assert await until(decided_anew, 3) is not None
        # The new decider carries on the count rather than starting from nothing.
        assert (await analysis_of(session, survivors[0]))["consecutive_failures"] > view[
            "consecutive_failures"
        ]

        async def rolled_back() -> bool:
            views = [await analysis_of(session, r) for r in survivors]
            return all(v["state"] == "rolled_back" for v in views)

        assert await until(rolled_back, 12) is not None  # the count went on past the takeover
        await asyncio.sleep(1)  # (an absence: time for any second webhook to show up)
        assert len(received) == 1, received


@pytest.mark.slow  # (a lease lapses, then a woken replica is watched: about 10 s)
@pytest.mark.timeout(120)
async def test_a_decider_stopped_past_its_lease_publishes_and_changes_nothing_when_it_wakes(
    tmp_path, redis_server, upstreams, webhook, replicas: ReplicaFactory
):
    # SIGSTOP the decider mid-analysis: the other replica takes over and rolls back. When the
    # stopped one wakes, its analysis round is due at once, with its lease long gone: it must
    # neither publish its stale verdict over the new decider's nor act on it.
    hook, received = webhook
    upstreams[1].app[PROBE].error_rate = 0.5
    config = analysed_fleet(tmp_path, redis_server, upstreams, hook, failures_before_rollback="6")
    fleet = [await replicas(config) for _ in range(2)]
    async with aiohttp.ClientSession() as session:
        view, stopped = await deciding_on_failures(session, fleet)
        (other,) = [r for r in fleet if r is not stopped]
        stopped.process.send_signal(signal.SIGSTOP)
        try:

            async def rolled_back() -> bool:
                return bool((await analysis_of(session, other))["state"] == "rolled_back")

            assert await until(rolled_back, LEASE + 8) is not None
            taken = await analysis_of(session, other)
            assert taken["this_replica_decides"] and taken["decided_by"] != view["decider"]
        finally:
            woken = len(stopped.lines)
            stopped.process.send_signal(signal.SIGCONT)
        for _ in range(20):  # 2 s: several of the woken replica's rounds
            await asyncio.sleep(0.1)
            assert (await analysis_of(session, other))["decided_by"] == taken["decided_by"]
        late = [line for line in stopped.lines[woken:] if "verdict " in line]
        assert late == [], late  # (not judged, not published, not acted on)
        assert (await analysis_of(session, stopped))["state"] == "rolled_back"
        assert not (await analysis_of(session, stopped))["this_replica_decides"]
        assert len(received) == 1, received
        assert all(r.logged("ERROR") == [] for r in fleet)


async def test_a_redis_out_of_memory_passes_nothing_and_loses_no_rollback(
    tmp_path, redis_server, upstreams, webhook, replicas: ReplicaFactory
):
    # `maxmemory` reached under `noeviction`: every write is refused, reads still answer. The
    # observations stop pooling, so nothing may be judged on the frozen counts; an operator's
    # rollback takes effect at once where it was asked, and reaches the fleet once Redis takes
    # writes again.
    hook, _ = webhook
    config = analysed_fleet(tmp_path, redis_server, upstreams, hook, failures_before_rollback="50")
    fleet = list(await asyncio.gather(*(replicas(config) for _ in range(2))))
    redis = Redis.from_url(redis_server.url)
    async with aiohttp.ClientSession() as session:
        try:
            await spread(session, fleet, 2 * MIN_REQUESTS, "before")
            await redis.config_set("maxmemory", "1")
            full = [len(r.lines) for r in fleet]
            upstreams[1].app[PROBE].error_rate = 0.3
            await spread(session, fleet, 2 * MIN_REQUESTS, "during")

            async def unhealthy() -> bool:
                states = [(await r.status(session))["state"] for r in fleet]
                return not any(state["healthy"] for state in states)  # type: ignore[index]

            assert await eventually(unhealthy, within=5)  # (their flushes failed)
            await asyncio.sleep(1.0)  # (time passing: analysis rounds, every 500 ms, come and go)
            for replica in fleet:
                async with session.get(f"{replica.admin_url}/readyz") as response:
                    assert (await response.json())["state_store"] == "unavailable"
                state = (await replica.status(session))["state"]
                assert state["healthy"] is False, state  # type: ignore[index]
                async with session.get(f"{replica.admin_url}/metrics") as response:
                    assert "grayscale_state_store_healthy 0.0" in await response.text()
            later = [line for r, n in zip(fleet, full, strict=True) for line in r.lines[n:]]
            judged = [line for line in later if "verdict " in line]
            assert not [line for line in judged if "verdict pass" in line], judged
            status, body = await fleet[0].action(session, "models", "rollback", reason="by hand")
            assert (status, body["persisted"]) == (500, False), body
            assert "recorded as soon as the store takes it" in str(body["message"])
            users = [f"v{i}" for i in range(20)]
            assert {await variant(session, fleet[0].proxy_url, u) for u in users} == {"stable"}
            assert (await analysis_of(session, fleet[0]))["state"] == "rolled_back"

            await redis.config_set("maxmemory", "0")

            async def everywhere() -> bool:
                views = [await analysis_of(session, r) for r in fleet]
                return all(v["state"] == "rolled_back" for v in views)

            took = await until(everywhere, 5)
            assert took is not None
            print(f"\nthe rollback reached the fleet {took:.2f} s after Redis took writes again")

            async def healthy() -> bool:
                states = [(await r.status(session))["state"] for r in fleet]
                return all(state["healthy"] for state in states)  # type: ignore[index]

            assert await until(healthy, 3) is not None  # (the next flush, re-read or write)
        finally:
            await redis.config_set("maxmemory", "0")
            await redis.aclose()
    assert all(r.logged("ERROR") == [] for r in fleet)
