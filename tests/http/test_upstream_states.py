"""The upstream connection's transition table, driven by real exchanges with a raw upstream:
the legal paths, and the error on a move the table does not hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from proxy.http.errors import IllegalTransition
from proxy.http.pool import Pool
from proxy.http.upstream_connection import (
    BUSY,
    CLOSED,
    DONE,
    IDLE,
    TRANSITIONS,
    UpstreamConnection,
)
from tests.support.raw_peers import RawUpstream

STATES = (IDLE, BUSY, DONE, CLOSED)
EVENTS = ("begin", "answered", "reuse", "close", "lost")


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    upstream = await RawUpstream().start()
    address = urlsplit(upstream.url)
    assert address.hostname is not None and address.port is not None
    pool = Pool(address.hostname, address.port, None)
    yield pool
    pool.close()
    await upstream.stop()


async def exchange(connection: UpstreamConnection, target: bytes = b"/") -> bytes:
    """Send one GET and read its whole answer's body."""
    loop = asyncio.get_running_loop()
    connection.begin("GET", loop.time() + 5.0)
    await connection.write(b"GET %s HTTP/1.1\r\nHost: upstream\r\n\r\n" % target)
    connection.sent = True
    async with asyncio.timeout(5.0):
        await connection.head
        while not connection.complete:
            await connection.more()
    return connection.take_all()


def test_the_table_names_only_known_states_and_events_and_closed_is_final() -> None:
    for (state, event), after in TRANSITIONS.items():
        assert state in STATES and event in EVENTS and after in STATES
    assert {event for (state, event) in TRANSITIONS if state == CLOSED} == {"lost"}
    # Every state but CLOSED can be closed by us, or lost.
    for state in (IDLE, BUSY, DONE):
        assert TRANSITIONS[(state, "close")] == CLOSED
        assert TRANSITIONS[(state, "lost")] == CLOSED


async def test_an_exchange_goes_idle_busy_done_and_back_to_the_pool(pool: Pool) -> None:
    connection = await pool.connect(1.0)
    assert connection.state == IDLE
    body = await exchange(connection, b"/one")
    assert body == b"GET /one" and connection.state == DONE
    connection.finish(reusable=True)
    assert connection.state == IDLE and pool.idle() is connection
    assert await exchange(connection, b"/two") == b"GET /two"
    connection.finish(reusable=False)
    assert connection.state == CLOSED


async def test_a_second_exchange_on_a_busy_connection_is_refused(pool: Pool) -> None:
    connection = await pool.connect(1.0)
    connection.begin("GET", asyncio.get_running_loop().time() + 5.0)
    with pytest.raises(IllegalTransition, match="'begin' in state 'busy'"):
        connection.begin("GET", asyncio.get_running_loop().time() + 5.0)
    connection.close()
    assert connection.state == CLOSED


async def test_a_closed_connection_cannot_begin_again(pool: Pool) -> None:
    connection = await pool.connect(1.0)
    await exchange(connection)
    connection.close()
    with pytest.raises(IllegalTransition, match="'begin' in state 'closed'"):
        connection.begin("GET", asyncio.get_running_loop().time() + 5.0)


async def test_an_answer_that_never_ended_is_not_reused(pool: Pool) -> None:
    """`finish(reusable=True)` on a BUSY connection closes it: only DONE goes back to IDLE."""
    connection = await pool.connect(1.0)
    connection.begin("GET", asyncio.get_running_loop().time() + 5.0)
    connection.finish(reusable=True)
    assert connection.state == CLOSED and pool.idle() is None
