"""`server.workers: N`: N processes serve the same ports, share their rollouts, report their
metrics as one, and are restarted when they die."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.support.configs import route_yaml
from tests.support.redis_server import RedisServer
from tests.support.replicas import TOKEN, Replica, ReplicaFactory
from tests.support.upstream import url_of
from tests.support.waiting import eventually, until


def workers_config(
    folder: Path, state: str, upstreams: tuple[TestServer, TestServer], share: float = 0.5
) -> Path:
    stable, candidate = upstreams
    path = folder / "workers.yaml"
    path.write_text(
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0", workers: 2}\n'
        f"state: {state}\n"
        "routes:\n" + route_yaml(url_of(stable), url_of(candidate), share=share)
    )
    return path


async def fresh(method: str, url: str, **kwargs: object) -> tuple[int, dict[str, object]]:
    """One request on a connection of its own (so that the kernel picks a worker anew)."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, **kwargs) as response,  # type: ignore[arg-type]
    ):
        return response.status, await response.json()


async def status_by_worker(replica: Replica, within: float = 5.0) -> dict[int, dict[str, object]]:
    """The `/status` of each worker (by process id), asked on fresh connections until both
    answered or `within` seconds passed (a worker may still be starting)."""
    seen: dict[int, dict[str, object]] = {}
    deadline = time.monotonic() + within
    while len(seen) < 2 and time.monotonic() < deadline:
        _, status = await fresh("GET", f"{replica.admin_url}/status")
        seen[status["worker"]["pid"]] = status  # type: ignore[index]
    return seen


@pytest.fixture(params=["file", "redis"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"{{path: {tmp_path / 'state.json'}}}"
    redis: RedisServer = request.getfixturevalue("redis_server")
    return f'{{backend: redis, url: "{redis.url}"}}'


async def test_two_workers_serve_one_port_and_a_rollback_reaches_both_within_a_second(
    tmp_path, state, upstreams, replicas: ReplicaFactory
):
    host = await replicas(workers_config(tmp_path, state, upstreams, share=1.0))
    workers = await status_by_worker(host)
    assert len(workers) == 2, "both workers answer on the shared admin port"
    status, body = await fresh(
        "POST",
        f"{host.admin_url}/routes/models/rollback",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 200, body

    async def applied_in_both() -> bool:
        workers = await status_by_worker(host)
        states = {w["routes"][0]["state"] for w in workers.values()}  # type: ignore[index]
        return len(workers) == 2 and states == {"rolled_back"}

    took = await until(applied_in_both, within=3)
    print(f"\nrollback applied in both workers after {took} s")
    assert took is not None and took < 1.0
    for i in range(30):
        _, answer = await fresh("GET", f"{host.proxy_url}/echo", headers={"X-User-Id": f"u{i}"})
        assert answer["upstream"] == "stable"


async def counted_by_both(host: Replica, sent: int) -> bool:
    """Whether each worker's `/status` counts the `sent` requests of the host (each worker
    shares its figures with the others once a second)."""
    workers = await status_by_worker(host)
    requests = [w["routes"][0]["requests"] for w in workers.values()]  # type: ignore[index]
    counts = [sum(sum(by_class.values()) for by_class in r.values()) for r in requests]
    return counts == [sent, sent]


async def test_metrics_count_every_request_once_whichever_worker_answers(
    tmp_path, redis_server, upstreams, replicas: ReplicaFactory
):
    state = f'{{backend: redis, url: "{redis_server.url}"}}'
    host = await replicas(workers_config(tmp_path, state, upstreams))
    sent = 120
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for i in range(sent):
            async with session.get(f"{host.proxy_url}/echo", headers={"X-User-Id": f"u{i}"}) as r:
                assert r.status == 200
    assert await eventually(lambda: counted_by_both(host, sent), within=5)
    totals = set()
    pids = set()
    for _ in range(10):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{host.admin_url}/metrics") as response,
        ):
            text = await response.text()
        counted = re.findall(
            r'^grayscale_requests_total\{[^}]*route="models"[^}]*\} (\S+)$', text, re.M
        )
        totals.add(sum(float(value) for value in counted))
        _, status = await fresh("GET", f"{host.admin_url}/status")
        pids.add(status["worker"]["pid"])  # type: ignore[index]
        requests = status["routes"][0]["requests"]  # type: ignore[index]
        assert sum(sum(by_class.values()) for by_class in requests.values()) == sent
    assert totals == {float(sent)}
    assert len(pids) == 2


async def test_a_worker_that_dies_is_restarted_and_its_counts_stay(
    tmp_path, upstreams, replicas: ReplicaFactory
):
    host = await replicas(workers_config(tmp_path, f"{{path: {tmp_path / 's.json'}}}", upstreams))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for i in range(40):
            async with session.get(f"{host.proxy_url}/echo", headers={"X-User-Id": f"u{i}"}):
                pass
    assert await eventually(lambda: counted_by_both(host, 40), within=5)
    victim = next(iter(await status_by_worker(host)))
    os.kill(victim, signal.SIGKILL)
    restarted = f"(pid {victim}) exited with status -9; starting it again"
    assert await eventually(lambda: host.logged(restarted), within=5)
    workers: dict[int, dict[str, object]] = {}

    async def replaced() -> bool:
        nonlocal workers
        workers = await status_by_worker(host, within=1)
        return len(workers) == 2 and victim not in workers

    assert await eventually(replaced, within=10, every=0.1), workers
    requests = next(iter(workers.values()))["routes"][0]["requests"]  # type: ignore[index]
    assert sum(sum(by_class.values()) for by_class in requests.values()) == 40


async def test_sighup_and_an_api_reload_reach_every_worker_and_sigterm_stops_them(
    tmp_path, upstreams, replicas: ReplicaFactory
):
    path = workers_config(tmp_path, f"{{path: {tmp_path / 's.json'}}}", upstreams)
    host = await replicas(path)
    before = {w["config"]["hash"] for w in (await status_by_worker(host)).values()}  # type: ignore[index]
    path.write_text(path.read_text().replace("ramp: {base: 0.5}", "ramp: {base: 0.25}"))
    status, _ = await fresh(
        "POST", f"{host.admin_url}/reload", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200
    hashes: set[object] = set()

    async def reloaded() -> bool:
        nonlocal hashes
        hashes = {w["config"]["hash"] for w in (await status_by_worker(host)).values()}  # type: ignore[index]
        return len(hashes) == 1 and hashes != before

    assert await eventually(reloaded, within=2), hashes
    signalled = time.time()
    host.process.send_signal(signal.SIGHUP)  # forwarded: each worker reloads (nothing new)

    async def reloaded_on_the_signal() -> bool:
        workers = await status_by_worker(host)
        last = [w["config"]["last_reload"] for w in workers.values()]  # type: ignore[index]
        return len(last) == 2 and all(
            r["trigger"] == "signal" and r["result"] == "unchanged" and r["at"] >= signalled
            for r in last
        )

    assert await eventually(reloaded_on_the_signal, within=5)
    host.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(host.process.wait(), 15) == 0
    assert len(host.logged("grayscale.server: stopped")) == 2  # each worker drained, stopped
    assert host.logged("every worker stopped")
