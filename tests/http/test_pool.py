"""The upstream client's connection pool against raw upstreams: when a connection is reused,
and when it must not be."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http.client import Origin, UpstreamClient
from proxy.http.errors import UpstreamError
from tests.support.raw_peers import PeerConnection, answer, echo_requests
from tests.support.waiting import eventually


async def fetch(
    client: UpstreamClient,
    origin: Origin,
    target: bytes,
    method: str = "GET",
    first_byte_timeout: float = 2.0,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One exchange: status, headers and body."""
    got = await client.request(
        origin,
        method,
        target=target,
        headers=b"",
        body=None,
        content_length=None,
        connect_timeout=1.0,
        first_byte_timeout=first_byte_timeout,
    )
    try:
        return got.status, got.headers, await got.read(2.0, time.monotonic() + 2.0)
    finally:
        got.release()


def no_open_idle_connection(client: UpstreamClient) -> bool:
    """Whether every connection the client keeps for reuse has been closed."""
    return all(c.closed for pool in client._pools.values() for c in pool._idle)


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    client = UpstreamClient()
    yield client
    client.close()


async def test_bytes_arriving_on_an_idle_connection_close_it(raw_upstream, client):
    async def script(connection: PeerConnection, index: int) -> None:
        request = await connection.request()
        connection.send(answer(request.target.encode()))
        if index == 0:
            await asyncio.sleep(0.05)
            connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")
        await echo_requests(connection, index)

    upstream = await raw_upstream(script)
    origin = Origin(upstream.url)
    assert (await fetch(client, origin, b"/a"))[2] == b"/a"
    # (the stray bytes arrive while the connection is idle: the client closes it)
    await asyncio.wait_for(upstream.connections[0].closed.wait(), 5)
    assert (await fetch(client, origin, b"/b"))[2] == b"/b"
    assert len(upstream.connections) == 2
    assert upstream.connections[0].closed.is_set()


async def test_a_connection_idle_past_its_keepalive_timeout_is_not_reused(raw_upstream, client):
    upstream = await raw_upstream()
    origin = Origin(upstream.url, keepalive_timeout=0.2)
    await fetch(client, origin, b"/a")
    await fetch(client, origin, b"/b")  # at once: reused
    await asyncio.sleep(0.3)  # (time passing: past the keep-alive timeout)
    await fetch(client, origin, b"/c")  # idle too long: a new connection
    assert [len(c.requests) for c in upstream.connections] == [2, 1]
    assert upstream.connections[0].closed.is_set()


async def test_the_upstreams_keep_alive_timeout_is_honoured(raw_upstream, client):
    async def script(connection: PeerConnection, index: int) -> None:
        while True:
            request = await connection.request(within=30)
            connection.send(answer(request.target.encode(), headers=b"Keep-Alive: timeout=1\r\n"))

    upstream = await raw_upstream(script)
    origin = Origin(upstream.url, keepalive_timeout=60)
    await fetch(client, origin, b"/a")
    await fetch(client, origin, b"/b")
    # It closes idle connections after 1 s: ours are kept less than that, here not at all.
    assert len(upstream.connections) == 2


async def test_cancelled_before_the_head_the_connection_is_closed_quietly(raw_upstream, client):
    async def script(connection: PeerConnection, index: int) -> None:
        request = await connection.request()
        if request.target == "/slow":
            await connection.closed.wait()
        else:
            connection.send(answer(b"fast"))

    upstream = await raw_upstream(script)
    origin = Origin(upstream.url)
    waiting = asyncio.create_task(fetch(client, origin, b"/slow"))
    first = await upstream.connection(0)
    await first.request()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(first.closed.wait(), 5)
    assert (await fetch(client, origin, b"/fast"))[2] == b"fast"
    assert len(upstream.connections) == 2


async def test_a_connection_is_reused_after_a_head_answer(raw_upstream, client):
    async def script(connection: PeerConnection, index: int) -> None:
        while True:
            request = await connection.request(within=30)
            if request.method == "HEAD":  # the length a GET would have, and no body
                connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            else:
                connection.send(answer(b"body of " + request.target.encode()))

    upstream = await raw_upstream(script)
    origin = Origin(upstream.url)
    status, headers, body = await fetch(client, origin, b"/x", method="HEAD")
    assert (status, body) == (200, b"") and (b"Content-Length", b"1000") in headers
    assert (await fetch(client, origin, b"/y"))[2] == b"body of /y"
    assert len(upstream.connections) == 1


async def test_a_head_answer_followed_by_a_body_poisons_the_connection(raw_upstream, client):
    async def script(connection: PeerConnection, index: int) -> None:
        request = await connection.request()
        if request.method == "HEAD":
            connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
        else:
            connection.send(answer(b"body of " + request.target.encode()))

    upstream = await raw_upstream(script)
    origin = Origin(upstream.url)
    assert (await fetch(client, origin, b"/x", method="HEAD"))[2] == b""
    assert (await fetch(client, origin, b"/y"))[2] == b"body of /y"
    assert len(upstream.connections) == 2


async def test_interim_answers_are_skipped(raw_upstream, client):
    async def script(connection: PeerConnection, index: int) -> None:
        while True:
            request = await connection.request(within=30)
            connection.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            connection.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            connection.send(answer(request.target.encode(), headers=b"X-Final: 1\r\n"))

    upstream = await raw_upstream(script)
    origin = Origin(upstream.url)
    for target in (b"/a", b"/b"):
        status, headers, body = await fetch(client, origin, target)
        assert (status, body) == (200, target)
        assert [name for name, _ in headers] == [b"Content-Length", b"X-Final"]
    assert len(upstream.connections) == 1


