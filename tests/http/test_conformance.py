"""The proxy against hostile clients and misbehaving upstreams, over raw sockets.

Each test drives the whole proxy (listener, forwarding, upstream client) and checks both what the
client got and the exact bytes the upstream received. A numbered section per rule of the HTTP
behaviour docs/http.md states.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from tests.support.raw_peers import (
    Answer,
    GatewayFactory,
    PeerConnection,
    RawClient,
    answer,
    echo_requests,
)
from tests.support.waiting import eventually

GET = b"GET %s HTTP/1.1\r\nHost: models.test\r\n\r\n"


async def one_exchange(url: str, payload: bytes, **options: bool) -> tuple[RawClient, Answer]:
    """Send `payload` on a new connection and read one answer."""
    client = await RawClient.connect(url)
    await client.send(payload)
    return client, await client.answer(**options)


async def refused(gateway: GatewayFactory, payload: bytes) -> int:
    """The status `payload` is refused with: the proxy answers, closes the connection, and sends
    the upstream nothing at all."""
    proxy, upstream = await gateway()
    client, got = await one_exchange(proxy.proxy_url, payload)
    assert got.header("connection") == "close"
    assert await client.closed()
    assert upstream.received == b""
    return got.status


# --- 1. No answer reaches the wrong client ---------------------------------------------------


async def test_an_answer_the_upstream_sends_while_idle_is_never_taken_for_the_next_one(gateway):
    async def script(connection: PeerConnection, index: int) -> None:
        if index == 0:
            await connection.head()
            connection.send(answer(b"for /a"))
            await asyncio.sleep(0.05)
            connection.send(answer(b"stray", headers=b"X-Stray: 1\r\n"))  # nobody asked
        else:
            request = await connection.request()
            connection.send(answer(f"for {request.target}".encode()))

    proxy, upstream = await gateway(script)
    client, first = await one_exchange(proxy.proxy_url, GET % b"/a")
    assert first.body == b"for /a"
    # (the stray answer arrives while the connection is idle: the proxy drops the connection)
    await asyncio.wait_for(upstream.connections[0].closed.wait(), 5)
    await client.send(GET % b"/b")
    second = await client.answer()
    assert (second.body, second.values("x-stray")) == (b"for /b", [])
    assert [c.requests[-1].target for c in upstream.connections] == ["/a", "/b"]


async def test_two_answers_in_one_read_are_not_merged_into_one(gateway):
    async def script(connection: PeerConnection, index: int) -> None:
        request = await connection.request()
        extra = answer(b"second", headers=b"X-Second: 1\r\n") if index == 0 else b""
        connection.send(answer(f"for {request.target}".encode(), headers=b"X-First: 1\r\n") + extra)

    proxy, upstream = await gateway(script)
    client, first = await one_exchange(proxy.proxy_url, GET % b"/a")
    assert (first.body, first.header("x-first"), first.values("x-second")) == (b"for /a", "1", [])
    await client.send(GET % b"/b")
    second = await client.answer()
    assert (second.body, second.values("x-second")) == (b"for /b", [])
    assert len(upstream.connections) == 2  # the connection that sent two answers was dropped


async def test_an_early_answer_then_an_answer_to_the_unread_body_reaches_nobody(gateway):
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

    async def script(connection: PeerConnection, index: int) -> None:
        if index == 0:
            await connection.head()  # answers at once, never reads the body...
            connection.send(answer(b"early"))
            await asyncio.sleep(0.05)
            connection.send(answer(b"smuggled"))  # ...then takes the body for a request
        else:
            await echo_requests(connection, index)

    proxy, upstream = await gateway(script)
    post = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(smuggled),
        smuggled,
    )
    client, first = await one_exchange(proxy.proxy_url, post)
    assert first.body == b"early"
    # (the second answer arrives after the first: the proxy drops the connection)
    await asyncio.wait_for(upstream.connections[0].closed.wait(), 5)
    for _ in range(3):
        await client.send(GET % b"/b")
        assert (await client.answer()).body == b"GET /b"


# --- 2. No request is sent twice -------------------------------------------------------------


async def closes_after_reading_the_second_request(connection: PeerConnection, index: int) -> None:
    request = await connection.request()
    connection.send(answer(f"for {request.target}".encode()))
    if index == 0:
        await connection.request()
        connection.close()  # read it, then closed without a word
    else:
        while True:
            request = await connection.request(within=30)
            connection.send(answer(f"for {request.target}".encode()))


async def test_a_post_that_reached_the_upstream_is_not_sent_again(gateway):
    proxy, upstream = await gateway(closes_after_reading_the_second_request)
    client, warm = await one_exchange(proxy.proxy_url, GET % b"/warm")
    assert warm.status == 200
    await client.send(b"POST /charge HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n$10")
    failed = await client.answer()
    assert failed.status == 502
    assert json.loads(failed.body)["error"] == "upstream_reset"
    assert [r.target for r in upstream.requests].count("/charge") == 1


async def test_an_idempotent_request_is_retried_once_on_a_new_connection(gateway):
    proxy, upstream = await gateway(closes_after_reading_the_second_request)
    client, _ = await one_exchange(proxy.proxy_url, GET % b"/warm")
    await client.send(GET % b"/again")
    retried = await client.answer()
    assert (retried.status, retried.body) == (200, b"for /again")
    assert [r.target for r in upstream.requests] == ["/warm", "/again", "/again"]


# --- 3. A truncated answer never looks complete ------------------------------------------------


@pytest.mark.parametrize("ending", ["reset", "close"])
async def test_a_close_delimited_answer_is_complete_only_when_closed_in_order(gateway, ending):
    async def script(connection: PeerConnection, index: int) -> None:
        await connection.request()
        connection.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await asyncio.sleep(0.05)
        connection.send(b"part two")
        await asyncio.sleep(0.05)
        connection.reset() if ending == "reset" else connection.close()

    proxy, _ = await gateway(script)
    client, got = await one_exchange(proxy.proxy_url, GET % b"/stream")
    assert got.status == 200 and got.header("transfer-encoding") == "chunked"
    if ending == "reset":
        assert not got.clean  # no last chunk: the client knows the answer is cut
        assert await client.closed()
    else:
        assert got.clean and got.body == b"part one, part two"


async def test_an_identity_transfer_coding_is_read_to_the_close(gateway):
    async def script(connection: PeerConnection, index: int) -> None:
        await connection.request()
        connection.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nwhole ")
        await asyncio.sleep(0.05)
        connection.send(b"body")
        connection.close()

    proxy, _ = await gateway(script)
    _, got = await one_exchange(proxy.proxy_url, GET % b"/x")
    assert (got.status, got.body, got.clean) == (200, b"whole body", True)


# --- 4. Request framing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "status"),
    [(b"gzip", 400), (b"identity", 400), (b"xchunked", 400), (b"gzip, chunked", 501)],
)
async def test_a_transfer_coding_other_than_chunked_is_refused_before_the_upstream(
    gateway, coding, status
):
    payload = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: %s\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert await refused(gateway, payload % coding) == status


async def test_request_trailers_are_dropped_and_the_body_forwarded(gateway):
    proxy, upstream = await gateway()
    payload = (
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n"
    )
    client, got = await one_exchange(proxy.proxy_url, payload)
    assert (got.status, got.body) == (200, b"POST /t")
    (received,) = upstream.requests
    assert received.body == b"hello"
    assert received.values("x-checksum") == [] and received.trailers == []
    await client.send(GET % b"/next")  # the connection stayed in step
    assert (await client.answer()).body == b"GET /next"


async def test_http_1_0_with_transfer_encoding_is_refused_and_closed(gateway):
    payload = b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert await refused(gateway, payload) == 400


@pytest.mark.parametrize("size", [11, 200_000])
async def test_an_h2c_upgrade_is_ignored_and_the_body_forwarded(gateway, size):
    """What `curl --http2` sends to an http:// URL."""
    proxy, upstream = await gateway()
    body = bytes(i % 251 for i in range(size))
    head = (
        b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: %d\r\n\r\n"
    )
    client, got = await one_exchange(proxy.proxy_url, head % size + body)
    assert (got.status, got.body) == (200, b"POST /v1/chat")
    (received,) = upstream.requests
    assert received.body == body
    assert not {"upgrade", "http2-settings"} & {name for name, _ in received.headers}
    await client.send(GET % b"/next")
    assert (await client.answer()).body == b"GET /next"


