"""The HTTP/2 client for upstreams (`proxy.http.h2_client`) against a real HTTP/2 upstream on
127.0.0.1 (`tests.support.h2_upstream`, built on h2), over real sockets: streams, flow control
both ways, trailers, resets, GOAWAY, timeouts, early release, keep-alive, TLS with ALPN."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import h2.errors
import pytest
from hpack import NeverIndexedHeaderTuple

from proxy.http.errors import UpstreamError
from proxy.http.h2_client import H2Client
from proxy.http.h2_stream import StreamRefused
from proxy.http.h2_upstream_connection import STREAM_WINDOW
from tests.support.h2_upstream import (
    Exchange,
    H2Upstream,
    Handler,
    ask,
    echo,
    hello,
    hold,
    http1_only,
    tls_contexts,
    whole,
)
from tests.support.waiting import eventually

MiB = 1024 * 1024
CANCEL = int(h2.errors.ErrorCodes.CANCEL)
Start = Callable[..., Awaitable[H2Upstream]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start HTTP/2 upstreams; all are stopped after the test."""
    started: list[H2Upstream] = []

    async def run(handler: Handler = hello, **options: object) -> H2Upstream:
        upstream = await H2Upstream(handler, **options).start()  # type: ignore[arg-type]
        started.append(upstream)
        return upstream

    yield run
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def client() -> AsyncIterator[H2Client]:
    h2_client = H2Client()
    yield h2_client
    h2_client.close()


async def test_a_get_carries_the_pseudo_headers_and_drops_connection_fields(
    client: H2Client, start: Start
) -> None:
    upstream = await start()
    lines = (
        b"Host: elsewhere\r\nX-Model: Tiny\r\nConnection: x-hop\r\nX-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\n"
    )
    answer = await ask(client, upstream.url + "/base", target=b"/v1/models?q=1", headers=lines)
    assert answer.status == 200 and answer.reason == b""
    assert answer.content_length == len(b"GET /base/v1/models?q=1 0")
    assert (b"content-length", b"25") in answer.headers
    assert all(not name.startswith(b":") for name, _ in answer.headers)
    assert await whole(answer) == b"GET /base/v1/models?q=1 0"
    assert answer.complete and answer.trailers == []
    (received,) = upstream.requests
    assert received.headers[:4] == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"127.0.0.1:%d" % upstream.port),
        (b":path", b"/base/v1/models?q=1"),
    ]
    assert received.header(b"x-model") == b"Tiny"
    assert received.header(b"te") == b"trailers"
    for name in (b"host", b"connection", b"x-hop", b"keep-alive", b"transfer-encoding"):
        assert received.header(name) is None, name
    assert received.header(b"upgrade") is None and received.header(b"content-length") is None


async def test_a_post_larger_than_every_window_goes_and_comes_back_whole(
    client: H2Client, start: Start
) -> None:
    upstream = await start(echo)
    body = bytes(range(256)) * 4096  # 1 MiB: 16 times the upstream's window, 4 times ours
    answer = await ask(client, upstream, "POST", b"/echo", body=body)
    assert answer.content_length == MiB
    assert await whole(answer) == body
    assert upstream.requests[0].header(b"content-length") == b"%d" % MiB
    assert bytes(upstream.requests[0].body) == body


async def test_a_streamed_body_of_unknown_length_is_sent_as_it_comes(
    client: H2Client, start: Start
) -> None:
    upstream = await start(echo)

    async def pieces() -> AsyncIterator[bytes]:
        for index in range(64):
            yield bytes([index]) * 16384

    answer = await ask(client, upstream, "POST", body=pieces())
    assert await whole(answer) == b"".join(bytes([i]) * 16384 for i in range(64))
    assert upstream.requests[0].header(b"content-length") is None


