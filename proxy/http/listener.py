"""The data plane's HTTP/1.1 server: a TCP listener whose connections (`client_connection`)
hand each checked request (`request`) to one handler.

It does what a proxy's listener needs: keep-alive and pipelining (answered in order), request
bodies streamed with flow control, `100-continue` sent when the body is first read, answers of
known length, chunked or (for HTTP/1.0) delimited by closing, limits on the request head, idle,
body and send timeouts, handler cancellation when the client goes away, and a graceful drain.

Invariants
- `stop` stops accepting at once, closes idle connections, lets answers in progress finish for
  at most the drain timeout, then cancels the rest: it never waits longer.
"""

from __future__ import annotations

import asyncio

from proxy.http.client_connection import ClientConnection
from proxy.http.request import Handler

KEEPALIVE_TIMEOUT = 75.0  # an idle connection (or a request head never finished) is closed
BODY_TIMEOUT = 60.0  # longest wait for the next piece of a request body (nginx's default too)
SEND_TIMEOUT = 60.0  # longest wait for a client to take more of an answer (nginx's default too)


class Listener:
    """Serves `handler` on a TCP address until `stop`."""

    def __init__(
        self,
        handler: Handler,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
    ):
        self.handler = handler
        self.keepalive_timeout = keepalive_timeout
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        """Bind and start accepting (`reuse_port`: alongside other processes on that port)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])

    async def stop(self, drain_timeout: float) -> None:
        """Stop accepting, close idle connections, let answers in progress finish for up to
        `drain_timeout` seconds (each connection closes after its answer), then cut the rest."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        deadline = asyncio.get_running_loop().time() + drain_timeout
        for connection in list(self.connections):
            if connection.idle:
                connection.close()
        while True:
            busy = [c._task for c in self.connections if c._task is not None and not c.idle]
            remaining = deadline - asyncio.get_running_loop().time()
            if not busy or remaining <= 0:
                break
            await asyncio.wait(busy, timeout=remaining)
        for connection in list(self.connections):
            connection.cancel()
        await asyncio.sleep(0)  # let the cancelled answers unwind
