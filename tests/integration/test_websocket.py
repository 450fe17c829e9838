"""WebSocket through the proxy: real `websockets` servers (one per variant) and clients, on
127.0.0.1; the handshake routed as any request, then a tunnel both ways."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast

import aiohttp
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from proxy.app.server import Server
from proxy.http.tunnel import HIGH_WATER
from tests.support.certificates import Authority
from tests.support.configs import route_yaml
from tests.support.ports import free_port
from tests.support.proxies import ProxyFactory
from tests.support.upstream import build_upstream, url_of
from tests.support.waiting import eventually

MiB = 1024 * 1024
Serving = Callable[..., Awaitable[WsServer]]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def answer(connection: ServerConnection) -> None:
    """Echo every message; `who` is answered with the variant's name, `close` closes."""
    name = connection.request.headers["X-Name"] if connection.request else "?"
    try:
        async for message in connection:
            if message == "who":
                await connection.send(name)
            elif message == "close":
                await connection.close(4000, "server closes")
            else:
                await connection.send(message)
    except ConnectionClosed:
        pass


@pytest.fixture
async def ws_server() -> AsyncIterator[Serving]:
    """Start `websockets` servers on free ports (`name`: what `who` answers); all are closed
    after the test."""
    started: list[WsServer] = []

    async def start(
        name: str = "stable",
        handler: Callable[[ServerConnection], Awaitable[None]] = answer,
        **options: Any,
    ) -> WsServer:
        def named(connection: ServerConnection, request: Request) -> None:
            request.headers["X-Name"] = name

        options.setdefault("process_request", named)
        server = await serve(handler, "127.0.0.1", 0, max_size=None, ping_interval=None, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
        await server.wait_closed()


def ws_url(server: WsServer, scheme: str = "http") -> str:
    host, port = next(iter(server.sockets)).getsockname()[:2]
    return f"{scheme}://{host}:{port}"


def through(proxy: Server, path: str = "/chat") -> str:
    return proxy.proxy_url.replace("http://", "ws://") + path


def client(proxy: Server, user: str | None = "alice", **options: Any) -> connect:
    headers = {"X-User-Id": user} if user is not None else {}
    options.setdefault("ping_interval", None)
    return connect(through(proxy), additional_headers=headers, max_size=None, proxy=None, **options)


async def pair(
    ws_server: Serving, start_proxy: ProxyFactory, share: float = 0.5, extra: str = ""
) -> Server:
    stable = await ws_server("stable")
    candidate = await ws_server("candidate")
    return await start_proxy(
        route_yaml(ws_url(stable), ws_url(candidate), share=share, extra=extra)
    )


async def metrics(proxy: Server) -> Samples:
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.admin_url + "/metrics") as got,
    ):
        text = await got.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests(m: Samples, variant: str, code_class: str) -> float:
    key = (("code_class", code_class), ("route", "models"), ("variant", variant))
    return m.get(("grayscale_requests_total", key), 0.0)