async def test_connect_is_refused(gateway):
    assert await refused(gateway, b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n") == 405


# --- 5. Target and Host ------------------------------------------------------------------------


async def test_an_absolute_form_target_is_forwarded_in_origin_form(gateway):
    proxy, upstream = await gateway(path="/base")
    payload = b"GET http://models.example/v1/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"
    _, got = await one_exchange(proxy.proxy_url, payload)
    assert (got.status, got.body) == (200, b"GET /base/v1/x?q=1")
    assert upstream.requests[0].header("x-forwarded-host") == "models.example"


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
        b"GET http://a:x/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
async def test_a_missing_repeated_empty_or_malformed_host_is_400(gateway, head):
    assert await refused(gateway, head) == 400


@pytest.mark.parametrize(
    "host", [b"models.test", b"models.test:8080", b"[::1]:8080", b"10.0.0.1", b"xn--bcher-kva.ch"]
)
async def test_valid_hosts_are_served(gateway, host):
    proxy, _ = await gateway()
    _, got = await one_exchange(proxy.proxy_url, b"GET /h HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
    assert got.status == 200


async def test_http_1_0_needs_no_host(gateway):
    proxy, _ = await gateway()
    _, got = await one_exchange(proxy.proxy_url, b"GET /old HTTP/1.0\r\n\r\n")
    assert (got.status, got.body) == (200, b"GET /old")


@pytest.mark.parametrize("trusted", [False, True])
async def test_forwarded_headers_are_believed_only_from_trusted_proxies(gateway, trusted):
    server = ', trusted_proxies: ["127.0.0.1"]' if trusted else ""
    proxy, upstream = await gateway(server=server)
    payload = (
        b"GET /f HTTP/1.1\r\nHost: models.test\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: evil.example\r\nForwarded: for=1.2.3.4;proto=https\r\n\r\n"
    )
    await one_exchange(proxy.proxy_url, payload)
    (received,) = upstream.requests
    seen = [received.header(n) for n in ("x-forwarded-proto", "x-forwarded-host", "forwarded")]
    if trusted:
        assert seen == ["https", "evil.example", "for=1.2.3.4;proto=https"]
    else:
        assert seen == ["http", "models.test", None]


# --- 6. Limits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"A:\r\n" * 20_000 + b"\r\n",  # 80 KB of tiny lines
        b"GET / HTTP/1.1\r\nHost: x\r\nA:" + b" " * 70_000 + b"a\r\n\r\n",  # whitespace
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(100))
        + b"\r\n",
    ],
)
async def test_the_head_limits_count_every_byte_and_every_line(gateway, head):
    assert await refused(gateway, head) == 431


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"A: 1\r\n" * 20_000 + b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
    ],
)
async def test_an_upstream_head_beyond_the_limits_is_a_502(gateway, head):
    async def script(connection: PeerConnection, index: int) -> None:
        await connection.request()
        connection.send(head)

    proxy, _ = await gateway(script)
    _, got = await one_exchange(proxy.proxy_url, GET % b"/h")
    assert got.status == 502
    assert json.loads(got.body)["error"] == "upstream_protocol_error"


