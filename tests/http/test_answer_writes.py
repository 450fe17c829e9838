"""An answer's head goes out with its body when the body is there (one write), and on its own
when the body is not: a streamed answer's head is never held back waiting for its first piece.

What is checked is what the client reads off the wire, for each framing the listener writes
(Content-Length, chunked, up to the close for an HTTP/1.0 client): how many writes it took is
measured by loadtests/bench_proxy.py, not asserted here.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.raw_peers import GatewayFactory, PeerConnection, RawClient

LARGE = bytes(range(256)) * 400  # 100 KiB: over SMALL_BODY, so the answer is streamed
POST = b"POST /v1/x HTTP/%s\r\nHost: models.test\r\nContent-Length: 2\r\n\r\n{}"


def all_at_once(head: bytes, body: bytes):
    """A script that sends the answer's head and whole body in one write."""

    async def script(connection: PeerConnection, index: int) -> None:
        while True:
            await connection.request()
            connection.send(head + body)

    return script


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_a_streamed_answer_whose_body_came_with_its_head_arrives_whole(
    gateway: GatewayFactory, version: bytes
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    head += b"Content-Length: %d\r\n\r\n" % len(LARGE)
    proxy, _ = await gateway(all_at_once(head, LARGE))
    client = await RawClient.connect(proxy.proxy_url)
    for _ in range(2 if version == b"1.1" else 1):  # (the next answer on the same connection)
        await client.send(POST % version)
        got = await client.answer()
        assert (got.status, got.clean, got.body) == (200, True, LARGE)
        assert got.header("content-length") == str(len(LARGE))
        assert got.header("x-grayscale-variant") == "stable"
    client.close()


async def test_a_chunked_answer_whose_body_came_with_its_head_arrives_whole(
    gateway: GatewayFactory,
) -> None:
    head = b"HTTP/1.1 201 Made\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    proxy, _ = await gateway(all_at_once(head, body))
    client = await RawClient.connect(proxy.proxy_url)
    for version, framing in ((b"1.1", "chunked"), (b"1.0", None)):
        await client.send(POST % version)
        got = await client.answer()
        assert (got.status, got.reason, got.clean) == (201, "Made", True)
        assert got.body == b"hello world"
        assert got.header("transfer-encoding") == framing
    client.close()


async def test_the_head_of_a_stream_is_not_held_back_for_its_first_piece(
    gateway: GatewayFactory,
) -> None:
    released = asyncio.Event()

    async def script(connection: PeerConnection, index: int) -> None:
        await connection.request()
        connection.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        await released.wait()  # the body comes only once the client has the head
        event = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
        connection.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))

    proxy, _ = await gateway(script)
    client = await RawClient.connect(proxy.proxy_url)
    await client.send(POST % b"1.1")
    async with asyncio.timeout(5):
        head = await client.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"X-Accel-Buffering: no\r\n" in head
    released.set()
    async with asyncio.timeout(5):
        rest = await client.reader.readuntil(b"0\r\n\r\n")
    assert b'{"content": "hi"}' in rest
    client.close()
