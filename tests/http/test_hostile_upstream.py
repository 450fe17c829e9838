"""Upstreams whose answers bend the framing rules, over raw sockets: interim (1xx) answers that
claim a body, interim answers to pass on, transfer codings that do not end the body as llhttp
and the proxy would both read it, and reason phrases with control characters.

Each upstream writes its answer in one read or trickled over several (`pieces`): the proxy parses
a read that begins with a whole head in one go and the rest piece by piece, and both paths must
agree.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.raw_peers import (
    Answer,
    GatewayFactory,
    PeerConnection,
    RawClient,
    Script,
    answer,
)

GET = b"GET /x HTTP/1.1\r\nHost: models.test\r\n\r\n"
FINAL = answer(b"ok", headers=b"X-Final: 1\r\n")


def sending(*parts: bytes, pieces: bool) -> Script:
    """A script that answers each request with `parts`: in one write, or one write each with a
    pause between them (separate reads on the proxy's side)."""

    async def script(connection: PeerConnection, index: int) -> None:
        while True:
            try:
                await connection.request(within=30)
            except (ConnectionError, TimeoutError):
                return
            if not pieces:
                connection.send(b"".join(parts))
                continue
            for part in parts:
                connection.send(part)
                await asyncio.sleep(0.05)

    return script


async def exchange(url: str, payload: bytes = GET) -> tuple[RawClient, list[Answer]]:
    """Send `payload` on a new connection: every answer read for it, interim ones included, up
    to the final one."""
    client = await RawClient.connect(url)
    await client.send(payload)
    got: list[Answer] = []
    async with asyncio.timeout(5):
        while not got or 100 <= got[-1].status < 200:
            got.append(await client._read(head_request=False))
    return client, got


def protocol_error(got: Answer) -> str:
    assert got.status == 502, (got.status, got.body)
    return str(json.loads(got.body)["error"])


# --- interim answers have no content (RFC 9110 §15.2) ---------------------------------------


@pytest.mark.parametrize("pieces", [False, True], ids=["one-read", "pieces"])
@pytest.mark.parametrize(
    "framing", [b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n"], ids=["length", "te"]
)
async def test_an_interim_answer_that_claims_a_body_is_followed_by_the_final_head(
    gateway: GatewayFactory, pieces: bool, framing: bytes
) -> None:
    interim = b"HTTP/1.1 150 Odd\r\n%s\r\n" % framing
    proxy, _ = await gateway(sending(interim, FINAL, pieces=pieces))
    _, got = await exchange(proxy.proxy_url)
    final = got[-1]
    assert (final.status, final.body, final.header("x-final")) == (200, b"ok", "1")


@pytest.mark.parametrize("pieces", [False, True], ids=["one-read", "pieces"])
@pytest.mark.parametrize(
    "payload",
    [b"HELLO", b"5\r\nHELLO\r\n0\r\n\r\n"],
    ids=["bytes", "chunks"],
)
async def test_bytes_after_an_interim_head_are_read_as_the_next_head(
    gateway: GatewayFactory, pieces: bool, payload: bytes
) -> None:
    framing = b"Content-Length: %d\r\n" % len(payload)
    if payload.startswith(b"5\r\n"):
        framing = b"Transfer-Encoding: chunked\r\n"
    interim = b"HTTP/1.1 150 Odd\r\n%s\r\n" % framing
    proxy, upstream = await gateway(sending(interim, payload, FINAL, pieces=pieces))
    client, got = await exchange(proxy.proxy_url)
    final = got[-1]
    assert protocol_error(final) == "upstream_protocol_error"
    assert b"HELLO" not in final.body
    assert [a.status for a in got] == [150, 502]  # the interim head alone, passed on as one
    assert got[0].values("content-length") == got[0].values("transfer-encoding") == []
    await client.send(GET)  # the connection to the client is still good...
    assert (await client.answer()).status == 502
    connection = await upstream.connection(0)
    assert connection.closed.is_set()  # ...but the upstream's that sent it was closed


# --- interim answers are passed on to HTTP/1.1 clients, in order -----------------------------

HINTS = (
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n"
    b"X-Grayscale-Variant: forged\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize("pieces", [False, True], ids=["one-read", "pieces"])
async def test_early_hints_reach_an_http11_client_before_the_final_answer(
    gateway: GatewayFactory, pieces: bool
) -> None:
    hints2 = b"HTTP/1.1 103 Early Hints\r\nLink: </app.js>; rel=preload\r\n\r\n"
    processing = b"HTTP/1.1 102 Processing\r\n\r\n"
    go_on = b"HTTP/1.1 100 Continue\r\n\r\n"  # answers an Expect the proxy never sent: dropped
    parts = (go_on, HINTS, processing, hints2, FINAL)
    proxy, _ = await gateway(sending(*parts, pieces=pieces))
    _, got = await exchange(proxy.proxy_url)
    assert [a.status for a in got] == [103, 102, 103, 200]
    first = got[0]
    assert first.values("link") == ["</style.css>; rel=preload"]
    for name in ("x-grayscale-variant", "connection", "x-hop", "content-length"):
        assert first.values(name) == [], name  # hop-by-hop, framing and ours: never passed on
    assert got[2].values("link") == ["</app.js>; rel=preload"]
    assert (got[3].body, got[3].header("x-grayscale-variant")) == (b"ok", "stable")


async def test_an_http10_client_gets_no_interim_answer(gateway: GatewayFactory) -> None:
    proxy, _ = await gateway(sending(HINTS, FINAL, pieces=True))
    _, got = await exchange(proxy.proxy_url, b"GET /x HTTP/1.0\r\nHost: models.test\r\n\r\n")
    assert [(a.status, a.body) for a in got] == [(200, b"ok")]  # RFC 9110 §15.2


async def test_a_client_that_expects_100_gets_the_proxys_one_then_the_hints(
    gateway: GatewayFactory,
) -> None:
    go_on = b"HTTP/1.1 100 Continue\r\n\r\n"
    proxy, upstream = await gateway(sending(go_on, HINTS, FINAL, pieces=True))
    client = await RawClient.connect(proxy.proxy_url)
    await client.send(
        b"POST /x HTTP/1.1\r\nHost: models.test\r\nExpect: 100-continue\r\n"
        b"Content-Length: 5\r\n\r\n"
    )
    first = await client._read(head_request=False)
    assert first.status == 100  # the proxy's own, before the body is sent
    await client.send(b"hello")
    got = [await client._read(head_request=False) for _ in range(2)]
    assert [(a.status, a.body) for a in got] == [(103, b""), (200, b"ok")]
    (received,) = upstream.requests
    assert (received.body, received.header("expect")) == (b"hello", None)


async def test_interim_answers_past_the_head_limit_are_read_but_not_passed_on(
    gateway: GatewayFactory,
) -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </%s>\r\n\r\n" % (b"a" * 1000)
    many = hints * 100  # 100 kB of interim heads: more than the 64 KiB an answer head may take
    proxy, _ = await gateway(sending(many, FINAL, pieces=False))
    _, got = await exchange(proxy.proxy_url)
    assert 50 <= len(got) - 1 < 100
    assert {a.status for a in got[:-1]} == {103}
    assert (got[-1].status, got[-1].body) == (200, b"ok")


# --- transfer codings: chunked alone, or the close --------------------------------------------


@pytest.mark.parametrize("pieces", [False, True], ids=["one-read", "pieces"])
@pytest.mark.parametrize(
    "codings",
    [
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding: identity, chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked ,\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
    ],
)
async def test_a_transfer_coding_list_other_than_chunked_alone_is_a_protocol_error(
    gateway: GatewayFactory, pieces: bool, codings: bytes
) -> None:
    head = b"HTTP/1.1 200 OK\r\n%s\r\n" % codings
    proxy, upstream = await gateway(sending(head, b"2\r\nok\r\n0\r\n\r\n", pieces=pieces))
    client, got = await exchange(proxy.proxy_url)
    assert protocol_error(got[-1]) == "upstream_protocol_error"
    assert b"2\r\nok" not in got[-1].body
    assert (await upstream.connection(0)).closed.is_set()
    client.close()


async def test_chunked_alone_in_any_case_frames_the_body(gateway: GatewayFactory) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
    proxy, _ = await gateway(sending(head, b"2\r\nok\r\n0\r\n\r\n", pieces=True))
    _, got = await exchange(proxy.proxy_url)
    assert (got[-1].status, got[-1].body, got[-1].clean) == (200, b"ok", True)


# --- reason phrases: rewritten when they hold a control character -----------------------------


@pytest.mark.parametrize("pieces", [False, True], ids=["one-read", "pieces"])
@pytest.mark.parametrize("control", [b"\x00", b"\x01", b"\x1b", b"\x7f"])
async def test_a_reason_phrase_with_a_control_character_is_replaced(
    gateway: GatewayFactory, pieces: bool, control: bytes
) -> None:
    head = b"HTTP/1.1 404 Not%sFound\r\nContent-Length: 4\r\n\r\n" % control
    proxy, _ = await gateway(sending(head, b"gone", pieces=pieces))
    client = await RawClient.connect(proxy.proxy_url)
    await client.send(GET)
    line = await client.reader.readuntil(b"\r\n")
    assert line == b"HTTP/1.1 404 Not Found\r\n"  # the standard phrase for the status
    rest = await client.reader.readuntil(b"\r\n\r\n")
    assert b"Content-Length: 4\r\n" in rest
    assert await client.reader.readexactly(4) == b"gone"


@pytest.mark.parametrize("reason", [b"All\tgood \x80\xff", b""])
async def test_a_clean_reason_phrase_is_passed_on_as_sent(
    gateway: GatewayFactory, reason: bytes
) -> None:
    head = b"HTTP/1.1 200 %s\r\nContent-Length: 2\r\n\r\n" % reason
    proxy, _ = await gateway(sending(head, b"ok", pieces=False))
    client = await RawClient.connect(proxy.proxy_url)
    await client.send(GET)
    line = await client.reader.readuntil(b"\r\n")
    assert line == b"HTTP/1.1 200 %s\r\n" % (reason or b"OK")


async def test_a_reason_phrase_split_over_reads_is_passed_on_whole(gateway: GatewayFactory) -> None:
    parts = (b"HTTP/1.1 200 All", b" go", b"od\r\nContent-Length: 2\r\n\r\nok")
    proxy, _ = await gateway(sending(*parts, pieces=True))
    client = await RawClient.connect(proxy.proxy_url)
    await client.send(GET)
    assert await client.reader.readuntil(b"\r\n") == b"HTTP/1.1 200 All good\r\n"
