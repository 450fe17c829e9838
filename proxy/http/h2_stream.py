"""One request's stream on an HTTP/2 upstream connection (`h2_upstream_connection`): what has
come of its answer, what its reader and its sender wait for, and how it ended.

Invariants
- A stream's answer ends one way: `complete` (END_STREAM came), or `error` set (and then never
  complete); a failure after the end changes nothing of the answer.
- `stopped`: nothing more of the request is sent on it (it was reset, failed, or the upstream
  wants no more after a complete answer).
- `unacked` counts the flow-controlled bytes in `chunks` (and their padding) that the
  connection has not yet acknowledged to the upstream.
"""

from __future__ import annotations

import asyncio
from collections import deque

from proxy.http.errors import UpstreamError
from proxy.http.upstream_connection import Interim

Fields = list[tuple[bytes, bytes]]


class StreamRefused(UpstreamError):
    """The upstream did not process the stream (GOAWAY above it, or REFUSED_STREAM): the request
    may be sent again, on another connection. Its reason is `reset`."""

    retryable = True

    def __init__(self, detail: str):
        super().__init__("reset", detail)


class H2Stream:
    """One request's stream: its answer's head, the body received and not yet read, its
    trailers, and how it ended."""

    __slots__ = (
        "awaiting_body",
        "chunks",
        "complete",
        "content_length",
        "error",
        "head",
        "headers",
        "interim",
        "interim_bytes",
        "sid",
        "status",
        "stopped",
        "trailers",
        "unacked",
        "waiter",
        "window",
    )

    def __init__(self, sid: int, head: asyncio.Future[None], interim: Interim | None):
        self.sid = sid
        self.head = head  # done when the answer's head is in, or failed instead
        self.interim = interim
        self.interim_bytes = 0
        self.status = 0
        self.headers: Fields = []  # lower-case names, no pseudo-header fields
        self.content_length: int | None = None
        self.trailers: Fields = []
        self.chunks: deque[bytes] = deque()
        self.unacked = 0  # flow-controlled bytes received and not yet acknowledged
        self.complete = False  # the answer ended (END_STREAM)
        self.stopped = False  # nothing more is sent on it (reset, failed, or the connection gone)
        self.error: BaseException | None = None  # why the answer cannot complete
        self.awaiting_body = False  # its sender waits for the next piece of the request body
        self.waiter: asyncio.Future[None] | None = None  # a reader waiting for more
        self.window: asyncio.Future[None] | None = None  # a sender waiting for WINDOW_UPDATE

    def wake(self) -> None:
        """Wake whoever waits on the stream: its reader and its sender."""
        for future in (self.waiter, self.window):
            if future is not None and not future.done():
                future.set_result(None)
