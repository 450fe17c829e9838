"""Clients that send or read slowly: they hold no upstream connection while they send, their
slowness is never charged to an upstream (no error, no ejection), and the route's `timeout`
bounds the whole exchange even when the client stops reading."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from tests.support.configs import route_yaml
from tests.support.upstream import serving, url_of
from tests.support.waiting import eventually


async def trickle(
    port: int, head: bytes, pieces: Sequence[bytes], every: float, sent: list[int] | None = None
) -> bytes:
    """Send `head`, then each of `pieces` `every` seconds apart (appending 1 to `sent` after
    each); the answer (until the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for piece in pieces:
            await asyncio.sleep(every)  # (a slow client: the pause is the point)
            writer.write(piece)
            await writer.drain()
            if sent is not None:
                sent.append(1)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def chunked(text: bytes) -> list[bytes]:
    """`text` as a chunked body, a chunk per byte, and its last chunk."""
    return [b"1\r\n%s\r\n" % text[i : i + 1] for i in range(len(text))] + [b"0\r\n\r\n"]


def head(path: str, framing: bytes, user: str = "u1") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-User-Id: {user}\r\nConnection: close\r\n".encode()
        + framing
        + b"\r\n"
    )


async def candidate_health(session: aiohttp.ClientSession, admin_url: str) -> tuple[bool, str]:
    async with session.get(admin_url + "/status") as response:
        route = (await response.json())["routes"][0]
    async with session.get(admin_url + "/metrics") as response:
        metrics = await response.text()
    errors = [
        line
        for line in metrics.splitlines()
        if line.startswith("grayscale_upstream_errors_total")
        and 'variant="candidate"' in line
        and not line.endswith(" 0.0")
    ]
    return bool(route["ejection"]["ejected"]), "\n".join(errors)


async def test_slow_uploads_are_not_charged_to_a_candidate_with_a_short_first_byte_timeout(
    upstreams, start_proxy
):
    stable, candidate = upstreams
    routes = route_yaml(url_of(stable), url_of(candidate), share=1.0).replace(
        "timeout: 10s, connect_timeout: 1s}",
        "timeout: 10s, connect_timeout: 1s, first_byte_timeout: 500ms}",
        2,
    ) + ("    ejection: {consecutive_errors: 3, base_time: 30s}\n")
    proxy = await start_proxy(routes)
    port = int(proxy.proxy_url.rsplit(":", 1)[1])
    body = b'{"x": 1}'
    answers = await asyncio.gather(
        *(
            trickle(
                port,
                head("/upload", b"Transfer-Encoding: chunked\r\n", f"u{i}"),
                chunked(body),
                0.12,
            )
            for i in range(5)
        )
    )
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers), answers[0][:300]
    assert all(b"X-Grayscale-Variant: candidate" in answer for answer in answers)
    async with aiohttp.ClientSession() as session:
        ejected, errors = await candidate_health(session, proxy.admin_url)
    assert not ejected and errors == "", errors


async def test_a_slow_upload_holds_no_upstream_connection(upstreams, start_proxy):
    stable, candidate = upstreams
    routes = route_yaml(url_of(stable), url_of(candidate), share=0.0).replace(
        "timeout: 10s, connect_timeout: 1s}",
        "timeout: 10s, connect_timeout: 1s, max_connections: 1, max_pending: 8}",
        1,
    )
    proxy = await start_proxy(routes)
    port = int(proxy.proxy_url.rsplit(":", 1)[1])
    sent: list[list[int]] = [[] for _ in range(4)]
    uploads = [
        asyncio.create_task(
            trickle(
                port,
                head("/up", b"Transfer-Encoding: chunked\r\n"),
                chunked(b"y" * 12),
                0.1,
                sent[i],
            )
        )
        for i in range(4)
    ]
    # (the uploads have begun, and are far from done: 13 pieces each)
    assert await eventually(lambda: all(len(pieces) >= 2 for pieces in sent), within=5)
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.proxy_url + "/victim") as response,
    ):
        assert response.status == 200  # (503 upstream_overloaded while uploads held the slot)
    answers = await asyncio.gather(*uploads)
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers), answers
    assert all(b'"body_length": 12' in answer for answer in answers), answers[0]


async def test_a_body_larger_than_the_buffer_starts_the_first_byte_timer_once_sent(
    upstreams, start_proxy
):
    stable, candidate = upstreams
    routes = route_yaml(url_of(stable), url_of(candidate), share=0.0).replace(
        "timeout: 10s, connect_timeout: 1s}",
        "timeout: 10s, connect_timeout: 1s, first_byte_timeout: 400ms}",
        1,
    )
    proxy = await start_proxy(routes, ", request_buffer_bytes: 1024")
    port = int(proxy.proxy_url.rsplit(":", 1)[1])
    framing = b"Content-Length: 132096\r\n"  # (128 KiB sent at once, 1 KiB trickled)
    started = time.monotonic()
    answer = await trickle(port, head("/big", framing) + b"a" * 131072, [b"b" * 128] * 8, 0.15)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]  # (was 502 or 504 at 400 ms)
    assert time.monotonic() - started > 1.0  # (the upload itself took 1.2 s)


async def test_an_upload_slower_than_the_exchange_timeout_is_the_clients_408(
    upstreams, start_proxy
):
    stable, candidate = upstreams
    routes = route_yaml(url_of(stable), url_of(candidate), share=1.0, timeout="1s") + (
        "    ejection: {consecutive_errors: 1, base_time: 30s}\n"
    )
    proxy = await start_proxy(routes, ", request_buffer_bytes: 16")
    port = int(proxy.proxy_url.rsplit(":", 1)[1])
    answer = await trickle(
        port, head("/up", b"Content-Length: 64\r\n") + b"z" * 16, [b"z" * 4] * 12, 0.2
    )
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b'"request_timeout"' in answer
    async with aiohttp.ClientSession() as session:
        ejected, errors = await candidate_health(session, proxy.admin_url)
    assert not ejected and errors == "", errors


async def test_the_exchange_timeout_cuts_a_client_that_stops_reading(start_proxy):
    # An upstream that streams as fast as it may, noting when the proxy lets go of it.
    let_go: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"z" * 65536)
        finally:  # (the write fails, or aiohttp cancels the handler, once the proxy lets go)
            let_go.set_result(time.monotonic())

    app = web.Application()
    app.router.add_get("/{tail:.*}", endless)
    async with serving(app) as (url,):
        routes = route_yaml(url, url, share=0.0, timeout="1s")
        proxy = await start_proxy(routes, ", send_timeout: 60s")
        port = int(proxy.proxy_url.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        try:
            released = await asyncio.wait_for(let_go, 5)
        finally:
            writer.close()
    # Let go at the route's 1 s timeout, not after send_timeout (60 s) or for ever.
    assert released - started < 2.5
