"""The data plane's HTTP/1.1 listener on real sockets: framing, keep-alive, limits, drain."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from proxy.http.client_connection import MAX_HEAD
from proxy.http.listener import Listener
from proxy.http.request import Request, routing_path


@dataclass
class Seen:
    """What the test handler saw and the switches a test flips."""

    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


async def handler(request: Request, seen: Seen) -> None:
    """Answers by path: /echo describes the request, others exercise one behaviour each."""
    if request.path == "/echo":
        body = await request.read()
        document = {
            "method": request.method,
            "target": request.target,
            "path": request.path,
            "version": request.version,
            "user": request.header("X-USER-ID"),
            "a": request.query("a"),
            "cookie": request.cookie("session"),
            "body": len(body),
        }
        request.reply(200, b"Content-Type: application/json\r\n", json.dumps(document).encode())
    elif request.path == "/stream":
        request.start(200, b"Content-Type: text/plain\r\n", None)
        for part in (b"one,", b"two,", b"three"):
            await request.write(part)
        request.end()
    elif request.path == "/no-content":
        request.reply(204, b"", b"")
    elif request.path == "/refuse-body":
        request.reply(413, b"", b"too large")  # answered without reading the body
    elif request.path == "/boom":
        raise RuntimeError("handler bug")
    elif request.path == "/boom-late":
        request.start(200, b"", None)
        await request.write(b"partial")
        raise RuntimeError("handler bug mid-answer")
    elif request.path == "/hang":
        seen.entered.set()
        try:
            await seen.release.wait()
        except asyncio.CancelledError:
            seen.cancelled.set()
            raise
        request.reply(200, b"", b"released")
    elif request.path == "/stall":
        seen.entered.set()
        await asyncio.sleep(3600)
    else:
        request.reply_json(404, {"error": "nothing here"})


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[tuple[Listener, Seen, int]]]]:
    listeners: list[Listener] = []

    async def start(
        keepalive_timeout: float = 75.0, body_timeout: float = 60.0
    ) -> tuple[Listener, Seen, int]:
        seen = Seen()

        async def handle(request: Request) -> None:
            await handler(request, seen)

        listener = Listener(handle, keepalive_timeout=keepalive_timeout, body_timeout=body_timeout)
        await listener.start("127.0.0.1", 0)
        listeners.append(listener)
        return listener, seen, listener.address[1]

    yield start
    for listener in listeners:
        await listener.stop(0.1)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader, head_only: bool = False) -> Answer:
    """One answer off the wire: Content-Length, chunked, or up to the close."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if head_only or status in (100, 204, 304):
        return Answer(status, headers, b"")
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await asyncio.wait_for(reader.read(), timeout=5)
    return Answer(status, headers, body)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout=5) == b""
    except ConnectionResetError:
        return True