async def test_the_answer_streams_while_the_request_body_still_goes(
    client: H2Client, start: Start
) -> None:
    async def duplex(exchange: Exchange) -> None:
        exchange.answer(200, [(b"content-type", b"application/grpc")])
        seen = 0
        while not exchange.received.ended:
            body = await exchange.until_body(seen)
            await exchange.send(body[seen:])
            seen = len(body)
        exchange.end([(b"grpc-status", b"0")])

    upstream = await start(duplex)
    outgoing = asyncio.Queue[bytes]()

    async def messages() -> AsyncIterator[bytes]:
        while message := await outgoing.get():
            yield message

    answer = await ask(client, upstream, "POST", b"/chat", body=messages())  # (nothing sent yet)
    replies = answer.chunks(10.0, time.monotonic() + 10.0)
    for message in (b"ping", b"pong"):
        outgoing.put_nowait(message)
        assert await anext(replies) == message
    outgoing.put_nowait(b"")
    assert [chunk async for chunk in replies] == []
    assert answer.complete and answer.trailers == [(b"grpc-status", b"0")]
    answer.release()
    assert bytes(upstream.requests[0].body) == b"pingpong"
    assert upstream.requests[0].reset is None


async def test_fifty_concurrent_streams_share_one_connection(
    client: H2Client, start: Start
) -> None:
    everyone = asyncio.Event()

    async def when_all_came(exchange: Exchange) -> None:
        if len(exchange.connection.upstream.requests) == 50:
            everyone.set()
        await everyone.wait()  # (a client sending one at a time would never get here)
        await hello(exchange)

    upstream = await start(when_all_came)
    answers = await asyncio.gather(*(ask(client, upstream, target=b"/n/%d" % i) for i in range(50)))
    bodies = await asyncio.gather(*(whole(answer) for answer in answers))
    assert bodies == [b"GET /n/%d 0" % i for i in range(50)]
    assert upstream.accepted == 1
    assert len({received.sid for received in upstream.requests}) == 50


async def test_a_full_connection_makes_the_client_open_another(
    client: H2Client, start: Start
) -> None:
    three = asyncio.Event()

    async def when_three_came(exchange: Exchange) -> None:
        if len(exchange.connection.upstream.requests) == 3:
            three.set()
        await three.wait()
        await hello(exchange)

    upstream = await start(when_three_came, max_streams=2)
    answers = await asyncio.gather(*(ask(client, upstream) for _ in range(3)))
    assert [await whole(answer) for answer in answers] == [b"GET / 0"] * 3
    assert upstream.accepted == 2
    assert sorted(received.connection for received in upstream.requests) == [0, 0, 1]


async def test_trailers_end_an_answer_and_a_trailers_only_answer_has_them_as_headers(
    client: H2Client, start: Start
) -> None:
    async def grpc(exchange: Exchange) -> None:
        await exchange.body()
        if exchange.received.header(b":path") == b"/ok":
            exchange.answer(200, [(b"content-type", b"application/grpc")])
            await exchange.send(b"\x00\x00\x00\x00\x02hi")
            exchange.end([(b"grpc-status", b"0"), (b"grpc-message", b"")])
        else:
            exchange.answer(
                200,
                [(b"content-type", b"application/grpc"), (b"grpc-status", b"14")],
                end=True,
            )

    upstream = await start(grpc)
    headers = b"Content-Type: application/grpc\r\nTE: trailers\r\n"
    ok = await ask(client, upstream, "POST", b"/ok", headers=headers, body=b"\x00" * 5)
    assert await whole(ok) == b"\x00\x00\x00\x00\x02hi"
    assert ok.trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"")]
    unavailable = await ask(client, upstream, "POST", b"/down", headers=headers, body=b"")
    assert unavailable.status == 200 and unavailable.complete
    assert (b"grpc-status", b"14") in unavailable.headers
    assert await whole(unavailable) == b"" and unavailable.trailers == []
    assert [r.header(b"te") for r in upstream.requests] == [b"trailers", b"trailers"]
    assert [len(r.headers) for r in upstream.requests] == [7, 7]  # (`te` once)


async def test_a_reset_from_the_upstream_fails_that_stream_only(
    client: H2Client, start: Start
) -> None:
    async def resets(exchange: Exchange) -> None:
        if exchange.received.sid == 3:  # mid-answer
            exchange.answer(200)
            await exchange.send(b"partial")
        if exchange.received.sid <= 3:
            exchange.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            await hello(exchange)

    upstream = await start(resets)
    with pytest.raises(UpstreamError) as before_head:
        await ask(client, upstream)
    assert before_head.value.reason == "reset" and "INTERNAL_ERROR" in before_head.value.detail
    assert not isinstance(before_head.value, StreamRefused)
    answer = await ask(client, upstream)
    with pytest.raises(UpstreamError) as mid_answer:
        await whole(answer)
    assert mid_answer.value.reason == "reset" and not answer.complete
    assert await whole(await ask(client, upstream)) == b"GET / 0"
    assert upstream.accepted == 1


