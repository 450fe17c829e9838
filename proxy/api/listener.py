"""The admin API's listening socket and the limits it puts on connections.

Invariants
- No client holds the listener: a connection whose request head (or next request) has not come
  within `admin.head_timeout` is closed, a body not whole within `admin.body_timeout` is
  answered `408` and its connection closed (`proxy.api.bodies`), and beyond
  `admin.max_connections` open connections a new one is answered `503` and closed at once, so a
  slow or hostile client can neither hold the API nor take the process's file descriptors from
  the data plane.
- The limits are those of the config in force as each connection opens: a reload applies to
  new connections.
- A malformed request is logged in one line at INFO, never with a traceback that echoes what
  the client sent.
- With TLS, a connection is the API's only once its handshake is done (`proxy.http.tls`), and
  counts toward `admin.max_connections` from then on; a failed handshake is told to
  `on_refused` (reason `tls_handshake`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from proxy.api.admin import Admin
from proxy.api.answers import strict_dumps
from proxy.http.listener import Refused, unheard
from proxy.http.tls import ServerTls

log = logging.getLogger("grayscale.admin")

_REFUSAL_LOG_INTERVAL = 60.0  # seconds between warnings that connections are being refused
_BUSY_BODY = strict_dumps(
    {"error": "too_many_connections", "message": "the admin API holds admin.max_connections"}
).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class _QuietBadRequests(logging.Filter):
    """aiohttp logs a malformed request (an oversized header, say) at ERROR with a traceback that
    echoes what the client sent: a client's mistake, and maybe its secrets. Told in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadHttpMessage):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "admin request refused (%d): malformed", (error.code,)
            record.exc_info = record.exc_text = None
        return True


def _quiet_bad_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _QuietBadRequests) for f in server_log.filters):
        server_log.addFilter(_QuietBadRequests())


class _Connection(web.RequestHandler):
    """One admin connection, counted among the listener's open ones until it is lost."""

    def __init__(self, open_connections: set[_Connection], manager: web.Server, **options: Any):
        super().__init__(manager, **options)
        self._open = open_connections

    def connection_lost(self, exc: BaseException | None) -> None:
        self._open.discard(self)
        super().connection_lost(exc)


class _Refused(asyncio.Protocol):
    """A connection beyond `admin.max_connections`: told `503` and closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # (uvloop's are not its subclasses)
        stream.write(_BUSY)
        stream.close()


class AdminListener:
    """The admin API's listening socket, with the limits of `admin` in the config in force
    (read as each connection opens, so a reload applies to new connections): the head and
    idle timeout (aiohttp's keep-alive timeout, which closes a connection still waiting for a
    whole request head), the body timeout (handlers read bodies within it; a body no handler
    reads is drained for at most as long after the answer), and the cap on open connections."""

    def __init__(self, admin: Admin, tls: ServerTls | None = None, on_refused: Refused = unheard):
        """`tls`: the listener's TLS (None: clear text); `on_refused`: told of each failed TLS
        handshake."""
        _quiet_bad_requests()
        self._admin = admin
        self.tls = tls
        self._on_refused = on_refused
        self._runner = web.AppRunner(admin.build_app(), access_log=None, shutdown_timeout=5.0)
        self._server: asyncio.Server | None = None
        self._open: set[_Connection] = set()
        self._refused = 0  # connections refused since the last warning
        self._warned_at = -math.inf

    @property
    def open_connections(self) -> int:
        """How many connections are open (refused ones aside)."""
        return len(self._open)

    async def start(self, host: str, port: int, *, reuse_port: bool) -> tuple[str, int]:
        """Listen on `host`:`port`; the address bound (a port 0 is chosen by the system)."""
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept if self.tls is None else self._secure_accept,
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        found = self._server.sockets[0].getsockname()
        return str(found[0]), int(found[1])

    async def stop(self) -> None:
        """Stop accepting, then let the requests in flight finish (for at most 5 s)."""
        if self._server is not None:
            self._server.close()
        if self.tls is not None:
            self.tls.abort()
        await self._runner.cleanup()  # (which closes the connections)
        if self._server is not None:
            await self._server.wait_closed()

    def _secure_accept(self) -> asyncio.BaseProtocol:
        assert self.tls is not None
        return self.tls.protocol(lambda _alpn: self._accept(), self._handshake_failed)

    def _handshake_failed(self, peer: str | None, detail: str) -> None:
        self._on_refused("tls_handshake", peer, f"admin API: {detail}")

    def _accept(self) -> asyncio.BaseProtocol:
        limits = self._admin.config.admin
        if len(self._open) >= limits.max_connections:
            self._note_refusal(limits.max_connections)
            return _Refused()
        manager = self._runner.server
        assert manager is not None  # (set up before the socket listens)
        connection = _Connection(
            self._open,
            manager,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=limits.head_timeout,
            lingering_time=limits.body_timeout,
            access_log=None,
        )
        self._open.add(connection)
        return connection

    def _note_refusal(self, cap: int) -> None:
        """Warn that connections are refused, at most once a minute, with how many."""
        self._refused += 1
        now = time.monotonic()
        if now - self._warned_at >= _REFUSAL_LOG_INTERVAL:
            log.warning(
                "the admin API holds admin.max_connections (%d): %d connection(s) refused",
                cap,
                self._refused,
            )
            self._warned_at, self._refused = now, 0
