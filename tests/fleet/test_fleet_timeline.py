"""In a fleet, every replica's `GET /routes/{name}/timeline` shows the decider's rounds, judged
on the fleet's pooled observations: a replica that does not decide keeps the points the decider
publishes."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.fleet.conftest import Replica, ReplicaFactory
from tests.fleet.test_fleet_analysis import MIN_REQUESTS, analysed_fleet, spread, until
from tests.integration.conftest import upstreams, webhook

__all__ = ["upstreams", "webhook"]


async def timeline(session: aiohttp.ClientSession, replica: Replica) -> dict[str, Any]:
    async with session.get(f"{replica.admin_url}/routes/models/timeline") as answer:
        assert answer.status == 200
        found: dict[str, Any] = await answer.json()
        return found


async def test_a_replica_that_does_not_decide_shows_the_deciders_rounds(
    tmp_path, redis_server, upstreams, webhook, replicas: ReplicaFactory
):
    hook, _ = webhook
    config = analysed_fleet(
        tmp_path, redis_server, upstreams, hook, method="fixed", interval="300ms"
    )
    fleet = [await replicas(config) for _ in range(2)]
    async with aiohttp.ClientSession() as session:
        await spread(session, fleet, 3 * MIN_REQUESTS, "u")
        total = 3 * MIN_REQUESTS

        async def pooled_on_both() -> bool:
            # a round of the decider that saw every request, on each replica
            for replica in fleet:
                points = (await timeline(session, replica))["points"]
                if not any(
                    p["stable"] and p["stable"]["requests"] + p["candidate"]["requests"] == total
                    for p in points
                ):
                    return False
            return True

        assert await until(pooled_on_both, 10) is not None
        routes = [(await r.status(session))["routes"][0] for r in fleet]  # type: ignore[index]
        deciding = [route["analysis"]["this_replica_decides"] for route in routes]
        assert sorted(deciding) == [False, True]
        decider, follower = (fleet[0], fleet[1]) if deciding[0] else (fleet[1], fleet[0])
        theirs = {p["at"]: p for p in (await timeline(session, follower))["points"]}
        ours = {p["at"]: p for p in (await timeline(session, decider))["points"]}
        shared = set(theirs) & set(ours)
        assert shared and all(theirs[at] == ours[at] for at in shared)
        judged = [theirs[at] for at in sorted(shared) if theirs[at]["stable"]]
        assert judged and all(p["candidate"]["latency_seconds"] > 0 for p in judged[-1:])