async def test_a_refused_stream_is_sent_again_once(client: H2Client, start: Start) -> None:
    async def refuse(exchange: Exchange) -> None:
        if exchange.received.sid <= 3:
            exchange.reset(h2.errors.ErrorCodes.REFUSED_STREAM)
        else:
            await hello(exchange)

    upstream = await start(refuse)
    with pytest.raises(StreamRefused) as refused:  # stream 1, then stream 3: refused twice
        await ask(client, upstream, "POST", body=b"x")
    assert refused.value.retryable and refused.value.reason == "reset"
    assert "REFUSED_STREAM" in refused.value.detail
    assert await whole(await ask(client, upstream, "POST", body=b"x")) == b"POST / 1"  # stream 5
    assert [r.sid for r in upstream.requests] == [1, 3, 5]


async def test_a_goaway_fails_the_streams_above_it_retryable_and_those_below_finish(
    client: H2Client, start: Start
) -> None:
    went_away = asyncio.Event()

    async def go_away_on_the_second(exchange: Exchange) -> None:
        received = exchange.received
        if received.connection == 0 and received.sid == 1:
            await went_away.wait()
            await hello(exchange)
        elif received.connection == 0:
            exchange.goaway(last_stream_id=1)
            went_away.set()
        else:
            await hello(exchange)

    upstream = await start(go_away_on_the_second)
    first = asyncio.create_task(ask(client, upstream, target=b"/first"))
    assert await eventually(lambda: len(upstream.requests) == 1)

    async def streamed() -> AsyncIterator[bytes]:
        yield b"not sent twice"

    with pytest.raises(StreamRefused) as refused:
        await ask(client, upstream, "POST", b"/second", body=streamed())
    assert refused.value.retryable and refused.value.reason == "reset"
    assert await whole(await first) == b"GET /first 0"
    assert upstream.accepted == 1
    assert await whole(await ask(client, upstream, target=b"/third")) == b"GET /third 0"
    assert upstream.accepted == 2  # (the connection that went away takes no new stream)


async def test_a_bodiless_request_above_a_goaway_is_sent_again_on_a_new_connection(
    client: H2Client, start: Start
) -> None:
    went_away = asyncio.Event()

    async def go_away_on_the_second(exchange: Exchange) -> None:
        received = exchange.received
        if (received.connection, received.sid) == (0, 3):
            exchange.goaway(last_stream_id=1)
            went_away.set()
            return
        if (received.connection, received.sid) == (0, 1):
            await went_away.wait()
        await hello(exchange)

    upstream = await start(go_away_on_the_second)
    first = asyncio.create_task(ask(client, upstream, target=b"/first"))
    assert await eventually(lambda: len(upstream.requests) == 1)
    second = await ask(client, upstream, "POST", b"/second", body=b"ab")
    assert await whole(second) == b"POST /second 2"
    assert await whole(await first) == b"GET /first 0"
    assert [(r.connection, r.header(b":path")) for r in upstream.requests] == [
        (0, b"/first"),
        (0, b"/second"),
        (1, b"/second"),
    ]


async def test_no_head_within_the_first_byte_timeout_resets_only_that_stream(
    client: H2Client, start: Start
) -> None:
    async def slow_first(exchange: Exchange) -> None:
        if exchange.received.sid == 1:
            await hold(exchange)
        else:
            await hello(exchange)

    upstream = await start(slow_first)
    with pytest.raises(UpstreamError) as failed:
        await ask(client, upstream, first_byte_timeout=0.2)
    assert failed.value.reason == "timeout"
    assert await eventually(lambda: upstream.requests[0].reset == CANCEL)
    assert await whole(await ask(client, upstream)) == b"GET / 0"
    assert upstream.accepted == 1


async def test_a_body_still_arriving_at_the_send_timeout_is_the_clients_slowness(
    client: H2Client, start: Start
) -> None:
    upstream = await start(hold)
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"first"
        await never.wait()
        yield b"never"

    with pytest.raises(UpstreamError) as failed:
        await ask(client, upstream, "POST", body=stalls(), send_timeout=0.2)
    assert failed.value.reason == "request_timeout"
    assert await eventually(lambda: upstream.requests[0].reset == CANCEL)
    assert bytes(upstream.requests[0].body) == b"first"


