"""The admin API as an attacker or a careless setup would try it: reloads of its settings, DNS
rebinding, what it shows to whom, audit lines, hostile bodies."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest
from aiohttp.test_utils import TestServer

from proxy.api.access import token_id
from proxy.app.server import Server
from proxy.config.loader import load_config, parse_config
from tests.integration.conftest import route_yaml, url_of

TOKEN = "a-long-random-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin_token(monkeypatch):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)


def config(
    upstreams: tuple[TestServer, TestServer], admin: str = "{}", listen: str = "127.0.0.1:0"
) -> str:
    stable, candidate = upstreams
    return (
        f'server: {{listen: "127.0.0.1:0", admin_listen: "{listen}"}}\n'
        f"admin: {admin}\nstate: {{backend: memory}}\nroutes:\n"
        + route_yaml(url_of(stable), url_of(candidate))
    )


async def test_protect_reads_follows_the_reloaded_config(upstreams, client, tmp_path, admin_token):
    path = tmp_path / "grayscale.yaml"
    path.write_text(config(upstreams))
    server = Server(load_config(path))
    await server.start()
    try:
        async with client.get(server.admin_url + "/status") as resp:
            assert resp.status == 200
        path.write_text(config(upstreams, admin="{protect_reads: true}"))
        assert (await server.reload("test")).result == "applied"
        for url in (server.admin_url + "/status", server.admin_url + "/metrics"):
            async with client.get(url) as resp:
                assert resp.status == 401
            async with client.get(url, headers=AUTH) as resp:
                assert resp.status == 200
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("rebound.attacker.example", 403),  # a name that resolved to 127.0.0.1 a moment ago
        ("rebound.attacker.example:9901", 403),
        ("127.0.0.1:9901", 200),
        ("10.1.2.3", 200),
        ("[::1]:9901", 200),
        ("localhost:9901", 200),
        ("LOCALHOST", 200),
        ("grayscale-admin.internal:9901", 200),  # listed in admin.allowed_hosts
    ],
)
async def test_the_admin_api_answers_only_to_addresses_and_allowed_names(
    upstreams, start_proxy, client, host, status
):
    stable, candidate = upstreams
    proxy = await start_proxy(
        route_yaml(url_of(stable), url_of(candidate))
        + "admin: {allowed_hosts: [Grayscale-Admin.internal]}\n"
    )
    for path in ("/status", "/metrics"):
        async with client.get(proxy.admin_url + path, headers={"Host": host}) as resp:
            assert resp.status == status
    async with client.post(
        proxy.admin_url + "/routes/models/pause", headers={"Host": host}
    ) as resp:
        refused = (await resp.json())["error"]  # (no token is configured: refused either way)
        assert (refused == "host_not_allowed") == (status == 403)
    async with client.get(proxy.admin_url + "/healthz", headers={"Host": host}) as resp:
        assert resp.status == 200  # probes may send any Host


async def test_salts_are_shown_to_token_holders_only(proxy, client, admin_token):
    async with client.get(proxy.admin_url + "/status") as resp:
        assert "salt" not in (await resp.json())["routes"][0]["rollout"]
    proxy.admin.use(proxy.config, TOKEN)
    async with client.get(proxy.admin_url + "/status", headers=AUTH) as resp:
        assert (await resp.json())["routes"][0]["rollout"]["salt"] == "models-salt"


def test_the_audit_actor_is_a_keyed_hash_of_the_token():
    plain = "token:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
    assert token_id(TOKEN, b"key-1") == token_id(TOKEN, b"key-1")
    assert token_id(TOKEN, b"key-1") != token_id(TOKEN, b"key-2")
    assert not token_id(TOKEN, b"key-1").startswith(plain)


async def test_the_audit_actor_is_stable_with_the_deployments_secret(
    upstreams, client, admin_token, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_LOG_SECRET", "deployment-secret")
    server = Server(parse_config(config(upstreams)))
    await server.start()
    try:
        async with client.post(server.admin_url + "/routes/models/pause", headers=AUTH) as resp:
            assert (await resp.json())["actor"] == token_id(TOKEN, b"deployment-secret")
    finally:
        await server.stop()


async def test_a_reason_stays_one_line_and_bounded(proxy, client, admin_token, caplog):
    proxy.admin.use(proxy.config, TOKEN)
    url = proxy.admin_url + "/routes/models/pause"
    forged = "ok\n2026-11-30T00:00:00Z WARNING grayscale.audit: promote by token:root"
    with caplog.at_level(logging.INFO, logger="grayscale.audit"):
        async with client.post(url, headers=AUTH, json={"reason": forged}) as resp:
            assert resp.status == 200
            assert "\n" not in (await resp.json())["reason"]
    assert all("\n" not in record.getMessage() for record in caplog.records)
    long = {"reason": "x" * 501}
    async with client.post(
        proxy.admin_url + "/routes/models/resume", headers=AUTH, json=long
    ) as resp:
        assert resp.status == 400


async def test_a_deeply_nested_body_is_a_400(proxy, client, admin_token):
    proxy.admin.use(proxy.config, TOKEN)
    deep = '{"reason": "r", "x": ' + "[" * 20_000 + "]" * 20_000 + "}"  # deeper than Python goes
    async with client.post(
        proxy.admin_url + "/routes/models/pause",
        headers={**AUTH, "Content-Type": "application/json"},
        data=deep,
    ) as resp:
        assert resp.status == 400


async def test_risky_admin_setups_are_warned_about_at_start(upstreams, monkeypatch, caplog):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", "short")
    server = Server(parse_config(config(upstreams, listen="0.0.0.0:0")))
    with caplog.at_level(logging.WARNING, logger="grayscale.server"):
        await server.start()
        await server.stop()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "shorter than 32 characters" in text
    assert "/status and /metrics need no token" in text


async def test_an_oversized_header_is_refused_in_one_line_that_echoes_nothing(proxy, caplog):
    host, port = proxy.admin_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Secret: "
        + b"SECRETVALUE" * 2000
        + b"\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(100), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.0 400")
    assert "SECRETVALUE" not in caplog.text and "Traceback" not in caplog.text
