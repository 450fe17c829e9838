"""Helpers for tests of a fleet of `grayscale serve` replicas on one Redis: their configs, the
variant a user gets, the state and analysis each replica shows, and traffic spread over them."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from proxy.rollout.machine import Rollout
from proxy.rollout.store import Change
from tests.support.configs import route_yaml
from tests.support.redis_server import RedisServer
from tests.support.replicas import Replica
from tests.support.upstream import url_of
from tests.support.waiting import eventually

MIN_REQUESTS = 60  # the analysed fleet's min_requests


def fleet_config(
    folder: Path, redis: RedisServer, stable: TestServer, candidate: TestServer, share: float = 1.0
) -> Path:
    """One route at `share` between the upstreams, its state in `redis`."""
    path = folder / "fleet.yaml"
    path.write_text(
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        f'state: {{backend: redis, url: "{redis.url}", key_prefix: "t"}}\n'
        "routes:\n" + route_yaml(url_of(stable), url_of(candidate), share=share)
    )
    return path


def analysed_fleet(
    folder: Path,
    redis: RedisServer,
    upstreams: tuple[TestServer, TestServer],
    hook: str,
    **spec: str,
) -> Path:
    """One analysed route (every 500 ms, `MIN_REQUESTS`, rolled back after two failed
    verdicts, `spec` for more analysis fields) with a rollback webhook, its state in `redis`."""
    stable, candidate = upstreams
    analysis = {
        "interval": "500ms",
        "window": "30s",
        "min_requests": str(MIN_REQUESTS),
        "failures_before_rollback": "2",
        **spec,
    }
    path = folder / "fleet.yaml"
    path.write_text(
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        f'state: {{backend: redis, url: "{redis.url}", key_prefix: "t"}}\n'
        "routes:\n"
        + route_yaml(url_of(stable), url_of(candidate))
        + "    analysis: {"
        + ", ".join(f"{k}: {v}" for k, v in analysis.items())
        + "}\n    ejection: false\n"
        + f'    on_rollback: {{webhook: "{hook}", timeout: 2s}}\n'
    )
    return path


async def variant(session: aiohttp.ClientSession, proxy_url: str, user: str) -> str:
    """The upstream that answered `user`."""
    async with session.get(f"{proxy_url}/echo", headers={"X-User-Id": user}) as response:
        assert response.status == 200
        return str((await response.json())["upstream"])


async def state_of(session: aiohttp.ClientSession, admin_url: str) -> str:
    """The state of the replica's (first) route."""
    async with session.get(f"{admin_url}/status") as response:
        return str((await response.json())["routes"][0]["state"])


async def eventually_state(
    session: aiohttp.ClientSession, admin_url: str, state: str, within: float = 1.0
) -> bool:
    """Whether the replica's route shows `state` within `within` seconds."""

    async def shown() -> bool:
        return await state_of(session, admin_url) == state

    return await eventually(shown, within, every=0.01)


async def analysis_of(session: aiohttp.ClientSession, replica: Replica) -> dict[str, Any]:
    """The replica's view of its route's analysis, with the route's state and request counts."""
    route = (await replica.status(session))["routes"][0]  # type: ignore[index]
    return {**route["analysis"], "state": route["state"], "requests": route["requests"]}


async def spread(
    session: aiohttp.ClientSession, fleet: list[Replica], count: int, tag: str
) -> None:
    """`count` requests from distinct users, spread evenly over the replicas."""

    async def one(i: int) -> None:
        url = fleet[i % len(fleet)].proxy_url + "/v1/predict"
        async with session.get(url, headers={"X-User-Id": f"{tag}-{i}"}) as response:
            await response.read()

    for start in range(0, count, 10):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 10))))


async def acted(
    session: aiohttp.ClientSession, replica: Replica, action: str, seconds: float
) -> dict[str, object]:
    """The answer to `action` once it is taken (an action during a failover is refused with
    503 and changes nothing: an operator, or a script, tries again)."""
    body: dict[str, object] = {}
    for _ in range(int(seconds * 5)):
        status, body = await replica.action(session, "models", action)
        if status == 200:
            return body
        assert (status, body["error"]) == (503, "state_unavailable"), body
        await asyncio.sleep(0.2)  # (then tried again)
    raise AssertionError(f"{action} never taken: {body}")


def held_for(seconds: float) -> Change:
    """A change to a stored rollout: held for `seconds`."""

    def change(stored: Rollout | None) -> Rollout:
        assert stored is not None
        return replace(stored, held=seconds)

    return change
