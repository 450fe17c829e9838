"""Faults injected into real upstreams and the state store while traffic runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app.server import Server
from proxy.config.loader import parse_config
from proxy.rollout.machine import State
from tests.support.configs import route_yaml
from tests.support.ports import free_port
from tests.support.upstream import PROBE, build_upstream, url_of
from tests.support.waiting import eventually

TOKEN = "chaos-token"


def server_text(routes: str, state: str = "{backend: memory}", server: str = "") -> str:
    return (
        f'server: {{listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"{server}}}\n'
        f"state: {state}\nroutes:\n{routes}"
    )


Outcome = tuple[str, int, str | None, str | None]


async def users_on(client: aiohttp.ClientSession, base: str, users: list[str]) -> list[Outcome]:
    """(user, status, variant, fallback header) of one request per user."""
    found = []
    for uid in users:
        async with client.get(base + "/v1/p", headers={"X-User-Id": uid}) as resp:
            await resp.read()
            found.append(
                (
                    uid,
                    resp.status,
                    resp.headers.get("X-Grayscale-Variant"),
                    resp.headers.get("X-Grayscale-Fallback"),
                )
            )
    return found


async def test_unreachable_candidate_costs_no_client_an_error(upstreams, start_proxy, client):
    stable, _ = upstreams
    dead = f"http://127.0.0.1:{free_port()}"
    routes = route_yaml(url_of(stable), dead, share=0.5, extra="    ejection: false\n")
    proxy = await start_proxy(routes)
    results = await users_on(client, proxy.proxy_url, [f"u{i}" for i in range(200)])
    assert all(status == 200 and variant == "stable" for _, status, variant, _ in results)
    fell_back = [r for r in results if r[3] == "connect"]
    assert 60 < len(fell_back) < 140  # the candidate's half, served by stable


async def test_killed_candidate_users_are_served_by_stable_within_one_request(client):
    stable = TestServer(build_upstream("stable"), host="127.0.0.1")
    candidate = TestServer(build_upstream("candidate"), host="127.0.0.1")
    await stable.start_server()
    await candidate.start_server()
    server = Server(parse_config(server_text(route_yaml(url_of(stable), url_of(candidate)))))
    await server.start()
    try:
        before = await users_on(client, server.proxy_url, [f"u{i}" for i in range(100)])
        on_candidate = [uid for uid, _, variant, _ in before if variant == "candidate"]
        assert on_candidate
        answered = candidate.app[PROBE].requests
        load = asyncio.create_task(
            users_on(client, server.proxy_url, [f"bg{i}" for i in range(300)])
        )
        # (the load is under way: the candidate answered some of it)
        assert await eventually(lambda: candidate.app[PROBE].requests > answered + 5, within=5)
        await candidate.close()  # killed mid-run
        after = await users_on(client, server.proxy_url, on_candidate)
        # Unreachable at first, then ejected after five connect errors: stable answers either way.
        assert all(
            s == 200 and v == "stable" and f in ("connect", "ejected") for _, s, v, f in after
        ), after
        background = await load
        assert sum(status != 200 for _, status, _, _ in background) <= 2  # only those cut off
    finally:
        await server.stop()
        await stable.close()


async def test_failing_candidate_is_ejected_with_growing_back_off(upstreams, client):
    stable, candidate = upstreams
    candidate.app[PROBE].error_rate = 1.0
    routes = route_yaml(url_of(stable), url_of(candidate), share=1.0) + (
        "    ejection: {consecutive_errors: 3, base_time: 500ms, max_time: 10s}\n"
    )
    server = Server(parse_config(server_text(routes)))
    await server.start()
    try:
        results = await users_on(client, server.proxy_url, [f"u{i}" for i in range(8)])
        assert [s for _, s, _, _ in results[:3]] == [500, 500, 500]
        assert [(s, v, f) for _, s, v, f in results[3:]] == [(200, "stable", "ejected")] * 5
        async with client.get(server.admin_url + "/status") as resp:
            ejection = (await resp.json())["routes"][0]["ejection"]
        assert ejection["ejected"] and ejection["ejections"] == 1
        async with client.get(server.admin_url + "/metrics") as resp:
            assert 'grayscale_candidate_ejected{route="models"} 1.0' in await resp.text()
        breaker = server.gateway.breaker("models")
        assert breaker is not None
        # (the first ejection lasts 0.5 s; then the candidate gets a chance)
        assert await eventually(lambda: not breaker.ejected(time.time()), within=2)
        again = await users_on(client, server.proxy_url, ["a", "b", "c", "d"])
        assert [s for _, s, _, _ in again[:3]] == [500, 500, 500]
        assert breaker.ejections == 2
        assert breaker.until - time.time() > 0.7  # the second ejection lasts twice as long
    finally:
        await server.stop()


async def test_5xx_is_replayed_on_stable_for_safe_bodiless_requests(upstreams, start_proxy, client):
    stable, candidate = upstreams
    candidate.app[PROBE].error_rate = 1.0
    routes = route_yaml(url_of(stable), url_of(candidate), share=1.0) + (
        "    fallback: on_connect_error_or_5xx\n    ejection: false\n"
    )
    proxy = await start_proxy(routes)
    async with client.get(proxy.proxy_url + "/x", headers={"X-User-Id": "u"}) as resp:
        assert (resp.status, resp.headers["X-Grayscale-Fallback"]) == (200, "5xx")
        assert (await resp.json())["upstream"] == "stable"
    async with client.post(proxy.proxy_url + "/x", headers={"X-User-Id": "u"}, data=b"{}") as r:
        assert r.status == 500  # a POST may have had effects: never replayed


async def test_connection_limits_refuse_with_503_beyond_the_queue(upstreams, start_proxy, client):
    stable, candidate = upstreams
    stable.app[PROBE].delay = 0.5
    routes = route_yaml(url_of(stable), url_of(candidate), share=0.0).replace(
        "timeout: 10s, connect_timeout: 1s}",
        "timeout: 10s, connect_timeout: 1s, max_connections: 2, max_pending: 1}",
        1,
    )
    proxy = await start_proxy(routes)

    async def one() -> int:
        async with client.get(proxy.proxy_url + "/x") as resp:
            await resp.read()
            return int(resp.status)

    statuses = await asyncio.gather(*(one() for _ in range(6)))
    assert sorted(statuses) == [200, 200, 200, 503, 503, 503]


async def test_a_candidate_out_of_slots_is_not_ejected(upstreams, start_proxy, client):
    # Overload is the proxy's own answer, not the candidate's failure: a flood that fills the
    # candidate's queue must not eject it and move all its traffic onto stable (the analysis
    # side: tests/unit/test_observers.py).
    stable, candidate = upstreams
    candidate.app[PROBE].delay = 0.3
    routes = route_yaml(url_of(stable), url_of(candidate), share=1.0).replace(
        f'candidate: {{url: "{url_of(candidate)}", timeout: 10s, connect_timeout: 1s}}',
        f'candidate: {{url: "{url_of(candidate)}", timeout: 10s, connect_timeout: 1s, '
        "max_connections: 2, max_pending: 0}",
        1,
    ) + ("    fallback: never\n    ejection: {consecutive_errors: 3, base_time: 30s}\n")
    proxy = await start_proxy(routes)

    async def one(user: str) -> int:
        async with client.get(proxy.proxy_url + "/x", headers={"X-User-Id": user}) as resp:
            await resp.read()
            return int(resp.status)

    statuses = await asyncio.gather(*(one(f"u{i}") for i in range(12)))
    assert sorted(statuses) == [200] * 2 + [503] * 10
    breaker = proxy.gateway.breaker("models")
    assert breaker is not None and not breaker.ejected(time.time()) and breaker.ejections == 0
    async with client.get(proxy.proxy_url + "/x", headers={"X-User-Id": "after"}) as resp:
        assert (resp.status, resp.headers["X-Grayscale-Variant"]) == (200, "candidate")


async def test_idle_and_first_byte_timeouts(upstreams, start_proxy, client):
    stable, candidate = upstreams
    routes = route_yaml(url_of(stable), url_of(candidate), share=0.0).replace(
        "timeout: 10s, connect_timeout: 1s}",
        "timeout: 10s, connect_timeout: 1s, first_byte_timeout: 300ms, idle_timeout: 300ms}",
        1,
    )
    proxy = await start_proxy(routes)
    async with client.get(proxy.proxy_url + "/slow/2") as resp:
        assert resp.status == 504
    async with client.get(proxy.proxy_url + "/ticks/0.3?every=0.05") as resp:
        assert resp.status == 200  # steady events: never idle for long
        assert (await resp.read()).endswith(b"[DONE]\n\n")
    async with client.get(proxy.proxy_url + "/ticks/2?every=1") as resp:
        try:
            await resp.read()
            raise AssertionError("an idle stream must be cut")
        except aiohttp.ClientPayloadError:
            pass


async def test_oversized_bodies_are_refused_before_the_upstream(upstreams, start_proxy, client):
    stable, candidate = upstreams
    proxy = await start_proxy(
        route_yaml(url_of(stable), url_of(candidate)), ", max_body_bytes: 1000"
    )
    async with client.post(proxy.proxy_url + "/x", data=b"x" * 1001) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "request_body_too_large"
    assert stable.app[PROBE].requests == candidate.app[PROBE].requests == 0

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 500

    async with client.post(proxy.proxy_url + "/x", data=chunked()) as resp:
        assert resp.status == 413
    async with client.post(proxy.proxy_url + "/x", data=b"x" * 1000) as resp:
        assert resp.status == 200


def raw_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


async def test_malformed_requests_get_4xx_and_no_traceback(proxy):
    port = int(proxy.proxy_url.rsplit(":", 1)[1])
    for payload in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    ):
        answer = await asyncio.to_thread(raw_exchange, port, payload)
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:200]
        assert b"Traceback" not in answer


@pytest.mark.logs_errors("rollout state is corrupt")
async def test_unreadable_state_starts_everything_rolled_back_and_says_so(
    upstreams, client, tmp_path, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    stable, candidate = upstreams
    state = tmp_path / "state.json"
    state.write_text('{"version": 1, "rollouts": {"models": {"identity": ')
    text = server_text(
        route_yaml(url_of(stable), url_of(candidate), share=1.0), state=f"{{path: {state}}}"
    )
    server = Server(parse_config(text))
    await server.start()
    try:
        assert server.controller.state("models", time.time()) is State.ROLLED_BACK
        results = await users_on(client, server.proxy_url, ["a", "b", "c"])
        assert {v for _, _, v, _ in results} == {"stable"}
        async with client.get(server.admin_url + "/status") as resp:
            status = await resp.json()
        assert "rollout state is corrupt" in status["state"]["unreadable_at_start"]
        aside = list(tmp_path.glob("state.json.unreadable-*"))
        assert len(aside) == 1 and aside[0].read_text().startswith('{"version": 1')
        assert status["routes"][0]["last_transition"]["actor"] == "system"
        # An explicit choice by an operator turns the candidate back on.
        async with client.post(
            server.admin_url + "/routes/models/resume", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            assert resp.status == 200
        results = await users_on(client, server.proxy_url, ["a", "b", "c"])
        assert {v for _, _, v, _ in results} == {"candidate"}
        assert json.loads(state.read_text())["rollouts"]["models"]["status"] == "active"
    finally:
        await server.stop()


@pytest.mark.logs_errors("cannot write rollout state")
async def test_unwritable_state_keeps_serving_and_reports(upstreams, client, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    stable, candidate = upstreams
    folder = tmp_path / "state"
    text = server_text(
        route_yaml(url_of(stable), url_of(candidate), share=1.0),
        state=f"{{path: {folder / 'state.json'}}}",
    )
    server = Server(parse_config(text))
    await server.start()
    folder.rename(tmp_path / "elsewhere")
    folder.write_text("")  # the state folder is now a file: nothing can be written there
    try:
        async with client.post(
            server.admin_url + "/routes/models/rollback",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            assert resp.status == 500
            body = await resp.json()
        assert body["persisted"] is False and body["after"] == "rolled_back"
        assert "cannot write rollout state" in body["message"]
        results = await users_on(client, server.proxy_url, ["a", "b"])
        assert {(s, v) for _, s, v, _ in results} == {(200, "stable")}  # the rollback holds
        async with client.get(server.admin_url + "/metrics") as resp:
            assert "grayscale_state_store_healthy 0.0" in await resp.text()
        async with client.get(server.admin_url + "/status") as resp:
            assert (await resp.json())["state"]["healthy"] is False
    finally:
        await server.stop()


async def early_answerer(answer: bytes, *, close: bool) -> tuple[asyncio.Server, str]:
    """An upstream that answers as soon as it has a request's head, without reading the body;
    then it closes the connection, or leaves it open and unread for a few seconds."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        if not close:
            # A handler cancelled when the test ends makes Python 3.11's streams log an error.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_an_upstream_answering_before_the_upload_ends_is_heard(start_proxy, client):
    body = b"x" * (32 * 1024 * 1024)  # more than socket buffers hold: the upload must stall
    refusal = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
    denial = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\n"
    for answer, text, close in (
        (refusal + b"too large", b"too large", True),
        (denial + b"denied", b"denied", False),
    ):
        server, url = await early_answerer(answer, close=close)
        proxy = await start_proxy(route_yaml(url, url, share=0.0), ", max_body_bytes: 67108864")
        started = time.monotonic()
        try:
            async with client.post(proxy.proxy_url + "/upload", data=body) as resp:
                assert (resp.status, await resp.read()) == (int(answer[9:12]), text)
                assert resp.headers["Connection"] == "close"  # the unread upload ends the line
        finally:
            server.close()
        assert time.monotonic() - started < 4  # not held until the upstream lets go


async def test_a_stalled_upload_is_answered_408(upstreams, start_proxy):
    stable, candidate = upstreams
    proxy = await start_proxy(
        route_yaml(url_of(stable), url_of(candidate)), ", client_body_timeout: 300ms"
    )
    port = int(proxy.proxy_url.rsplit(":", 1)[1])
    payload = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 70_000
    started = time.monotonic()
    answer = await asyncio.to_thread(raw_exchange, port, payload)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"request_timeout"' in answer
    assert time.monotonic() - started < 4