async def test_releasing_an_answer_early_resets_its_stream_not_the_connection(
    client: H2Client, start: Start
) -> None:
    async def endless(exchange: Exchange) -> None:
        if exchange.received.sid == 1:
            exchange.answer(200)
            await exchange.send(b"a" * 1000)
            await exchange.until_reset()
        else:
            await hello(exchange)

    upstream = await start(endless)
    answer = await ask(client, upstream)
    async for chunk in answer.chunks(10.0, time.monotonic() + 10.0):
        assert chunk == b"a" * 1000
        break
    answer.release()
    assert not answer.complete
    assert await eventually(lambda: upstream.requests[0].reset == CANCEL)
    assert await whole(await ask(client, upstream)) == b"GET / 0"
    assert upstream.accepted == 1 and upstream.requests[1].reset is None


async def test_the_answer_comes_in_pieces_and_a_silence_times_out(
    client: H2Client, start: Start
) -> None:
    taken = asyncio.Queue[None]()

    async def in_pieces(exchange: Exchange) -> None:
        exchange.answer(200)
        for piece in (b"one", b"two", b"three"):
            await exchange.send(piece)
            await taken.get()  # (the next piece only once the client has this one)
        await exchange.until_reset()

    upstream = await start(in_pieces)
    answer = await ask(client, upstream)
    pieces = []
    with pytest.raises(UpstreamError) as failed:
        async for chunk in answer.chunks(0.5, time.monotonic() + 10.0):
            pieces.append(chunk)
            taken.put_nowait(None)
    assert pieces == [b"one", b"two", b"three"]
    assert failed.value.reason == "timeout" and not answer.complete
    answer.release()
    assert await eventually(lambda: upstream.requests[0].reset == CANCEL)


async def test_an_unread_answer_holds_at_most_a_stream_window(
    client: H2Client, start: Start
) -> None:
    sent = [0]
    exchanges: list[Exchange] = []

    async def large(exchange: Exchange) -> None:
        if exchange.received.sid > 1:
            return await hello(exchange)
        exchanges.append(exchange)
        exchange.answer(200)
        for _ in range(64):
            await exchange.send(b"x" * 16384)
            sent[0] += 16384
        exchange.end()

    upstream = await start(large)
    answer = await ask(client, upstream)
    assert await eventually(lambda: sent[0] == STREAM_WINDOW)
    # A whole exchange on the same connection: a WINDOW_UPDATE sent before it would be in.
    assert await whole(await ask(client, upstream)) == b"GET / 0"
    (exchange,) = exchanges
    window = exchange.connection.h2.local_flow_control_window(exchange.received.sid)
    assert sent[0] == STREAM_WINDOW and window == 0  # no more until the client reads
    assert await whole(answer) == b"x" * MiB
    assert sent[0] == MiB and upstream.accepted == 1


async def test_interim_answers_but_100_go_to_the_callback(client: H2Client, start: Start) -> None:
    async def hints(exchange: Exchange) -> None:
        exchange.answer(100)
        exchange.answer(103, [(b"link", b"</style.css>; rel=preload")])
        await hello(exchange)

    upstream = await start(hints)
    told: list[tuple[int, bytes, list[tuple[bytes, bytes]]]] = []
    answer = await ask(client, upstream, interim=lambda *interim: told.append(interim))
    assert told == [(103, b"", [(b"link", b"</style.css>; rel=preload")])]
    assert await whole(answer) == b"GET / 0"


async def test_a_lost_connection_fails_the_open_streams_but_not_complete_answers(
    client: H2Client, start: Start
) -> None:
    async def some_answer(exchange: Exchange) -> None:
        if exchange.received.sid == 1:
            await hello(exchange)
        elif exchange.received.sid == 3:
            exchange.answer(200)
            await exchange.send(b"partial")
        await exchange.until_reset()

    upstream = await start(some_answer)
    done = await ask(client, upstream)
    assert await eventually(lambda: done.complete)
    cut = await ask(client, upstream)
    waiting = asyncio.create_task(ask(client, upstream, first_byte_timeout=30.0))
    assert await eventually(lambda: len(upstream.requests) == 3)
    upstream.drop()
    assert await whole(done) == b"GET / 0"
    with pytest.raises(UpstreamError) as mid_answer:
        await whole(cut)
    with pytest.raises(UpstreamError) as before_head:
        await waiting
    assert mid_answer.value.reason == before_head.value.reason == "reset"
    assert not isinstance(before_head.value, StreamRefused)


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    client: H2Client, start: Start
) -> None:
    upstream = await start()
    assert await whole(await ask(client, upstream, keepalive_timeout=0.2)) == b"GET / 0"
    assert await eventually(lambda: not upstream.open, within=5.0)
    assert await whole(await ask(client, upstream, keepalive_timeout=0.2)) == b"GET / 0"
    assert upstream.accepted == 2