async def test_keep_alive_answers_requests_in_order_on_one_connection(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    for i in range(3):
        writer.write(f"GET /echo?a={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = await read_answer(reader)
        assert answer.status == 200 and "connection" not in answer.headers
        assert json.loads(answer.body)["a"] == str(i)
    writer.close()


async def test_pipelined_requests_are_answered_in_order(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(
        b"POST /echo?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /echo?a=3 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    first, second, third = [await read_answer(reader) for _ in range(3)]
    assert json.loads(first.body)["body"] == 5
    assert second.body == b"one,two,three"
    assert json.loads(third.body)["a"] == "3"
    writer.close()


async def test_request_facts_are_parsed(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(
        b"GET /echo?a=%20x&a=2 HTTP/1.1\r\nHost: x\r\nx-user-id: u-1\r\n"
        b"Cookie: theme=dark; session=s-9\r\n\r\n"
    )
    seen = json.loads((await read_answer(reader)).body)
    assert (seen["user"], seen["a"], seen["cookie"]) == ("u-1", " x", "s-9")
    assert seen["target"] == "/echo?a=%20x&a=2"
    writer.close()


def test_routing_path_decodes_and_resolves_but_keeps_encoded_slashes():
    assert routing_path("/v1/a%20b?x=1") == "/v1/a b"
    assert routing_path("/v1/a%2Fb/c") == "/v1/a%2Fb/c"
    assert routing_path("/public/../admin/x") == "/admin/x"
    assert routing_path("/a/./b/") == "/a/b/"
    assert routing_path("/..") == "/"
    assert routing_path("*") == ""  # OPTIONS *: no path (absolute-form is made origin-form first)


async def test_http_1_0_answer_of_unknown_length_ends_with_the_close(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(b"GET /stream HTTP/1.0\r\n\r\n")
    answer = await read_answer(reader)
    assert "transfer-encoding" not in answer.headers
    assert answer.headers["connection"] == "close"
    assert answer.body == b"one,two,three"
    writer.close()


async def test_http_1_0_keep_alive_is_honoured(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    for _ in range(2):
        writer.write(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        answer = await read_answer(reader)
        assert answer.headers["connection"] == "keep-alive"
        assert json.loads(answer.body)["version"] == "1.0"
    writer.close()


async def test_head_and_204_answers_carry_no_body(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await read_answer(reader, head_only=True)
    assert int(head.headers["content-length"]) > 0
    writer.write(b"GET /no-content HTTP/1.1\r\nHost: x\r\n\r\n")
    empty = await read_answer(reader)
    assert empty.status == 204 and "content-length" not in empty.headers
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")  # the framing stayed in step
    assert (await read_answer(reader)).status == 200
    writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 17_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Large: " + b"a" * 8000 + b"\r\n\r\n", 0),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 8000) for i in range(9))
            + b"\r\n",
            431,
        ),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        # request smuggling: both framings at once, or a header folded onto the next line
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n0\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400),
    ],
)
async def test_bad_requests_get_a_4xx_and_the_connection_closes(serve, request_bytes, status):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(request_bytes)
    if status == 0:  # a large but acceptable head: answered normally
        assert (await read_answer(reader)).status == 404
        writer.close()
        return
    answer = await read_answer(reader)
    assert answer.status == status
    assert answer.headers["connection"] == "close"
    assert "error" in json.loads(answer.body)
    assert await closed_by_peer(reader)
    writer.close()


async def test_a_head_sent_piece_by_piece_is_bounded_too(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ")
    for _ in range(MAX_HEAD // 4096 + 2):
        writer.write(b"a" * 4096)
        await writer.drain()
        await asyncio.sleep(0.005)  # separate reads on the listener's side
    answer = await read_answer(reader)
    assert answer.status == 431
    writer.close()


@pytest.mark.logs_errors("unexpected error answering")
async def test_handler_failure_is_a_500_and_the_connection_goes_on(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await read_answer(reader)
    assert answer.status == 500 and json.loads(answer.body)["error"] == "internal"
    assert b"Traceback" not in answer.body
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(reader)).status == 200
    writer.close()


@pytest.mark.logs_errors("unexpected error answering")
async def test_handler_failure_mid_answer_cuts_the_connection(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(b"GET /boom-late HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    rest = await asyncio.wait_for(reader.read(), timeout=5)
    assert b"partial" in rest and not rest.endswith(b"0\r\n\r\n")  # no last chunk: incomplete
    writer.close()


async def test_client_leaving_cancels_the_handler(serve):
    _, seen, port = await serve()
    _, writer = await connect(port)
    writer.write(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(seen.entered.wait(), timeout=5)
    writer.close()
    await asyncio.wait_for(seen.cancelled.wait(), timeout=5)


async def test_expect_continue_is_sent_only_when_the_body_is_read(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    )
    interim = await read_answer(reader)
    assert interim.status == 100
    writer.write(b"data")
    assert json.loads((await read_answer(reader)).body)["body"] == 4
    writer.write(
        b"POST /refuse-body HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    refused = await read_answer(reader)
    assert refused.status == 413  # no 100 Continue before it: the body was never asked for
    assert refused.headers["connection"] == "close"  # the unread body cannot be skipped
    assert await closed_by_peer(reader)
    writer.close()


async def test_an_unread_body_is_drained_before_the_close(serve):
    _, _, port = await serve()
    reader, writer = await connect(port)
    writer.write(b"POST /refuse-body HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
    writer.write(b"x" * 100_000)
    answer = await read_answer(reader)
    assert answer.status == 413 and answer.body == b"too large"
    writer.write(b"x" * 100_000)  # the client finishes sending: no reset
    await writer.drain()
    assert await closed_by_peer(reader)
    writer.close()


async def test_a_body_nobody_reads_is_not_buffered_without_bound(serve):
    _, seen, port = await serve()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    sock.sendall(b"POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n")
    await asyncio.wait_for(seen.entered.wait(), timeout=5)
    accepted, block = 0, b"x" * 65536
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while loop.time() < deadline:
        try:
            accepted += sock.send(block)
        except BlockingIOError:
            await asyncio.sleep(0.05)  # (a moment to read; still full: it stopped reading)
            try:
                accepted += sock.send(block)
            except BlockingIOError:
                break
    sock.close()
    # Kernel socket buffers on loopback hold a few MiB; the listener itself reads only up to
    # its high-water mark (256 KiB) ahead of a handler that does not read.
    assert accepted < 32 * 1024 * 1024, accepted


async def test_idle_connections_and_unfinished_heads_are_closed(serve):
    _, _, port = await serve(keepalive_timeout=0.3)
    reader, writer = await connect(port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(reader)).status == 200
    assert await closed_by_peer(reader)  # idle after the answer
    reader, writer = await connect(port)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # and the rest of the head never comes
    assert await closed_by_peer(reader)
    writer.close()


async def test_drain_finishes_answers_in_progress_and_closes_idle_connections(serve):
    listener, seen, port = await serve()
    idle_reader, idle_writer = await connect(port)
    idle_writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_answer(idle_reader)
    busy_reader, busy_writer = await connect(port)
    busy_writer.write(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(seen.entered.wait(), timeout=5)
    stopping = asyncio.create_task(listener.stop(5.0))
    assert await closed_by_peer(idle_reader)
    with pytest.raises(OSError):
        await connect(port)  # no longer accepting
    seen.release.set()
    answer = await read_answer(busy_reader)
    assert (answer.status, answer.body) == (200, b"released")
    assert answer.headers["connection"] == "close"
    await asyncio.wait_for(stopping, timeout=5)
    assert not seen.cancelled.is_set()
    idle_writer.close()
    busy_writer.close()


async def test_drain_timeout_cancels_what_is_left(serve):
    listener, seen, port = await serve()
    reader, writer = await connect(port)
    writer.write(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(seen.entered.wait(), timeout=5)
    await listener.stop(0.2)
    assert seen.cancelled.is_set()
    assert await closed_by_peer(reader)
    writer.close()


async def test_a_stalled_request_body_gets_a_408_and_the_connection_closes(serve):
    _, _, port = await serve(body_timeout=0.2)
    reader, writer = await connect(port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    answer = await read_answer(reader)
    assert answer.status == 408
    assert json.loads(answer.body)["error"] == "request_timeout"
    assert answer.headers["connection"] == "close"
    assert await closed_by_peer(reader)
    writer.close()
