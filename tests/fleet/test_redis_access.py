"""Reaching a Redis that asks for a password, or speaks only TLS: the password comes from the
variable the config names and never shows in a log; a TLS server's certificate is checked
against `state.ca_file`. A replica that cannot get in serves on stable and says why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.support.configs import route_yaml
from tests.support.redis_server import MISSING, RedisServer
from tests.support.replicas import Replica, ReplicaFactory
from tests.support.tls import self_signed
from tests.support.upstream import url_of

PASSWORD = "redis-pw-5f0c9e2a7d"
VARIABLE = "GRAYSCALE_TEST_REDIS_PASSWORD"


def start(password: str | None = None, tls: tuple[Path, Path] | None = None) -> RedisServer:
    server = RedisServer.find(password, tls)
    if server is None:
        pytest.skip(MISSING)
    server.start()
    return server


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    server = start(password=PASSWORD)
    yield server
    server.kill()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    cert, key = self_signed(tmp_path)
    server = start(tls=(cert, key))
    yield server, cert
    server.kill()


def config(folder: Path, name: str, state: str, upstreams: tuple[TestServer, TestServer]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        f"state: {{backend: redis, key_prefix: t, {state}}}\n"
        "routes:\n" + route_yaml(url_of(upstreams[0]), url_of(upstreams[1]), share=1.0)
    )
    return path


async def served_by(session: aiohttp.ClientSession, replica: Replica) -> str:
    async with session.get(f"{replica.proxy_url}/echo", headers={"X-User-Id": "u1"}) as answer:
        assert answer.status == 200
        return str((await answer.json())["upstream"])


async def shut_out(session: aiohttp.ClientSession, replica: Replica) -> None:
    """The replica cannot reach its state: it serves on stable, says so, and refuses actions."""
    assert await served_by(session, replica) == "stable"
    async with session.get(f"{replica.admin_url}/readyz") as response:
        assert (await response.json())["state_store"] == "unavailable"
    status, body = await replica.action(session, "models", "pause")
    assert (status, body["error"]) == (503, "state_unavailable"), body


async def test_a_password_from_the_named_variable_and_never_in_a_log(
    tmp_path, locked_redis, upstreams, replicas: ReplicaFactory, monkeypatch
):
    path = config(
        tmp_path, "locked", f'url: "{locked_redis.url}", password_env: {VARIABLE}', upstreams
    )
    monkeypatch.setenv(VARIABLE, PASSWORD)
    inside = await replicas(path)
    monkeypatch.delenv(VARIABLE)
    outside = await replicas(path)
    async with aiohttp.ClientSession() as session:
        status, body = await inside.action(session, "models", "pause", reason="checking")
        assert (status, body["after"]) == (200, "paused"), body
        assert (await inside.status(session))["state"]["healthy"] is True  # type: ignore[index]
        assert await served_by(session, inside) == "candidate"

        await shut_out(session, outside)
        assert outside.logged(f"${VARIABLE} is not set")
        (outage,) = outside.logged("WARNING grayscale.state")  # one line for the outage
        assert "authenticate" in outage, outage
    assert not [line for r in (inside, outside) for line in r.lines if PASSWORD in line]


async def test_tls_with_the_servers_authority_from_ca_file(
    tmp_path, tls_redis, upstreams, replicas: ReplicaFactory
):
    server, authority = tls_redis
    assert server.url.startswith("rediss://")
    trusting = await replicas(
        config(tmp_path, "tls", f'url: "{server.url}", ca_file: {authority}', upstreams)
    )
    # Without the authority, the self-signed certificate is refused, as it must be.
    doubting = await replicas(config(tmp_path, "system", f'url: "{server.url}"', upstreams))
    async with aiohttp.ClientSession() as session:
        status, body = await trusting.action(session, "models", "pause")
        assert (status, body["after"]) == (200, "paused"), body
        assert (await trusting.status(session))["state"]["healthy"] is True  # type: ignore[index]

        await shut_out(session, doubting)
        (outage,) = doubting.logged("state store unavailable")
        assert "certificate verify failed" in outage, outage
