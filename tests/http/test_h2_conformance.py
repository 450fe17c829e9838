"""HTTP/2 conformance toward clients, in the manner of h2spec: raw frames over a socket (built
with hyperframe and hpack, malformed ones by hand) and the exact error the proxy answers with,
RFC 9113 section by section; where the RFC asks for a stream error only, the connection's other
streams are shown to be unaffected. Then real peers: h2load through the proxy, and the sticky
cohort over HTTP/2."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess

import hpack
import httpx
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from proxy.app.server import Server
from tests.support.configs import route_yaml
from tests.support.proxies import ProxyFactory
from tests.support.raw_peers import GatewayFactory, PeerConnection, answer
from tests.support.upstream import url_of

H2 = ", http2: true"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2LOAD_MISSING = "h2load is not installed (Debian: apt-get install nghttp2-client)"

# RFC 9113 §7 error codes
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x9

Fields = list[tuple[str, str]]


def raw_frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    """A frame as bytes, whatever its length or payload says (RFC 9113 §4.1)."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", sid)
        + payload
    )


class Peer:
    """A client on a raw TCP connection that speaks HTTP/2 frame by frame: what it sends is
    exactly what the test gives; what it receives is parsed into frames (and header blocks
    decoded) to be looked at."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.frames: list[Frame] = []
        self.heads: dict[int, list[Fields]] = {}  # each stream's decoded header blocks
        self.eof = False
        self._buffer = b""
        self._block = b""

    @classmethod
    async def open(cls, server: Server, settings: dict[int, int] | None = None) -> Peer:
        """Connect, send the preface with `settings`, and acknowledge the server's SETTINGS."""
        host, port = server.listener.address
        peer = cls(*await asyncio.open_connection(host, port))
        frame = SettingsFrame(0)
        frame.settings = settings or {}
        peer.send(PREFACE + frame.serialize())
        await peer.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        peer.send(SettingsFrame(0, flags=["ACK"]))
        return peer

    def send(self, *frames: Frame | bytes) -> None:
        for frame in frames:
            self.writer.write(frame if isinstance(frame, bytes) else frame.serialize())

    def headers(
        self,
        sid: int,
        path: str = "/",
        *,
        end_stream: bool = True,
        extra: Fields = (),  # type: ignore[assignment]
        method: str = "GET",
    ) -> HeadersFrame:
        """A request's HEADERS frame (END_HEADERS set), encoded with this connection's HPACK
        context."""
        fields = [(":method", method), (":scheme", "http"), (":authority", "t"), (":path", path)]
        fields += [("x-user-id", "conformance"), *extra]
        frame = HeadersFrame(sid, self.encoder.encode(fields), flags=["END_HEADERS"])
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    def close(self) -> None:
        self.writer.close()

    def _take(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer[:9]))
            if len(self._buffer) < 9 + length:
                return
            frame.parse_body(memoryview(self._buffer[9 : 9 + length]))
            self._buffer = self._buffer[9 + length :]
            self.frames.append(frame)
            if isinstance(frame, (HeadersFrame, ContinuationFrame)):
                self._block += frame.data
                if "END_HEADERS" in frame.flags:
                    fields = self.decoder.decode(self._block, raw=True)
                    decoded = [(n.decode(), v.decode("latin-1")) for n, v in fields]
                    self.heads.setdefault(frame.stream_id, []).append(decoded)
                    self._block = b""

    async def until(self, found: object, within: float = 5.0) -> Frame:
        """The first frame received (so far or from now on) for which `found(frame)` holds."""
        test = found  # (a callable: typed loosely to take lambdas)
        seen = 0
        async with asyncio.timeout(within):
            while True:
                for frame in self.frames[seen:]:
                    if test(frame):  # type: ignore[operator]
                        return frame
                seen = len(self.frames)
                if self.eof:
                    raise ConnectionError("the proxy closed the connection")
                data = await self.reader.read(65536)
                if not data:
                    self.eof = True
                self._take(data)

    async def goaway(self) -> GoAwayFrame:
        """The GOAWAY the proxy sends, once the connection is closed after it."""
        frame = await self.until(lambda f: isinstance(f, GoAwayFrame))
        assert isinstance(frame, GoAwayFrame)
        assert await self.closed(), "the connection stayed open after GOAWAY"
        return frame

    async def reset(self, sid: int) -> int:
        """The error code of the RST_STREAM the proxy sends on stream `sid`."""
        frame = await self.until(
            lambda f: isinstance(f, (RstStreamFrame, GoAwayFrame)) and f.stream_id in (sid, 0)
        )
        assert isinstance(frame, RstStreamFrame), f"a connection error instead: {frame}"
        return int(frame.error_code)

    async def answer(self, sid: int) -> tuple[int, bytes]:
        """The status and body of the answer on stream `sid`."""
        await self.until(lambda f: f.stream_id == sid and "END_STREAM" in f.flags)
        body = b"".join(
            f.data for f in self.frames if isinstance(f, DataFrame) and f.stream_id == sid
        )
        status = dict(self.heads[sid][0])[":status"]
        return int(status), body

    async def closed(self, within: float = 5.0) -> bool:
        """Whether the proxy closes the connection within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                while not self.eof:
                    data = await self.reader.read(65536)
                    if not data:
                        self.eof = True
                    self._take(data)
        except TimeoutError:
            return False
        except ConnectionError:
            self.eof = True
        return True


async def h2_proxy(gateway: GatewayFactory, server: str = "") -> Server:
    proxy, _ = await gateway(server=H2 + server)
    return proxy


async def still_serves(peer: Peer, sid: int) -> None:
    """The connection answers a new stream: an error on another stream left it alone."""
    peer.send(peer.headers(sid, f"/after/{sid}"))
    assert await peer.answer(sid) == (200, f"GET /after/{sid}".encode())
    assert not any(isinstance(f, GoAwayFrame) for f in peer.frames)


async def connection_error(peer: Peer, code: int) -> None:
    goaway = await peer.goaway()
    assert goaway.error_code == code, goaway


# --- §5.1, §5.1.1: stream states and identifiers ----------------------------------------------


async def test_5_1_1_headers_on_an_even_stream_id_is_a_connection_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(peer.headers(2))
    await connection_error(peer, PROTOCOL_ERROR)


async def test_5_1_1_a_stream_id_lower_than_one_used_is_a_connection_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(peer.headers(5))
    assert await peer.answer(5) == (200, b"GET /")
    peer.send(peer.headers(3))
    await connection_error(peer, PROTOCOL_ERROR)


async def test_5_1_data_on_an_idle_stream_is_a_connection_error(gateway: GatewayFactory) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(DataFrame(1, b"x"))
    await connection_error(peer, PROTOCOL_ERROR)


async def test_5_1_data_after_end_stream_is_a_stream_error_stream_closed(
    gateway: GatewayFactory,
) -> None:
    """The request ended (half-closed remote) and its answer is not sent yet: DATA on it is a
    stream error STREAM_CLOSED; the next stream is served."""
    release = asyncio.Event()

    async def held_first(connection: PeerConnection, index: int) -> None:
        while True:
            try:
                request = await connection.request(within=30)
            except (ConnectionError, TimeoutError):
                return
            if request.target == "/held":
                await release.wait()
            connection.send(answer(f"{request.method} {request.target}".encode()))

    proxy, upstream = await gateway(held_first, server=H2)
    peer = await Peer.open(proxy)
    try:
        peer.send(peer.headers(1, "/held"))
        first = await upstream.connection(0)
        await first.until(lambda data: b"\r\n\r\n" in data)  # (in progress upstream)
        peer.send(DataFrame(1, b"late", flags=["END_STREAM"]))
        assert await peer.reset(1) == STREAM_CLOSED
        await still_serves(peer, 3)
    finally:
        release.set()
        peer.close()


# --- §4.2, §6.5: frame size and SETTINGS ------------------------------------------------------


async def test_4_2_a_frame_larger_than_max_frame_size_is_a_frame_size_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(peer.headers(1, "/big", end_stream=False))
    peer.send(raw_frame(0x0, 0x1, 1, b"x" * (16384 + 1)))  # (the default SETTINGS_MAX_FRAME_SIZE)
    await connection_error(peer, FRAME_SIZE_ERROR)


async def test_6_5_a_settings_frame_whose_length_is_not_a_multiple_of_6_is_a_frame_size_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(raw_frame(0x4, 0x0, 0, b"\x00\x03\x00\x00\x00"))
    await connection_error(peer, FRAME_SIZE_ERROR)


async def test_6_5_2_enable_push_other_than_0_or_1_is_a_protocol_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(raw_frame(0x4, 0x0, 0, struct.pack(">HI", 0x2, 2)))
    await connection_error(peer, PROTOCOL_ERROR)


async def test_6_5_2_initial_window_size_above_2_31_minus_1_is_a_flow_control_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(raw_frame(0x4, 0x0, 0, struct.pack(">HI", 0x4, 2**31)))
    await connection_error(peer, FLOW_CONTROL_ERROR)


# --- §6.9: WINDOW_UPDATE and flow control -----------------------------------------------------


async def test_6_9_window_update_of_0_on_a_stream_is_a_stream_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(peer.headers(1, "/open", end_stream=False))
    peer.send(raw_frame(0x8, 0x0, 1, struct.pack(">I", 0)))
    assert await peer.reset(1) == PROTOCOL_ERROR
    await still_serves(peer, 3)


async def test_6_9_window_update_of_0_on_the_connection_is_a_connection_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(raw_frame(0x8, 0x0, 0, struct.pack(">I", 0)))
    await connection_error(peer, PROTOCOL_ERROR)


async def test_6_9_1_a_connection_window_above_2_31_minus_1_is_a_flow_control_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(WindowUpdateFrame(0, window_increment=2**31 - 1))  # (on top of 65,535)
    await connection_error(peer, FLOW_CONTROL_ERROR)


async def test_6_9_1_a_stream_window_above_2_31_minus_1_is_a_stream_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(peer.headers(1, "/open", end_stream=False))
    peer.send(WindowUpdateFrame(1, window_increment=2**31 - 1))
    assert await peer.reset(1) == FLOW_CONTROL_ERROR
    await still_serves(peer, 3)


# --- §6.10, §4.3: header blocks ---------------------------------------------------------------


async def test_6_10_a_frame_of_another_stream_inside_a_header_block_is_a_protocol_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    block = peer.encoder.encode(
        [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "/")]
    )
    peer.send(HeadersFrame(1, block[:3], flags=["END_STREAM"]))  # (no END_HEADERS)
    peer.send(peer.headers(3))
    await connection_error(peer, PROTOCOL_ERROR)


async def test_4_3_an_undecodable_header_block_is_a_compression_error(
    gateway: GatewayFactory,
) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    # An indexed field naming index 127 of an empty dynamic table (RFC 7541 §6.1).
    peer.send(HeadersFrame(1, b"\xff\x60", flags=["END_HEADERS", "END_STREAM"]))
    await connection_error(peer, COMPRESSION_ERROR)


# --- §5.1.2: concurrent streams ---------------------------------------------------------------


async def test_5_1_2_a_stream_over_the_limit_is_refused_and_later_streams_are_served(
    gateway: GatewayFactory,
) -> None:
    release = asyncio.Event()

    async def held(connection: PeerConnection, index: int) -> None:
        while True:
            try:
                request = await connection.request(within=30)
            except (ConnectionError, TimeoutError):
                return
            if request.target.startswith("/held"):
                await release.wait()
            connection.send(answer(f"{request.method} {request.target}".encode()))

    proxy, upstream = await gateway(held, server=H2 + ", http2_max_streams: 2")
    peer = await Peer.open(proxy)
    try:
        peer.send(peer.headers(1, "/held/1"), peer.headers(3, "/held/3"))
        for index in range(2):  # (both in progress upstream)
            await (await upstream.connection(index)).until(lambda data: b"\r\n\r\n" in data)
        peer.send(peer.headers(5, "/third"))
        assert await peer.reset(5) == REFUSED_STREAM  # (§5.1.2: or PROTOCOL_ERROR)
        release.set()
        assert await peer.answer(1) == (200, b"GET /held/1")
        assert await peer.answer(3) == (200, b"GET /held/3")
        await still_serves(peer, 7)
    finally:
        release.set()
        peer.close()


# --- §6.7, §5.5: PING and unknown frames ------------------------------------------------------


async def test_6_7_ping_is_answered_with_ack_and_the_same_payload(gateway: GatewayFactory) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(PingFrame(0, opaque_data=b"h2spec!!"))
    pong = await peer.until(lambda f: isinstance(f, PingFrame) and "ACK" in f.flags)
    assert isinstance(pong, PingFrame) and pong.opaque_data == b"h2spec!!"


async def test_5_5_an_unknown_frame_type_is_ignored(gateway: GatewayFactory) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(raw_frame(0xFA, 0x0, 0, b"extension"), raw_frame(0xFB, 0x0, 1, b"on stream 1"))
    await still_serves(peer, 1)
    assert not any(isinstance(f, ExtensionFrame) for f in peer.frames)


# --- §8.2, §8.1.1: malformed requests ---------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        pytest.param(("X-Upper", "1"), id="upper-case name"),
        pytest.param(("connection", "keep-alive"), id="connection"),
        pytest.param(("transfer-encoding", "chunked"), id="transfer-encoding"),
        pytest.param(("keep-alive", "timeout=5"), id="keep-alive"),
        pytest.param(("te", "gzip"), id="te other than trailers"),
        pytest.param(("x-note", "spaced "), id="a value ending in a space"),
        pytest.param(("host", "elsewhere"), id="host other than the authority"),
    ],
)
async def test_8_2_a_malformed_field_is_a_stream_error_and_never_forwarded(
    gateway: GatewayFactory, field: tuple[str, str]
) -> None:
    proxy, upstream = await gateway(server=H2)
    peer = await Peer.open(proxy)
    peer.send(peer.headers(1, "/malformed", extra=[field]))
    assert await peer.reset(1) == PROTOCOL_ERROR
    await still_serves(peer, 3)
    assert [r.target for r in upstream.requests] == ["/after/3"]


async def test_8_2_2_te_trailers_is_accepted(gateway: GatewayFactory) -> None:
    peer = await Peer.open(await h2_proxy(gateway))
    peer.send(peer.headers(1, "/te", extra=[("te", "trailers")]))
    assert await peer.answer(1) == (200, b"GET /te")


async def test_8_1_1_a_content_length_other_than_the_data_is_a_stream_error(
    gateway: GatewayFactory,
) -> None:
    proxy, upstream = await gateway(server=H2)
    peer = await Peer.open(proxy)
    peer.send(
        peer.headers(1, "/short", end_stream=False, method="POST", extra=[("content-length", "10")])
    )
    peer.send(DataFrame(1, b"abc", flags=["END_STREAM"]))
    assert await peer.reset(1) == PROTOCOL_ERROR
    await still_serves(peer, 3)
    assert "/short" not in [r.target for r in upstream.requests]  # (never whole upstream)


# --- real peers -------------------------------------------------------------------------------


async def test_h2load_through_the_proxy_succeeds_every_request(
    upstreams: tuple[object, object], start_proxy: ProxyFactory
) -> None:
    h2load = shutil.which("h2load")
    if h2load is None:
        pytest.skip(H2LOAD_MISSING)
    stable, candidate = upstreams
    proxy = await start_proxy(route_yaml(url_of(stable), url_of(candidate)), H2)  # type: ignore[arg-type]
    done = await asyncio.to_thread(
        subprocess.run,
        [
            h2load,
            "-n",
            "200",
            "-c",
            "4",
            "-m",
            "10",
            "-H",
            "x-user-id: h2load",
            proxy.proxy_url + "/v1/echo",
        ],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored",
        done.stdout,
    )
    assert found is not None, done.stdout
    total, finished, succeeded, failed, errored = map(int, found.groups())
    assert (total, finished, succeeded, failed, errored) == (200, 200, 200, 0, 0), done.stdout
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", done.stdout)
    assert statuses is not None and statuses.groups() == ("200", "0", "0", "0"), done.stdout


async def test_a_user_gets_the_same_variant_over_http2_as_over_http11(
    upstreams: tuple[object, object], start_proxy: ProxyFactory
) -> None:
    stable, candidate = upstreams
    proxy = await start_proxy(route_yaml(url_of(stable), url_of(candidate)), H2)  # type: ignore[arg-type]
    users = [f"user-{n}" for n in range(40)]

    async def variants(client: httpx.AsyncClient) -> dict[str, str]:
        answers = await asyncio.gather(
            *(client.get(proxy.proxy_url + "/v1/echo", headers={"X-User-Id": u}) for u in users)
        )
        return {u: a.headers["x-grayscale-variant"] for u, a in zip(users, answers, strict=True)}

    async with httpx.AsyncClient(http1=True, http2=False) as h1:
        over_h1 = await variants(h1)
        again_h1 = await variants(h1)
    async with httpx.AsyncClient(http1=False, http2=True) as h2c:
        over_h2 = await variants(h2c)
        again_h2 = await variants(h2c)
        assert (await h2c.get(proxy.proxy_url + "/v1/echo")).http_version == "HTTP/2"
    assert over_h2 == over_h1 == again_h1 == again_h2
    assert set(over_h2.values()) == {"stable", "candidate"}  # (share 0.5: both are reached)
