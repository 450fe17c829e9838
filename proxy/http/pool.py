"""Idle keep-alive connections to one upstream origin.

Invariants
- Only IDLE connections are in the pool, and one that closed while idle (the upstream closed
  it, or it sent bytes nobody asked for) is never handed out.
- A connection idle for longer than `keepalive_timeout`, or than the upstream's own announced
  `Keep-Alive: timeout` less a second, is closed rather than reused: reusing it would race the
  upstream closing it, and a request lost in that race may not be sent again (RFC 9110 §9.2.2).
- The most recently used connection is handed out first, so the others can expire.
- A TLS connection is made with the context `tls` holds when it is made, its server's
  certificate checked for `server_name` (also sent as SNI).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from proxy.http.errors import UpstreamError
from proxy.http.upstream_connection import UpstreamConnection

KEEPALIVE_TIMEOUT = 4.0  # below the 5 s of uvicorn, Node.js and most servers' idle timeouts


class Pool:
    """Idle keep-alive connections to one upstream origin, and new ones on demand."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        server_name: str | None = None,
    ):
        """`server_name`: the name the server's certificate is checked for (`host` if None)."""
        self.host, self.port, self.tls = host, port, tls
        self.server_name = server_name or host
        self.keepalive_timeout = keepalive_timeout
        self._idle: deque[UpstreamConnection] = deque()  # oldest first
        self._loop = asyncio.get_running_loop()

    def put(self, connection: UpstreamConnection) -> None:
        """Keep an idle connection for reuse, unless it may not be kept at all."""
        timeout = self.keepalive_timeout
        if connection.keepalive_hint is not None:
            timeout = min(timeout, connection.keepalive_hint - 1.0)
        if timeout <= 0:
            connection.close()
            return
        connection.expires = self._loop.time() + timeout
        self._idle.append(connection)

    def idle(self) -> UpstreamConnection | None:
        """An idle connection that is open and not expired, if there is one."""
        idle = self._idle
        if not idle:
            return None
        now = self._loop.time()
        while idle and (idle[0].closed or idle[0].expires <= now):
            idle.popleft().close()
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def connect(self, connect_timeout: float) -> UpstreamConnection:
        """A new connection, ready for an exchange."""
        try:
            async with asyncio.timeout(connect_timeout):
                _, protocol = await self._loop.create_connection(
                    lambda: UpstreamConnection(self),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.server_name if self.tls else None,
                )
        except TimeoutError:
            raise UpstreamError("connect_timeout", "cannot connect in time") from None
        except OSError as exc:
            raise UpstreamError("connect", f"cannot connect: {self._why(exc)}") from None
        return protocol

    def _why(self, error: OSError) -> str:
        """Why a connection could not be made, for an operator."""
        if self.tls is not None and isinstance(error, ConnectionResetError) and not error.args:
            # (an end of file in the handshake: the upstream refused it, as a server does that
            # wants a client certificate and was shown none)
            return "the upstream closed the connection during the TLS handshake"
        return str(error.strerror or error)

    def close(self) -> None:
        """Close every idle connection."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()