async def test_a_client_that_stops_reading_is_cut_off_and_frees_its_upstream_slot(gateway):
    async def script(connection: PeerConnection, index: int) -> None:
        request = await connection.request()
        if request.target == "/endless":
            connection.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
            while not connection.closed.is_set():
                connection.send(chunk)
                await asyncio.sleep(0.002)
        else:
            connection.send(answer(b"served"))

    # One upstream connection at most: the reader that stopped holds it until it is cut off.
    proxy, upstream = await gateway(
        script, upstream=", max_connections: 1, max_pending: 4", server=", send_timeout: 500ms"
    )
    port = int(proxy.proxy_url.rsplit(":", 1)[1])
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(GET % b"/endless")  # and never reads a byte
    try:
        first = await upstream.connection(0)
        await asyncio.wait_for(first.closed.wait(), 10)  # the upstream request was abandoned
        _, got = await one_exchange(proxy.proxy_url, GET % b"/other")
        assert (got.status, got.body) == (200, b"served")
    finally:
        stalled.close()


# --- 7. Pipelining ---------------------------------------------------------------------------


async def test_pipelined_requests_before_a_malformed_one_are_answered(gateway):
    proxy, upstream = await gateway()
    payload = GET % b"/one" + GET % b"/two" + b"BROKEN\r\n\r\n"
    client = await RawClient.connect(proxy.proxy_url)
    await client.send(payload)
    one, two, bad = [await client.answer() for _ in range(3)]
    assert (one.body, two.body, bad.status) == (b"GET /one", b"GET /two", 400)
    assert one.header("connection") is None and bad.header("connection") == "close"
    assert await client.closed()
    assert [r.target for r in upstream.requests] == ["/one", "/two"]


