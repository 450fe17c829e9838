"""The upstream HTTP/1.1 client against a raw server on 127.0.0.1: keep-alive and head deadlines."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.http.client import Origin, UpstreamClient
from proxy.http.errors import UpstreamError

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def silent_after(answered: int) -> tuple[asyncio.Server, list[int]]:
    """A server that answers the first `answered` requests of each connection, then stays
    silent; it records how many connections it accepted."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        for _ in range(answered):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
            await writer.drain()
        await reader.read()  # never answers again; holds the line until the client leaves
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), connections


async def get(client: UpstreamClient, origin: Origin, first_byte_timeout: float) -> bytes:
    answer = await client.request(
        origin,
        "GET",
        target=b"/",
        headers=b"",
        body=None,
        content_length=None,
        connect_timeout=1.0,
        first_byte_timeout=first_byte_timeout,
    )
    try:
        return await answer.read(1.0, time.monotonic() + 1.0)
    finally:
        answer.release()


@pytest.mark.parametrize(("first", "second"), [(0.3, 0.3), (5.0, 0.3)])
async def test_a_reused_connection_still_times_out_waiting_for_a_head(first, second):
    server, connections = await silent_after(1)
    origin = Origin(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    client = UpstreamClient()
    try:
        assert await get(client, origin, first) == b"ok"
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(UpstreamError) as failure:
            await asyncio.wait_for(get(client, origin, second), timeout=8)
        waited = time.monotonic() - started
        assert failure.value.reason == "timeout"
        assert 0.25 <= waited < 1.5, waited  # its own deadline, not the first request's
        assert len(connections) == 1  # the second request did reuse the connection
    finally:
        client.close()
        server.close()