async def test_connecting_fails_cleanly(client: H2Client) -> None:
    server = await asyncio.start_server(http1_only, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UpstreamError) as not_h2:
            await ask(client, f"http://127.0.0.1:{port}")
        assert not_h2.value.reason == "protocol" and "HTTP/2" in not_h2.value.detail
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(UpstreamError) as refused:
        await ask(client, f"http://127.0.0.1:{port}")
    assert refused.value.reason == "connect"


async def test_a_tls_upstream_is_spoken_to_with_alpn_h2(
    client: H2Client, start: Start, tmp_path: Path
) -> None:
    server, trusting = tls_contexts(tmp_path, ["h2"])
    upstream = await start(tls=server)
    answer = await ask(client, upstream, target=b"/secure", tls=trusting)
    assert await whole(answer) == b"GET /secure 0"
    assert upstream.requests[0].header(b":scheme") == b"https"
    with pytest.raises(UpstreamError) as untrusted:  # (the system's authorities do not know it)
        await ask(client, upstream)
    assert untrusted.value.reason == "connect" and "CERTIFICATE" in untrusted.value.detail.upper()


async def test_a_tls_upstream_that_does_not_choose_h2_is_refused(
    client: H2Client, tmp_path: Path
) -> None:
    server, trusting = tls_contexts(tmp_path, ["http/1.1"])
    listener = await asyncio.start_server(http1_only, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UpstreamError) as failed:
            await ask(client, f"https://127.0.0.1:{port}", tls=trusting)
        assert failed.value.reason == "protocol" and "ALPN" in failed.value.detail
    finally:
        listener.close()
        await listener.wait_closed()


async def test_credentials_and_long_values_never_enter_the_compression_context(
    client: H2Client, start: Start
) -> None:
    # One upstream connection carries many users' requests: a credential indexed in HPACK's
    # dynamic table would let a request learn another's by how well its own compresses.
    upstream = await start()
    token = b"Bearer " + b"t" * 10
    headers = b"Authorization: %s\r\nCookie: s=1\r\nX-Short: v\r\nX-Id: %s\r\n" % (token, b"i" * 60)
    for _ in range(2):
        await whole(await ask(client, upstream, headers=headers))
    for received in upstream.requests:
        kinds = {name: type(pair) for name, pair in ((p[0], p) for p in received.headers)}
        assert kinds[b"authorization"] is NeverIndexedHeaderTuple
        assert kinds[b"cookie"] is NeverIndexedHeaderTuple
        assert kinds[b"x-id"] is NeverIndexedHeaderTuple  # (longer than LONG_VALUE)
        assert kinds[b"x-short"] is not NeverIndexedHeaderTuple
        assert received.header(b"authorization") == token


@pytest.mark.parametrize(
    ("head", "trailers", "said"),
    [
        ([(b"connection", b"close")], (), "connection-specific"),
        ([(b"X-Upper", b"1")], (), "invalid field name"),
        ([], [(b":status", b"200")], "pseudo-header in trailers"),
    ],
)
async def test_a_malformed_answer_is_a_protocol_error_of_the_connection(
    client: H2Client, start: Start, head, trailers, said
) -> None:
    async def malformed(exchange: Exchange) -> None:
        config = exchange.connection.h2.config  # (h2 would refuse to send these)
        config.validate_outbound_headers = config.normalize_outbound_headers = False
        exchange.answer(200, head)
        exchange.end(trailers)

    upstream = await start(malformed)
    with pytest.raises(UpstreamError) as failed:
        await whole(await ask(client, upstream))
    assert failed.value.reason == "protocol" and said in failed.value.detail
