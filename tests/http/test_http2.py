"""HTTP/2 toward clients, with prior knowledge (h2c) on the HTTP/1.1 port and by ALPN over TLS:
real clients (httpx, curl) and raw frames (the `h2` library as the client), through the proxy to
a raw upstream that records the bytes it received."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest
from hyperframe.frame import DataFrame, Frame, GoAwayFrame

from proxy.app.server import Server
from tests.support.certificates import Authority
from tests.support.raw_peers import GatewayFactory, PeerConnection, answer

H2 = ", http2: true"
USER = [("x-user-id", "alice")]
DATA_ON_STREAM_0 = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"  # a DATA frame on stream 0


def base(server: Server) -> str:
    return server.proxy_url


async def test_httpx_with_prior_knowledge_gets_the_answer_and_the_variant(
    gateway: GatewayFactory,
) -> None:
    server, upstream = await gateway(server=H2)
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        got = await client.get(base(server) + "/v1/models/a?q=1", headers=USER)
    assert got.http_version == "HTTP/2"
    assert got.status_code == 200 and got.text == "GET /v1/models/a?q=1"
    assert got.headers["x-grayscale-variant"] == "stable"
    (request,) = upstream.requests
    assert request.method == "GET" and request.target == "/v1/models/a?q=1"
    sent = dict(request.headers)
    assert sent["x-user-id"] == "alice" and "host" in sent


async def test_many_streams_on_one_connection_each_get_their_own_answer(
    gateway: GatewayFactory,
) -> None:
    server, _ = await gateway(server=H2)
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        answers = await asyncio.gather(
            *(client.get(f"{base(server)}/n/{i}", headers=USER) for i in range(40))
        )
    assert [a.text for a in answers] == [f"GET /n/{i}" for i in range(40)]
    assert {a.http_version for a in answers} == {"HTTP/2"}


async def test_a_request_body_larger_than_the_windows_is_forwarded_whole(
    gateway: GatewayFactory,
) -> None:
    async def echo_length(connection: PeerConnection, index: int) -> None:
        while True:
            try:
                request = await connection.request(within=30)
            except (ConnectionError, TimeoutError):
                return
            connection.send(answer(b"%d" % len(request.body)))

    server, upstream = await gateway(echo_length, server=H2)
    body = bytes(range(256)) * 4096  # 1 MiB: four times a stream's initial window
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        got = await client.post(base(server) + "/up", headers=USER, content=body)
    assert got.status_code == 200 and got.text == str(len(body))
    assert upstream.requests[0].body == body


async def test_an_answer_larger_than_the_clients_window_waits_for_window_updates(
    gateway: GatewayFactory,
) -> None:
    big = b"x" * (3 * 1024 * 1024)
    server, _ = await gateway(
        lambda connection, index: _answer_each(connection, answer(big)), server=H2
    )
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        got = await client.get(base(server) + "/big", headers=USER)
    assert got.status_code == 200 and got.content == big


async def _answer_each(connection: PeerConnection, reply: bytes) -> None:
    while True:
        try:
            await connection.request(within=30)
        except (ConnectionError, TimeoutError):
            return
        connection.send(reply)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_with_prior_knowledge(gateway: GatewayFactory) -> None:
    server, _ = await gateway(server=H2)
    done = await asyncio.to_thread(
        subprocess.run,
        [
            "curl",
            "-s",
            "--http2-prior-knowledge",
            "-H",
            "X-User-Id: bob",
            "-i",
            base(server) + "/c",
        ],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"HTTP/2 200")
    assert done.stdout.endswith(b"GET /c")


def tls_server(authority: Authority, http2: bool) -> str:
    pem = authority.issue()
    return f', tls: {{cert_file: "{pem.cert}", key_file: "{pem.key}"}}' + (H2 if http2 else "")


async def test_over_tls_alpn_chooses_h2_and_the_upstream_hears_https(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    authority = Authority(tmp_path)
    server, upstream = await gateway(server=tls_server(authority, http2=True))
    assert base(server).startswith("https://")
    context = authority.client_context()
    async with httpx.AsyncClient(http2=True, verify=context) as client:
        got = await client.get(base(server) + "/secure", headers=USER)
    assert got.http_version == "HTTP/2" and got.text == "GET /secure"
    (request,) = upstream.requests
    assert dict(request.headers)["x-forwarded-proto"] == "https"
    if shutil.which("curl") is None:
        return
    done = await asyncio.to_thread(
        subprocess.run,
        ["curl", "-s", "-i", "--http2", "--cacert", str(authority.ca_file), base(server) + "/c"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"HTTP/2 200") and done.stdout.endswith(b"GET /c")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_openssl_s_client_is_offered_h2_and_shown_the_certificate(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    authority = Authority(tmp_path)
    server, _ = await gateway(server=tls_server(authority, http2=True))
    host, port = base(server).removeprefix("https://").rsplit(":", 1)
    done = await asyncio.to_thread(
        subprocess.run,
        [
            *("openssl", "s_client", "-connect", f"{host}:{port}", "-alpn", "h2,http/1.1"),
            *("-CAfile", str(authority.ca_file), "-verify_return_error"),
        ],
        input=b"",
        capture_output=True,
        timeout=20,
        check=False,
    )
    said = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, said
    assert "ALPN protocol: h2" in said and "Verify return code: 0 (ok)" in said, said


async def test_over_tls_without_http2_alpn_keeps_to_http11(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    authority = Authority(tmp_path)
    server, _ = await gateway(server=tls_server(authority, http2=False))
    async with httpx.AsyncClient(http2=True, verify=authority.client_context()) as client:
        got = await client.get(base(server) + "/secure", headers=USER)
    assert got.http_version == "HTTP/1.1" and got.text == "GET /secure"


async def test_without_http2_the_preface_is_refused_as_before(gateway: GatewayFactory) -> None:
    server, upstream = await gateway()
    host, port = server.listener.address
    reply = await asyncio.to_thread(_raw_exchange, host, port, _preface_and_get())
    assert reply.startswith(b"HTTP/1.1 505 ")
    assert upstream.requests == []


def _preface_and_get() -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1,
        [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "/")],
        end_stream=True,
    )
    return client.data_to_send()


def _raw_exchange(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
    return received


async def frames(
    server: Server, client: h2.connection.H2Connection, send: list[bytes]
) -> list[h2.events.Event]:
    """Speak raw HTTP/2 to the proxy: send each block of frames (made by `client`), and return
    the events `client` saw, until the proxy closes or is quiet for a second."""
    host, port = server.listener.address
    reader, writer = await asyncio.open_connection(host, port)
    events: list[h2.events.Event] = []
    try:
        for block in send:
            writer.write(block)
        await writer.drain()
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout=1.0)
            except TimeoutError:
                break
            if not data:
                break
            events += client.receive_data(data)
    finally:
        writer.close()
    return events


def _client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    return client


async def test_a_stream_without_path_is_answered_400_and_never_forwarded(
    gateway: GatewayFactory,
) -> None:
    server, upstream = await gateway(server=H2)
    client = _client()
    client.send_headers(
        1,
        [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "*")],
        end_stream=True,
    )
    events = await frames(server, client, [client.data_to_send()])
    statuses = [
        dict(e.headers)[b":status"] for e in events if isinstance(e, h2.events.ResponseReceived)
    ]
    assert statuses == [b"400"]
    assert upstream.requests == []


async def test_the_settings_announce_the_stream_limit(gateway: GatewayFactory) -> None:
    server, _ = await gateway(server=H2 + ", http2_max_streams: 7")
    client = _client()
    events = await frames(server, client, [client.data_to_send()])
    (settings,) = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
    limit = settings.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]
    assert limit.new_value == 7


async def test_a_protocol_error_closes_the_connection_with_goaway(
    gateway: GatewayFactory,
) -> None:
    server, upstream = await gateway(server=H2)
    client = _client()
    events = await frames(server, client, [client.data_to_send() + DATA_ON_STREAM_0])
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    assert upstream.requests == []


async def test_a_reset_stream_cancels_its_upstream_exchange(gateway: GatewayFactory) -> None:
    """The client resets a stream whose answer is slow: the proxy lets go of the upstream
    connection (it sees the close), and the connection serves the next stream."""
    release = asyncio.Event()

    async def slow_then_fast(connection: PeerConnection, index: int) -> None:
        request = await connection.request(within=30)
        if request.target == "/slow":
            await release.wait()
            return
        connection.send(answer(b"fast"))

    server, upstream = await gateway(slow_then_fast, server=H2)
    client = _client()
    client.send_headers(1, _get("/slow"), end_stream=True)
    host, port = server.listener.address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(client.data_to_send())
        first = await upstream.connection(0)
        await first.request(within=5)  # (the slow request reached the upstream)
        client.reset_stream(1)
        client.send_headers(3, _get("/fast"), end_stream=True)
        writer.write(client.data_to_send())
        async with asyncio.timeout(5):
            await first.closed.wait()  # the reset stream's upstream connection was let go
            answered: dict[int, bytes] = {}
            while 3 not in answered:
                for event in client.receive_data(await reader.read(65536)):
                    if isinstance(event, h2.events.DataReceived):
                        answered[event.stream_id] = answered.get(event.stream_id, b"") + event.data
        assert answered == {3: b"fast"}
    finally:
        release.set()
        writer.close()


def _get(path: str) -> list[tuple[str, str]]:
    return [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "t"),
        (":path", path),
        ("x-user-id", "carol"),
    ]


async def _stop(server: Server) -> None:
    await server.stop()


async def _reload_without_http2(server: Server) -> None:
    config = server.config
    await server.apply(replace(config, server=replace(config.server, http2=False)))


@pytest.mark.parametrize("drain", [_stop, _reload_without_http2], ids=["stop", "reload"])
async def test_a_drain_announces_goaway_and_lets_the_stream_in_progress_finish(
    gateway: GatewayFactory, drain: Callable[[Server], Coroutine[Any, Any, None]]
) -> None:
    """A stop, or a reload that turns HTTP/2 off: GOAWAY, then the stream in progress ends."""
    release = asyncio.Event()

    async def held(connection: PeerConnection, index: int) -> None:
        await connection.request(within=30)
        await release.wait()
        connection.send(answer(b"late but whole"))

    server, upstream = await gateway(held, server=H2)
    client = _client()
    client.send_headers(1, _get("/held"), end_stream=True)
    host, port = server.listener.address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(client.data_to_send())
    await (await upstream.connection(0)).request(within=5)
    draining = asyncio.create_task(drain(server))
    received = b""
    try:
        async with asyncio.timeout(5):
            while not any(isinstance(f, GoAwayFrame) for f in _frames(received)):
                received += await reader.read(65536)
            release.set()
            while data := await reader.read(65536):  # (until the proxy closes)
                received += data
            await draining
    finally:
        release.set()
        writer.close()
    parsed = _frames(received)
    (goaway, *_) = [f for f in parsed if isinstance(f, GoAwayFrame)]
    assert goaway.last_stream_id == 1 and goaway.error_code == 0
    body = [f for f in parsed if isinstance(f, DataFrame) and f.stream_id == 1]
    assert b"".join(f.data for f in body) == b"late but whole"
    assert "END_STREAM" in body[-1].flags
    assert parsed.index(goaway) < parsed.index(body[0])  # announced before the answer ended
    if drain is _reload_without_http2:
        assert not server.listener.http2  # new connections: HTTP/1.1 only


def _frames(data: bytes) -> list[Frame]:
    """The whole frames in `data` (after the server's preface, which is frames too)."""
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


async def test_an_event_stream_reaches_the_client_event_by_event(gateway: GatewayFactory) -> None:
    """Each token is sent on as it comes: the client reads the first before the upstream sends
    the second."""
    second = asyncio.Event()

    async def tokens(connection: PeerConnection, index: int) -> None:
        await connection.request(within=30)
        connection.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b'14\r\ndata: {"t": "one"}\n\n\r\n'
        )
        await second.wait()
        connection.send(b'14\r\ndata: {"t": "two"}\n\n\r\n0\r\n\r\n')

    server, _ = await gateway(tokens, server=H2)
    client = httpx.AsyncClient(http1=False, http2=True)
    async with client, client.stream("GET", base(server) + "/chat", headers=USER) as got:
        pieces = got.aiter_bytes()
        first = await asyncio.wait_for(anext(pieces), timeout=5)
        assert first == b'data: {"t": "one"}\n\n'
        second.set()
        rest = b"".join([piece async for piece in pieces])
    assert rest == b'data: {"t": "two"}\n\n'


async def test_head_and_bodyless_answers_send_no_data(gateway: GatewayFactory) -> None:
    async def no_content(connection: PeerConnection, index: int) -> None:
        await _answer_each(connection, b"HTTP/1.1 204 No Content\r\n\r\n")

    server, _ = await gateway(no_content, server=H2)
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        got = await client.get(base(server) + "/empty", headers=USER)
    assert got.status_code == 204 and got.content == b""
    assert "content-length" not in got.headers