async def test_messages_echo_both_ways_text_binary_and_large(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    proxy = await pair(ws_server, start_proxy, share=0.0)
    async with client(proxy) as ws:
        assert ws.response is not None
        assert ws.response.status_code == 101
        assert ws.response.headers["X-Grayscale-Variant"] == "stable"
        assert ws.response.headers["X-Grayscale-Route"] == "models"
        assert ws.response.headers["X-Grayscale-Request-Id"]
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        large = bytes(range(256)) * (4 * 1024)  # 1 MiB
        await ws.send(large)
        assert await ws.recv() == large
        await ws.send("who")
        assert await ws.recv() == "stable"
    m = await metrics(proxy)
    assert requests(m, "stable", "2xx") == 1  # the handshake, a 101


async def test_users_stick_to_their_variant_and_both_variants_get_users(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    proxy = await pair(ws_server, start_proxy, share=0.5)
    seen: dict[str, set[str]] = {}
    for i in range(16):
        user = f"user-{i}"
        for _ in range(2):
            async with client(proxy, user) as ws:
                await ws.send("who")
                served = await ws.recv()
                assert ws.response is not None
                assert ws.response.headers["X-Grayscale-Variant"] == served
                seen.setdefault(user, set()).add(str(served))
    assert all(len(variants) == 1 for variants in seen.values())
    assert set().union(*seen.values()) == {"stable", "candidate"}


async def refuse_403(connection: ServerConnection, request: Request) -> Response:
    return connection.respond(HTTPStatus.FORBIDDEN, "not you\n")


async def test_an_upstream_that_refuses_the_upgrade_is_passed_on(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    stable = await ws_server(process_request=refuse_403)
    proxy = await start_proxy(route_yaml(ws_url(stable), ws_url(stable), share=0.0))
    with pytest.raises(InvalidStatus) as refused:
        async with client(proxy):
            pass
    response = refused.value.response
    assert response.status_code == 403 and response.body == b"not you\n"
    assert response.headers["X-Grayscale-Variant"] == "stable"
    assert response.headers["Connection"] == "close"


async def test_a_plain_http_upstream_answering_200_is_passed_on(
    start_proxy: ProxyFactory,
) -> None:
    upstream = TestServer(build_upstream("plain"), host="127.0.0.1")
    await upstream.start_server()
    try:
        proxy = await start_proxy(route_yaml(url_of(upstream), url_of(upstream), share=0.0))
        with pytest.raises(InvalidStatus) as refused:
            async with client(proxy):
                pass
        response = refused.value.response
        assert response.status_code == 200 and b'"upstream": "plain"' in response.body
        # the upstream was asked to upgrade, with the handshake's fields
        assert b'"Upgrade": "websocket"' in response.body
        assert (
            b'"Sec-WebSocket-Key"' in response.body and b'"Via": "1.1 grayscale"' in response.body
        )
    finally:
        await upstream.close()


async def test_an_upstream_down_is_a_502_counted_as_its_error(start_proxy: ProxyFactory) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    proxy = await start_proxy(route_yaml(down, down, share=0.0))
    with pytest.raises(InvalidStatus) as refused:
        async with client(proxy):
            pass
    response = refused.value.response
    assert response.status_code == 502 and b"upstream_unreachable" in response.body
    assert response.headers["X-Grayscale-Variant"] == "stable"
    m = await metrics(proxy)
    assert requests(m, "stable", "error") == 1
    errors = (("reason", "connect"), ("route", "models"), ("variant", "stable"))
    assert m[("grayscale_upstream_errors_total", errors)] == 1


async def test_a_candidate_down_falls_back_to_stable(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    stable = await ws_server("stable")
    down = f"http://127.0.0.1:{free_port()}"
    proxy = await start_proxy(route_yaml(ws_url(stable), down, share=1.0))
    async with client(proxy) as ws:
        assert ws.response is not None
        assert ws.response.headers["X-Grayscale-Variant"] == "stable"
        assert ws.response.headers["X-Grayscale-Fallback"] == "connect"
        await ws.send("who")
        assert await ws.recv() == "stable"


async def test_a_tunnel_holds_a_connection_slot_of_its_upstream_until_it_ends(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    """Tunnels count toward `max_connections` as requests do: beyond them (and `max_pending`
    waiting), `503 upstream_overloaded`; the slot comes back when the tunnel ends."""
    stable = await ws_server("stable")
    url = ws_url(stable)
    limits = ", max_connections: 1, max_pending: 0, connect_timeout: 1s"
    routes = route_yaml(url, url, share=0.0).replace(", connect_timeout: 1s", limits)
    proxy = await start_proxy(routes)
    async with client(proxy) as first:
        await first.send("who")
        assert await first.recv() == "stable"
        with pytest.raises(InvalidStatus) as refused:
            async with client(proxy, user="bob"):
                pass
        response = refused.value.response
        assert response.status_code == 503 and b"upstream_overloaded" in response.body
        async with (
            aiohttp.ClientSession() as session,
            session.get(proxy.proxy_url + "/chat") as plain,
        ):
            assert plain.status == 503  # a request shares the slots

    async def served_again() -> bool:
        try:
            async with client(proxy, user="carol") as again:
                await again.send("who")
                return await again.recv() == "stable"
        except InvalidStatus:  # (the slot not given back yet)
            return False

    assert await eventually(served_again)


async def test_a_candidate_out_of_slots_falls_back_to_stable(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    stable, candidate = await ws_server("stable"), await ws_server("candidate")
    routes = route_yaml(ws_url(stable), ws_url(candidate), share=1.0).replace(
        f'candidate: {{url: "{ws_url(candidate)}", timeout: 10s, connect_timeout: 1s',
        f'candidate: {{url: "{ws_url(candidate)}", timeout: 10s, connect_timeout: 1s, '
        "max_connections: 1, max_pending: 0",
    )
    proxy = await start_proxy(routes)
    async with client(proxy) as first, client(proxy, user="bob") as second:
        assert second.response is not None
        assert second.response.headers["X-Grayscale-Fallback"] == "overloaded"
        for ws, variant in ((first, "candidate"), (second, "stable")):
            await ws.send("who")
            assert await ws.recv() == variant


async def test_a_close_from_the_client_reaches_the_server_promptly(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def note_close(connection: ServerConnection) -> None:
        await answer(connection)
        closed.set_result(connection.close_code)

    stable = await ws_server(handler=note_close)
    proxy = await start_proxy(route_yaml(ws_url(stable), ws_url(stable), share=0.0))
    async with client(proxy) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        started = time.monotonic()
        await ws.close(4001, "client leaves")
    assert await asyncio.wait_for(closed, timeout=5) == 4001
    assert time.monotonic() - started < 2


async def test_a_close_from_the_server_reaches_the_client_promptly(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    proxy = await pair(ws_server, start_proxy, share=0.0)
    async with client(proxy) as ws:
        await ws.send("close")
        with pytest.raises(ConnectionClosed) as ended:
            await asyncio.wait_for(ws.recv(), timeout=5)
    assert ended.value.rcvd is not None and ended.value.rcvd.code == 4000


async def test_a_client_that_vanishes_closes_the_upstream_side(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    ended = asyncio.Event()

    async def note_end(connection: ServerConnection) -> None:
        await answer(connection)
        ended.set()

    stable = await ws_server(handler=note_end)
    proxy = await start_proxy(route_yaml(ws_url(stable), ws_url(stable), share=0.0))
    ws = await client(proxy, close_timeout=0.1)
    await ws.send("ping")
    assert await ws.recv() == "ping"
    ws.transport.abort()  # gone without a close frame
    await asyncio.wait_for(ended.wait(), timeout=5)
    assert await eventually(lambda: not proxy.listener.connections)


async def test_a_silent_tunnel_is_cut_after_the_idle_timeout(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    stable = await ws_server()
    url = ws_url(stable)
    routes = route_yaml(url, url, share=0.0).replace(
        "timeout: 10s", "timeout: 10s, idle_timeout: 1s"
    )
    proxy = await start_proxy(routes)
    async with client(proxy) as ws:
        await ws.send("ping")  # traffic keeps it open past the idle timeout
        assert await ws.recv() == "ping"
        await asyncio.sleep(0.6)  # (under the idle timeout)
        await ws.send("ping")
        assert await ws.recv() == "ping"
        await asyncio.sleep(0.6)
        await ws.send("ping")
        assert await ws.recv() == "ping"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=5)  # then silence: cut
    assert 0.7 < time.monotonic() - started < 3


async def test_a_tunnel_outlives_the_routes_timeout(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    stable = await ws_server()
    url = ws_url(stable)
    routes = route_yaml(url, url, share=0.0, timeout="1s")
    proxy = await start_proxy(routes)
    async with client(proxy) as ws:
        for _ in range(3):
            await asyncio.sleep(0.5)  # (time passing beyond the route's timeout)
            await ws.send("ping")
            assert await ws.recv() == "ping"


async def test_a_proxy_stop_ends_tunnels_after_the_drain_timeout(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    stable = await ws_server()
    url = ws_url(stable)
    proxy = await start_proxy(route_yaml(url, url, share=0.0), ", drain_timeout: 1s")
    async with client(proxy) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        started = time.monotonic()
        await asyncio.wait_for(proxy.stop(), timeout=10)
        assert time.monotonic() - started < 4
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=5)


async def test_with_websocket_off_the_upgrade_is_dropped_and_a_plain_get_forwarded(
    start_proxy: ProxyFactory,
) -> None:
    upstream = TestServer(build_upstream("plain"), host="127.0.0.1")
    await upstream.start_server()
    try:
        url = url_of(upstream)
        proxy = await start_proxy(route_yaml(url, url, share=0.0, extra="    websocket: false\n"))
        with pytest.raises(InvalidStatus) as refused:
            async with client(proxy):
                pass
        response = refused.value.response
        assert response.status_code == 200
        assert b'"Upgrade"' not in response.body and b'"Sec-WebSocket-Key"' in response.body
    finally:
        await upstream.close()


async def test_through_a_tls_upstream(
    ws_server: Serving, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    authority = Authority(tmp_path)
    stable = await ws_server(ssl=authority.server_context(authority.issue("localhost")))
    port = ws_url(stable).rsplit(":", 1)[1]
    url = f"https://127.0.0.1:{port}"
    tls = f', ca_file: "{authority.ca_file}", server_name: localhost'
    routes = route_yaml(url, url, share=0.0).replace(
        "connect_timeout: 1s", f"connect_timeout: 1s{tls}"
    )
    proxy = await start_proxy(routes)
    async with client(proxy) as ws:
        await ws.send("who")
        assert await ws.recv() == "stable"
        await ws.send(b"x" * MiB)
        assert await ws.recv() == b"x" * MiB


async def test_a_slow_reader_is_not_buffered_without_bound(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    sent = 0

    async def flood(connection: ServerConnection) -> None:
        nonlocal sent
        chunk = b"x" * 65536
        try:
            while sent < 64 * MiB:
                await connection.send(chunk)
                sent += len(chunk)
        except ConnectionClosed:
            pass

    stable = await ws_server(handler=flood)
    proxy = await start_proxy(route_yaml(ws_url(stable), ws_url(stable), share=0.0))
    host, port = proxy.listener.address
    reader, writer = await asyncio.open_connection(host, port)
    writer.transport.set_write_buffer_limits(high=0)
    sock = writer.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    assert head.startswith(b"HTTP/1.1 101 ")
    cast(asyncio.Transport, writer.transport).pause_reading()  # a client that reads no more
    settled = -1

    def stalled() -> bool:
        nonlocal settled
        done, settled = settled == sent, sent
        return done

    assert await eventually(stalled, within=10, every=0.5)
    assert sent < 16 * MiB  # the server was held back: the proxy did not take it all in
    (connection,) = proxy.listener.connections
    tunnel = connection._request.tunnel  # (the proxy's own queue toward the client)
    assert tunnel._client.transport.get_write_buffer_size() <= HIGH_WATER + 256 * 1024
    writer.close()


async def test_http2_extended_connect_is_refused_cleanly(start_proxy: ProxyFactory) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    proxy = await start_proxy(route_yaml(down, down), ", http2: true")
    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h2c.initiate_connection()
    h2c.local_settings.update({h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
    h2c.send_headers(
        1,
        [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":authority", "x"),
            (":path", "/chat"),
            ("sec-websocket-version", "13"),
        ],
    )
    host, port = proxy.listener.address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(h2c.data_to_send())
    events: list[h2.events.Event] = []
    while not any(
        isinstance(e, h2.events.ResponseReceived | h2.events.StreamReset) for e in events
    ):
        data = await asyncio.wait_for(reader.read(65536), timeout=5)
        assert data
        events += h2c.receive_data(data)
    writer.close()
    statuses = [
        dict(e.headers)[b":status"] for e in events if isinstance(e, h2.events.ResponseReceived)
    ]
    assert statuses == [b"400"]  # (the proxy never announced SETTINGS_ENABLE_CONNECT_PROTOCOL)


HANDSHAKE = (
    b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


async def test_a_frame_sent_with_the_handshake_reaches_the_server(
    ws_server: Serving, start_proxy: ProxyFactory
) -> None:
    stable = await ws_server()
    proxy = await start_proxy(route_yaml(ws_url(stable), ws_url(stable), share=0.0))
    mask = b"\x01\x02\x03\x04"
    payload = bytes(c ^ mask[i % 4] for i, c in enumerate(b"early"))
    frame = b"\x81\x85" + mask + payload  # a masked text frame, "early"
    reader, writer = await asyncio.open_connection(*proxy.listener.address)
    writer.write(HANDSHAKE + frame)  # (before the 101: held by the proxy, then sent on)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    assert head.startswith(b"HTTP/1.1 101 ") and b"X-Grayscale-Variant: stable" in head
    assert await asyncio.wait_for(reader.readexactly(7), timeout=5) == b"\x81\x05early"
    writer.close()


async def test_a_101_to_another_protocol_is_a_502(start_proxy: ProxyFactory) -> None:
    async def switch_to_h2c(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(switch_to_h2c, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
        proxy = await start_proxy(route_yaml(url, url, share=0.0))
        with pytest.raises(InvalidStatus) as refused:
            async with client(proxy):
                pass
        response = refused.value.response
        assert response.status_code == 502 and b"upstream_protocol_error" in response.body
    finally:
        upstream.close()
        await upstream.wait_closed()


async def test_an_upstream_that_closes_right_after_its_101_ends_the_tunnel(
    start_proxy: ProxyFactory,
) -> None:
    async def switch_and_leave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x03bye"
        )
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(switch_and_leave, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
        proxy = await start_proxy(route_yaml(url, url, share=0.0))
        reader, writer = await asyncio.open_connection(*proxy.listener.address)
        writer.write(HANDSHAKE)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert await asyncio.wait_for(reader.read(), timeout=5) == b"\x81\x03bye"  # then EOF
        writer.close()
    finally:
        upstream.close()
        await upstream.wait_closed()
