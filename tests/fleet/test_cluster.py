"""The fleet on a Redis Cluster (three masters on loopback, one of them with a replica): every
script and transaction stays in one route's slot, reads of many routes span the masters, a
durable change waits on the master that took it, and a fleet of replicas decides there as on
one Redis."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import aiohttp
import pytest
import redis
from aiohttp.test_utils import TestServer

from proxy.analysis.window import LocalObservations
from proxy.fleet import decider as decider_module
from proxy.fleet.decider import Decider
from proxy.fleet.observations import PooledObservations
from proxy.fleet.redis_connection import connect_cluster
from proxy.rollout.machine import Rollout
from proxy.rollout.redis_store import RedisStore, replicas
from proxy.rollout.store import Change, Fence, LeaseLost, NotReplicated
from tests.support.configs import route_yaml
from tests.support.fleet import analysis_of, held_for, spread
from tests.support.redis_server import MISSING, ClusterSet
from tests.support.replicas import ReplicaFactory
from tests.support.rollouts import T0
from tests.support.upstream import PROBE, url_of
from tests.support.waiting import until


@pytest.fixture(scope="module")
def cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    """One cluster for the module's tests (it takes 2 s to form)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(MISSING)
    nodes = ClusterSet(binary, tmp_path_factory.mktemp("cluster"))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.kill()


@pytest.fixture
def cluster(cluster_nodes: ClusterSet) -> ClusterSet:
    """The module's cluster, emptied: each test starts from nothing."""
    for master in cluster_nodes.masters:
        with redis.Redis(port=master.port) as client:
            client.flushall()
    return cluster_nodes


def one_route_per_master(cluster: ClusterSet) -> list[str]:
    """A route name whose keys (hash tag `{name}`) are on each master, in the masters' order."""
    return [
        next(f"r{i}" for i in count() if cluster.master_of(f"{{r{i}}}") is master)
        for master in cluster.masters
    ]


def started(seconds: float) -> Change:
    def change(stored: Rollout | None) -> Rollout:
        return Rollout("id", started_at=T0 + seconds)

    return change


async def test_records_leases_and_counts_span_the_masters_each_route_in_its_slot(
    cluster, monkeypatch
):
    monkeypatch.setattr(decider_module, "LEASE", 1.5)  # (a lease to see lapse: shorter)
    client = connect_cluster(cluster.url)
    replicated, alone, third = routes = one_route_per_master(cluster)
    store = RedisStore(client, "t")
    try:
        for i, route in enumerate(routes):  # (a script per route: CROSSSLOT if it were not)
            await store.change(route, "id", started(i))
        loaded = await store.load(dict.fromkeys(routes, "id"))  # one read over three masters
        assert {route: r.started_at for route, r in loaded.items()} == {
            route: T0 + i for i, route in enumerate(routes)
        }
        assert await replicas(client) == 0  # (the fewest of any master: a durable change
        # then waits for none unless told to)
        # A durable change waits on the master that took it: that one has a replica.
        store.min_replicas_ack = 1
        held = await store.change(replicated, "id", held_for(1.0), durable=True)
        assert held.held == 1.0
        with pytest.raises(NotReplicated, match="acknowledged by 0 of 1 replicas"):
            await store.change(alone, "id", held_for(1.0), durable=True)

        # The decider's lease, and its claim beside each route it changes.
        a, b = Decider(client, "t", "a"), Decider(client, "t", "b")
        assert await a.attempt() and not await b.attempt()
        fence = await a.fence(third)
        assert fence is not None and fence.key.endswith(f":{{{third}}}")
        assert (await store.change(third, "id", held_for(2.0), fence)).held == 2.0
        assert await a.publish(third, {"result": "pass"}, 10)
        assert (await b.latest(third) or {}).get("decider") == "a"
        with pytest.raises(LeaseLost):  # (a token that is not the claim's)
            await store.change(third, "id", held_for(3.0), Fence(fence.key, "b#0"))

        # Claims expire with the lease they copy: a stopped decider's lapse, and its
        # successor claims each route anew before it changes it.
        async def lapsed() -> bool:
            return await client.get(fence.key) is None

        assert await until(lapsed, within=decider_module.LEASE + 2, every=0.05) is not None
        assert await b.attempt()
        assert await a.publish(third, {"result": "fail"}, 10) is False
        fence_b = await b.fence(third)
        assert fence_b is not None and await client.get(fence_b.key) == fence_b.token.encode()
        with pytest.raises(LeaseLost):
            await store.change(third, "id", held_for(3.0), fence)

        # Counts pooled per route, each route's in one transaction on its own master.
        local = LocalObservations(dict.fromkeys(routes, 60.0))
        pool = PooledObservations(local, client, "t")
        for i, route in enumerate(routes):
            for variant in ("stable", "candidate"):
                for _ in range(i + 1):
                    local.windows[route][variant].add(T0, 1.0, False, 0.02)
        assert await pool.flush(T0) == 6
        for i, route in enumerate(routes):
            stable, candidate = await pool.samples(route, T0 + 1)
            assert (stable.requests, candidate.requests) == (i + 1, i + 1)
        await b.stop()
    finally:
        await store.close()
        await client.aclose()


def cluster_fleet(
    folder: Path, cluster: ClusterSet, upstreams: tuple[TestServer, TestServer], hook: str
) -> Path:
    stable, candidate = upstreams
    first, second, _ = one_route_per_master(cluster)
    path = folder / "fleet.yaml"
    path.write_text(
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        f'state: {{backend: redis, cluster: true, url: "{cluster.url}", key_prefix: "t"}}\n'
        "routes:\n"
        + route_yaml(url_of(stable), url_of(candidate), name=first, prefix="/v1/")
        + "    analysis: {interval: 500ms, window: 30s, min_requests: 60, "
        "failures_before_rollback: 2}\n    ejection: false\n"
        + f'    on_rollback: {{webhook: "{hook}", timeout: 2s}}\n'
        + route_yaml(url_of(stable), url_of(candidate), name=second, prefix="/v2/")
    )
    return path


async def test_a_fleet_on_a_cluster_rolls_back_once_and_shares_an_operators_pause(
    tmp_path, cluster, upstreams, webhook, replicas: ReplicaFactory
):
    hook, received = webhook
    upstreams[1].app[PROBE].error_rate = 0.5
    first, second, _ = one_route_per_master(cluster)
    config = cluster_fleet(tmp_path, cluster, upstreams, hook)
    fleet = [await replicas(config) for _ in range(2)]
    async with aiohttp.ClientSession() as session:
        assert (await fleet[0].action(session, second, "pause"))[0] == 200
        await spread(session, fleet, 150, "u")

        async def settled() -> bool:
            views = [(await r.status(session))["routes"] for r in fleet]
            states = [{v["name"]: v["state"] for v in view} for view in views]  # type: ignore
            return states == [{first: "rolled_back", second: "paused"}] * 2

        took = await until(settled, 10)
        assert took is not None, [await r.status(session) for r in fleet]
        await asyncio.sleep(1)  # (an absence: time for any second webhook to show up)
        assert len(received) == 1 and received[0]["route"] == first, received
        views = [await analysis_of(session, r) for r in fleet]
        assert {view["decided_by"] for view in views} == {views[0]["decider"]}
        assert all(view["action"] == "rollback" for view in views), views
        assert all(r.logged("ERROR") == [] for r in fleet)