# --- 8. Our own headers cannot be forged --------------------------------------------------------


async def test_an_upstream_cannot_forge_the_variant_or_route_headers(gateway):
    async def script(connection: PeerConnection, index: int) -> None:
        await connection.request()
        connection.send(
            answer(headers=b"X-Grayscale-Variant: candidate\r\nX-Grayscale-Route: other\r\n")
        )

    proxy, _ = await gateway(script)
    _, got = await one_exchange(proxy.proxy_url, GET % b"/x")
    assert got.values("x-grayscale-variant") == ["stable"]
    assert got.values("x-grayscale-route") == ["models"]


# --- 9. No noise on normal events ------------------------------------------------------------


async def test_a_client_leaving_before_the_answer_is_counted_quietly(gateway):
    analysis = "    analysis: {interval: 1m, window: 1h}\n"
    waiting = asyncio.Event()

    async def script(connection: PeerConnection, index: int) -> None:
        await connection.request()
        waiting.set()
        await connection.closed.wait()

    proxy, upstream = await gateway(script, extra=analysis)
    client = await RawClient.connect(proxy.proxy_url)
    await client.send(GET % b"/slow")
    await asyncio.wait_for(waiting.wait(), 5)
    client.close()
    await asyncio.wait_for((await upstream.connection(0)).closed.wait(), 5)

    def counted() -> float | None:
        labels = {"route": "models", "variant": "stable", "code_class": "4xx"}
        value: float | None = proxy.recorder.registry.get_sample_value(
            "grayscale_requests_total", labels
        )
        return value

    assert await eventually(lambda: counted() is not None, within=5)
    assert counted() == 1  # counted (as 499, a 4xx), and nothing was logged at ERROR


# --- 10. Versions, bodiless statuses, status range, Via -----------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/0.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/3.0\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the HTTP/2 preface
    ],
)
async def test_a_request_in_another_http_version_is_505(gateway, head):
    assert await refused(gateway, head) == 505


@pytest.mark.parametrize("length", [b"0", b"100000"])
async def test_a_204_never_carries_content_length(gateway, length):
    async def script(connection: PeerConnection, index: int) -> None:
        await connection.request()
        connection.send(b"HTTP/1.1 204 No Content\r\nContent-Length: %s\r\n\r\n" % length)

    proxy, _ = await gateway(script)
    _client, got = await one_exchange(proxy.proxy_url, GET % b"/x")
    assert got.status == 204 and got.values("content-length") == []


@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.1 099 Odd", b"HTTP/1.1 600 Odd", b"HTTP/1.1 101 Switching\r\nUpgrade: websocket"],
)
async def test_a_status_outside_100_to_599_or_a_protocol_switch_is_a_502(gateway, status_line):
    async def script(connection: PeerConnection, index: int) -> None:
        await connection.request()
        connection.send(status_line + b"\r\nContent-Length: 2\r\n\r\nok")

    proxy, _ = await gateway(script)
    _, got = await one_exchange(proxy.proxy_url, GET % b"/x")
    assert got.status == 502


async def test_the_upstream_sees_a_via_header(gateway):
    proxy, upstream = await gateway()
    await one_exchange(proxy.proxy_url, b"GET /v HTTP/1.1\r\nHost: x\r\nVia: 1.1 edge\r\n\r\n")
    await one_exchange(proxy.proxy_url, b"GET /v HTTP/1.0\r\n\r\n")
    first, second = upstream.requests
    assert first.values("via") == ["1.1 edge", "1.1 grayscale"]
    assert second.values("via") == ["1.0 grayscale"]
