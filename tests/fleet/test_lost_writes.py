"""A fleet never loses or inverts a decision when its Redis does: a store restored from an older
snapshot, or failed over with writes lost, holds older records, and no replica adopts them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.fleet import eventually_state, fleet_config, state_of, variant
from tests.support.redis_server import MISSING, RedisServer
from tests.support.replicas import ReplicaFactory


@pytest.fixture
def saving_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that loads its last snapshot (`save`) when started again."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer.find(folder=folder)
    if server is None:
        pytest.skip(MISSING)
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_a_redis_restored_from_an_older_snapshot_undoes_no_pause_or_rollback(
    tmp_path, saving_redis, upstreams, replicas: ReplicaFactory
):
    stable, candidate = upstreams
    config = fleet_config(tmp_path, saving_redis, stable, candidate, share=0.5)
    a, b = await replicas(config), await replicas(config)
    async with aiohttp.ClientSession() as session:
        saving_redis.save()  # the snapshot: ramping at 50 %
        assert (await a.action(session, "models", "pause"))[0] == 200
        status, body = await a.action(session, "models", "rollback", reason="bad scores")
        assert status == 200 and body["persisted"] is True, body
        assert await eventually_state(session, b.admin_url, "rolled_back")

        saving_redis.kill()
        saving_redis.start()  # from the snapshot: the record says ramping, two changes ago
        users = [f"user-{i}" for i in range(40)]
        for _ in range(15):  # 1.5 s: every re-read and reconnection of both replicas
            for replica in (a, b):
                assert await state_of(session, replica.admin_url) == "rolled_back"
                for user in users[:8]:
                    assert await variant(session, replica.proxy_url, user) == "stable"
            await asyncio.sleep(0.1)
        # The newer record was written back: a replica that starts now reads the rollback.
        c = await replicas(config)
        assert await state_of(session, c.admin_url) == "rolled_back"
        assert {await variant(session, c.proxy_url, user) for user in users} == {"stable"}
        warned = [line for r in (a, b) for line in r.logged("is older (revision")]
        assert warned and all("WARNING" in line and "rolled_back" in line for line in warned)
        assert "revision 1, ramping" in warned[0], warned  # (the snapshot's, and ours after it)
        assert [line for r in (a, b, c) for line in r.logged("ERROR")] == []