@pytest.mark.parametrize("way", ["header", "silently"])
async def test_an_upstream_that_closes_after_every_answer(raw_upstream, client, way):
    async def script(connection: PeerConnection, index: int) -> None:
        request = await connection.request()
        close = b"Connection: close\r\n" if way == "header" else b""
        connection.send(answer(request.target.encode(), headers=close))
        connection.close()

    upstream = await raw_upstream(script)
    origin = Origin(upstream.url)
    for i in range(5):
        # (the close reaches us before the next request; else it is retried)
        assert await eventually(lambda: no_open_idle_connection(client), within=5)
        assert (await fetch(client, origin, b"/%d" % i))[2] == b"/%d" % i
    assert [len(c.requests) for c in upstream.connections] == [1] * 5


async def test_a_silent_upstream_times_out_and_its_connection_is_not_reused(raw_upstream, client):
    async def script(connection: PeerConnection, index: int) -> None:
        request = await connection.request()
        if request.target != "/silent":
            connection.send(answer(b"late answer"))
        await connection.closed.wait()

    upstream = await raw_upstream(script)
    origin = Origin(upstream.url)
    with pytest.raises(UpstreamError) as failure:
        await fetch(client, origin, b"/silent", first_byte_timeout=0.2)
    assert failure.value.reason == "timeout"
    assert (await fetch(client, origin, b"/next"))[2] == b"late answer"
    assert len(upstream.connections) == 2


@pytest.mark.parametrize(("first", "second"), [(0.3, 0.3), (5.0, 0.3)])
async def test_a_reused_connection_times_out_by_its_own_deadline(
    raw_upstream, client, first, second
):
    """One head-deadline timer serves a connection's exchanges: the second one's deadline is
    its own, not the first's."""

    async def script(connection: PeerConnection, index: int) -> None:
        await connection.request()
        connection.send(answer())
        await connection.closed.wait()  # silent from then on

    upstream = await raw_upstream(script)
    origin = Origin(upstream.url)
    assert (await fetch(client, origin, b"/", first_byte_timeout=first))[2] == b"ok"
    await asyncio.sleep(0.1)  # (time passing: the first deadline, if kept, would come early)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as failure:
        await asyncio.wait_for(fetch(client, origin, b"/", first_byte_timeout=second), 8)
    waited = time.monotonic() - started
    assert failure.value.reason == "timeout"
    assert 0.25 <= waited < 1.5, waited
    assert len(upstream.connections) == 1  # the second request did reuse the connection


async def test_interim_and_final_answers_in_one_read(raw_upstream, client):
    async def script(connection: PeerConnection, index: int) -> None:
        while True:
            request = await connection.request(within=30)
            connection.send(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                + answer(request.target.encode(), headers=b"X-Final: 1\r\n")
            )

    upstream = await raw_upstream(script)
    origin = Origin(upstream.url)
    for target in (b"/a", b"/b"):
        status, headers, body = await fetch(client, origin, target)
        assert (status, body, headers[-1]) == (200, target, (b"X-Final", b"1"))
    assert len(upstream.connections) == 1


def framed(body: bytes, framing: str, chunks: list[int], trailer: bool) -> bytes:
    """An answer carrying `body`, framed by length, chunks (of `chunks` sizes) or the close."""
    if framing == "length":
        return answer(body)
    if framing == "close":
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    out, at = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"], 0
    for wanted in [*chunks, len(body)]:
        size = min(wanted, len(body) - at)
        if size:
            out.append(b"%x\r\n%s\r\n" % (size, body[at : at + size]))
            at += size
    out.append(b"0\r\nX-Checksum: 1\r\n\r\n" if trailer else b"0\r\n\r\n")
    return b"".join(out)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    case=st.tuples(
        st.binary(max_size=2000),
        st.sampled_from(["length", "chunks", "close"]),
        st.lists(st.integers(1, 700), max_size=4),
        st.booleans(),
        st.booleans(),
        st.lists(st.integers(1, 3000), max_size=6, unique=True),
    )
)
async def test_an_answer_split_anywhere_arrives_whole_and_alone(raw_upstream, case):
    """Whatever the framing, and wherever the upstream's writes split its answer, the client
    gets exactly the body, and the connection is reused exactly when the framing allows."""
    body, framing, chunks, trailer, interim, cuts = case
    wire = (b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b"") + framed(
        body, framing, chunks, trailer
    )

    async def script(connection: PeerConnection, index: int) -> None:
        while True:
            try:
                await connection.request(within=30)
            except (ConnectionError, TimeoutError):
                return
            at = 0
            for cut in [*sorted(c for c in cuts if c < len(wire)), len(wire)]:
                connection.send(wire[at:cut])
                await asyncio.sleep(0.001)
                at = cut
            if framing == "close":
                connection.close()
                return

    upstream = await raw_upstream(script)
    client = UpstreamClient()
    try:
        origin = Origin(upstream.url)
        for target in (b"/1", b"/2"):
            status, _, got = await fetch(client, origin, target)
            assert (status, got) == (200, body)
        assert len(upstream.connections) == (2 if framing == "close" else 1)
    finally:
        client.close()
