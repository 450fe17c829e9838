"""One keep-alive HTTP/1.1 connection to an upstream, as a state machine whose transition table
is the code (h11's idea): every change of state goes through `_move`, and a change the table
does not hold raises `IllegalTransition` (a bug of ours, never a peer's doing).

States:
- IDLE: not in an exchange: new, or back in the pool between exchanges.
- BUSY: an exchange is in progress: its request is being sent, its answer read.
- DONE: the answer ended cleanly; its consumer may still be reading what was buffered.
- CLOSED: for good.

Transitions (`TRANSITIONS`): IDLE -begin-> BUSY -answered-> DONE -reuse-> IDLE; `close` from
IDLE, BUSY or DONE, and `lost` (the transport went away) from any state, to CLOSED. Within an
exchange, flags record what happened (`answered`, `complete`, `received`, `wrote`, `sent`,
`keep_alive`): facts about the exchange that decide the moves, not states of their own.

Invariants
- The parser is fed only while BUSY, and never beyond the end of the answer (see `framing`). A
  byte that arrives while IDLE or after the answer's end (an answer nobody asked for, the rest
  of an answer that claimed to be over) means the upstream is out of step: the connection is
  closed, and the byte never parsed as an answer.
- A connection goes back to the pool only from DONE, with the whole request sent, keep-alive
  on both sides, and nothing received past the answer.
- An answer is complete only when its message ended cleanly: by its length, by its last chunk,
  as a bodiless answer (HEAD, 204, 304), or, for a body delimited by the close, by an orderly
  close (FIN). A reset, or a close before the end, fails the exchange with `reset`.
- The answer's head is bounded: MAX_HEAD bytes, MAX_FIELDS lines. A status outside 100-599, or
  a 101 (we never ask to switch protocols), is a protocol error. Trailer fields are dropped.
- The body is framed as llhttp frames it, or the answer is refused: `Transfer-Encoding` must be
  exactly one `chunked` (any case), or name only `identity` (the body then ends with the close,
  RFC 9112 §6.3); any other list (`chunked, identity`, `identity, chunked`, `chunked` twice, a
  coding we never asked for) is a protocol error, since we could neither pass the coding on nor
  be sure where the body ends.
- An interim answer (1xx) ends with its head, whatever framing it claims (RFC 9110 §15.2: a 1xx
  has no content): the bytes after its head are parsed as the next head, so a body-looking
  payload is a protocol error, never body. Each one but a 100 (requests go out without
  `Expect`) is handed to the exchange's `interim` callback, in order, before the final answer,
  until the interim heads of the exchange pass MAX_HEAD bytes (later ones are read and dropped,
  so that an upstream cannot queue without bound toward a client that does not read).
- A reason phrase holding a control character other than HTAB (RFC 9112 §4 allows HTAB, SP,
  VCHAR and obs-text) is replaced by an empty one, for which the standard phrase of the status
  is sent: a client must ignore the phrase anyway, and intermediaries may rewrite it, so a stray
  byte there is no reason to fail an otherwise valid answer, but it is never passed on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from proxy.http import framing
from proxy.http.errors import IllegalTransition, UpstreamError
from proxy.http.headers import tokens

if TYPE_CHECKING:
    from proxy.http.pool import Pool

log = logging.getLogger("grayscale.upstream")

MAX_HEAD = 64 * 1024  # an answer's head, every byte: larger is a protocol error
MAX_FIELDS = 100  # header lines in an answer's head (or trailer lines)
READ_HIGH_WATER = 256 * 1024  # pause reading from the upstream above this much unread answer

BUSY, DONE, IDLE, CLOSED = "busy", "done", "idle", "closed"
TRANSITIONS: dict[tuple[str, str], str] = {
    (IDLE, "begin"): BUSY,
    (BUSY, "answered"): DONE,
    (DONE, "reuse"): IDLE,
    (IDLE, "close"): CLOSED,
    (BUSY, "close"): CLOSED,
    (DONE, "close"): CLOSED,
    (IDLE, "lost"): CLOSED,
    (BUSY, "lost"): CLOSED,
    (DONE, "lost"): CLOSED,
    (CLOSED, "lost"): CLOSED,
}
"""(state, event) -> the next state; any other pair is `IllegalTransition`."""
_FRAMING_NAME_LENGTHS = frozenset({14, 17, 10})  # Content-Length, Transfer-Encoding, Keep-Alive
# Bytes a reason phrase may not hold: the control characters but HTAB (CR and LF end the line).
_REASON_CONTROLS = bytes(c for c in range(32) if c != 9) + b"\x7f"

Interim = Callable[[int, bytes, list[tuple[bytes, bytes]]], None]
"""Told of an interim answer: its status, reason phrase and header fields, as received."""


class _InterimEnded(Exception):
    """Raised in a parser callback at the end of an interim answer's head: it has no body."""


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream; one exchange at a time."""

    __slots__ = (
        "_bounds",
        "_buffered",
        "_chunks",
        "_codings",
        "_error",
        "_head",
        "_head_deadline",
        "_in_head",
        "_interim",
        "_interim_bytes",
        "_interim_status",
        "_loop",
        "_parser",
        "_parser_at_start",
        "_raised",
        "_timer",
        "_timer_at",
        "_trailers",
        "_waiter",
        "_writable",
        "answered",
        "complete",
        "content_length",
        "expires",
        "head_only",
        "headers",
        "keep_alive",
        "keepalive_hint",
        "pool",
        "reason",
        "received",
        "reused",
        "sent",
        "state",
        "status",
        "transport",
        "wrote",
    )

    def __init__(self, pool: Pool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.state = IDLE  # until `begin`: nothing may arrive before a request is sent
        self.reused = False  # it has carried an exchange before this one
        self.expires = 0.0  # IDLE: the loop time after which it is not reused
        self._loop = asyncio.get_running_loop()
        self._writable = asyncio.Event()
        self._writable.set()
        self._timer: asyncio.TimerHandle | None = None  # checks the head deadline; lazily re-armed
        self._timer_at = 0.0
        self._bounds = framing.MessageBounds()
        self._chunks: deque[bytes] = deque()
        self._parser = httptools.HttpResponseParser(self)
        self._parser_at_start = True  # llhttp waits for a new message (else: a new parser)
        # What a callback raised to stop llhttp, which the parser's own error follows: kept here,
        # not read from that error's `__context__` (which a compiled build does not set alike).
        self._raised: Exception | None = None

    def begin(self, method: str, head_deadline: float, interim: Interim | None = None) -> None:
        """Start an exchange: its answer's head must be in by `head_deadline` (loop time);
        `interim` is told of the interim answers that come before it (see the module's rules)."""
        self._move("begin")
        self.head_only = method == "HEAD"
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []  # the final answer's, as received
        self.content_length: int | None = None
        self._codings: list[bytes] | None = None  # Transfer-Encoding values
        self.keep_alive = False
        self.keepalive_hint: float | None = None  # the upstream's Keep-Alive: timeout=N
        self.answered = False  # the final answer's head is in
        self.complete = False  # the answer ended cleanly
        self.received = False  # any byte arrived during this exchange
        self.wrote = False  # any byte of the request was written
        self.sent = False  # the whole request went out (not cut short by an early answer)
        self._in_head = True
        self._trailers = 0
        self._interim = interim
        self._interim_bytes = 0  # the interim heads' bytes so far
        self._interim_status = 0
        self._head: asyncio.Future[None] = self._loop.create_future()
        self._chunks.clear()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        if not self._parser_at_start:  # after a HEAD answer llhttp still waits for its body
            self._parser = httptools.HttpResponseParser(self)
        self._parser_at_start = False
        self._bounds.begin()
        self.expect_head_by(head_deadline)

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.state != BUSY:
            return self._poison("outside an exchange" if self.state == IDLE else "after the answer")
        self.received = True
        bounds = self._bounds
        start, size = 0, len(data)
        head_end = bounds.whole_head(data, MAX_HEAD)
        if head_end:
            start = self._whole_read(data, head_end)
        while start < size:
            if bounds.mode == framing.DONE:
                return self._poison("after the answer")
            end = bounds.piece(data, start)
            if bounds.head_bytes > MAX_HEAD:
                return self._fail(UpstreamError("protocol", "the answer's head is too large"))
            try:
                self._parser.feed_data(framing.part(data, start, end))
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                raised, self._raised = self._raised, None
                if not isinstance(raised, _InterimEnded):
                    return self._parse_failed(exc, raised)
                self._interim_ended()  # (a head piece ends with its head: nothing is left over)
                if self.state != BUSY:
                    return None
            start = end

    def _whole_read(self, data: bytes, head_end: int) -> int:
        """Parse a read that begins with a whole head in one go (the common case, and cheaper
        than in pieces). The parser is stopped where a message would begin after the answer (a
        protocol error) or at the end of an interim answer's head (what follows is parsed in
        pieces). Returns where parsing in pieces goes on: the size of `data` when all is parsed
        or it failed."""
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            raised, self._raised = self._raised, None
            if not isinstance(raised, _InterimEnded):
                self._parse_failed(exc, raised)
                return len(data)
            self._interim_ended()
            return head_end if self.state == BUSY else len(data)
        self._bounds.took(data, head_end)
        return len(data)

    def _interim_ended(self) -> None:
        """An interim answer's head is complete: hand it on, and read the next head."""
        self._parser = httptools.HttpResponseParser(self)  # llhttp stops only by failing
        bounds = self._bounds
        self._interim_bytes += bounds.head_bytes
        bounds.begin()
        status, interim = self._interim_status, self._interim
        if status != 100 and interim is not None and self._interim_bytes <= MAX_HEAD:
            interim(status, self.reason, self.headers)

    def _parse_failed(
        self,
        exc: httptools.HttpParserError | httptools.HttpParserUpgrade,
        raised: Exception | None,
    ) -> None:
        """The parser failed on the answer: `raised` is what a callback raised to stop it."""
        if self.complete:
            return self._poison("after the answer")
        if isinstance(exc, httptools.HttpParserUpgrade):
            return self._fail(UpstreamError("protocol", "the upstream switched protocols"))
        if isinstance(raised, UpstreamError):
            return self._fail(raised)
        if isinstance(exc, httptools.HttpParserCallbackError):
            raise exc
        return self._fail(UpstreamError("protocol", f"bad upstream answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._writable.set()
        if self.state == BUSY:  # the upstream closed the connection (we did not)
            if self.answered and self._bounds.mode == framing.UNTIL_CLOSE and exc is None:
                self._end_of_answer()  # an orderly close ends a body delimited by the close
            else:
                self._fail(UpstreamError("reset", "the upstream closed the connection"))
        self._move("lost")

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- httptools callbacks ------------------------------------------------------------------

    def _stop(self, exc: Exception) -> Exception:
        """`exc`, noted as what stops the parser: a callback raises what this returns."""
        self._raised = exc
        return exc

    def on_message_begin(self) -> None:
        if self.complete:
            raise self._stop(
                framing.Stop()
            )  # a message after the one awaited, in a whole read (see _whole_read)
        self._in_head, self._trailers = True, 0
        self.reason = b""
        self.headers = []
        self.content_length = None
        self._codings = None
        self.keepalive_hint = None

    def on_status(self, status: bytes) -> None:
        self.reason += status  # (in pieces when the status line came over several reads)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a trailer field: dropped
            self._trailers += 1
            if self._trailers > MAX_FIELDS:
                raise self._stop(UpstreamError("protocol", "the answer has too many trailer lines"))
            return
        if len(name) in _FRAMING_NAME_LENGTHS:
            key = name.lower()
            if key == b"content-length":
                self.content_length = int(value)  # llhttp accepts digits only, and one length
            elif key == b"transfer-encoding":
                self._codings = [value] if self._codings is None else [*self._codings, value]
            elif key == b"keep-alive":
                self.keepalive_hint = _keepalive_timeout(value)
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if len(self.headers) > MAX_FIELDS:  # (the head's size bounds them meanwhile)
            raise self._stop(UpstreamError("protocol", "the answer has too many header lines"))
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            raise self._stop(
                UpstreamError("protocol", f"the upstream answered with status {status}")
            )
        if self.reason and self.reason != self.reason.translate(None, _REASON_CONTROLS):
            self.reason = b""  # replaced by the standard phrase (see the module's rules)
        if status < 200:
            if status == 101:
                raise self._stop(UpstreamError("protocol", "the upstream switched protocols"))
            self._interim_status = status
            raise self._stop(
                _InterimEnded()
            )  # no body, whatever its head says: the next head follows
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        bodiless = self.head_only or status in {204, 304}
        if not bodiless:
            self._frame_body()
        self.answered = True
        if not self._head.done():
            self._head.set_result(None)
        if bodiless:
            self._end_of_answer()  # (llhttp does not know that a HEAD answer has no body)

    def _frame_body(self) -> None:
        """Set how the body ends (RFC 9112 §6.3): chunks, length, or the close."""
        codings = self._codings
        if codings is not None:
            if len(codings) == 1 and codings[0].strip(b" \t").lower() == b"chunked":
                return self._bounds.body(framing.CHUNKED)
            # Anything else but `identity` alone is refused: we never ask for a coding (no TE
            # header) and could not pass one on, and where llhttp ends a body under such a list
            # (`chunked, identity`: at the close) is not where its chunks would.
            named = tokens(codings)
            if not named or any(coding != b"identity" for coding in named):
                detail = b", ".join(codings).decode("latin-1")
                raise self._stop(
                    UpstreamError("protocol", f"the upstream's Transfer-Encoding is {detail!r}")
                )
        elif self.content_length is not None:
            return self._bounds.body(framing.LENGTH, self.content_length)
        self._bounds.body(framing.UNTIL_CLOSE)
        self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self.complete:
            raise self._stop(framing.Stop())  # a body after a HEAD answer: a protocol error
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._parser_at_start = True
        if not self.complete:
            self._end_of_answer()

    # --- exchange -----------------------------------------------------------------------------

    def _move(self, event: str) -> None:
        """Take the transition `event` from the current state (see `TRANSITIONS`)."""
        state = TRANSITIONS.get((self.state, event))
        if state is None:
            raise IllegalTransition(f"{event!r} in state {self.state!r}")
        self.state = state

    def _end_of_answer(self) -> None:
        self.complete = True
        self._move("answered")
        self._bounds.done()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: a failure before the head is raised by `head`
        self._wake()
        self.close()

    def _poison(self, when: str) -> None:
        """The upstream sent bytes nobody asked for: it is out of step; close the connection."""
        log.warning(
            "upstream %s:%d sent data %s: connection closed", self.pool.host, self.pool.port, when
        )
        self.close()

    def close(self) -> None:
        """Close now; a request still being sent is abandoned, an answer not complete fails."""
        if self.state == CLOSED or self.transport is None:
            return
        if self.state == BUSY and self._error is None:
            self._error = UpstreamError("reset", "the connection was closed")
            self._wake()
        self._move("close")
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def send(self, data: bytes) -> bool:
        """Write `data`; False when the upstream's side is full (wait for `drained` then)."""
        if self.closed:  # (by a failure of ours, such as a timeout: that is the reason)
            cause = self._error
            if cause is not None and cause.reason != "reset":
                raise UpstreamError(cause.reason, cause.detail)
            raise UpstreamError("reset", "the upstream closed the connection")
        assert self.transport is not None
        self.wrote = True
        self.transport.write(data)
        return self._writable.is_set()

    async def drained(self) -> None:
        """Wait until the upstream's side takes more, or the upstream has answered (it may not
        read the rest of a body it has answered)."""
        if self._writable.is_set() or self._head.done():
            return
        writable = self._loop.create_task(self._writable.wait())
        try:
            await asyncio.wait((writable, self._head), return_when=asyncio.FIRST_COMPLETED)
        finally:
            writable.cancel()

    async def write(self, data: bytes) -> None:
        """Write `data`, then wait while the upstream's side is full."""
        if not self.send(data):
            await self.drained()

    @property
    def head(self) -> asyncio.Future[None]:
        """Done when the answer's head is in (or with the failure that came instead)."""
        return self._head

    def expect_head_by(self, deadline: float) -> None:
        """Fail the exchange if the answer's head is not in by `deadline` (loop time).

        One timer per connection, re-armed only when it fires early: cheaper than a timer per
        request (a request sets a number)."""
        self._head_deadline = deadline
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._check_head)

    def _check_head(self) -> None:
        self._timer = None
        if self.state != BUSY or self.answered or self._head.done():
            return  # idle, or the head came: nothing to watch until the next exchange
        if self._loop.time() >= self._head_deadline:
            self._fail(UpstreamError("timeout", "the upstream did not answer in time"))
        else:
            self._timer_at = self._head_deadline
            self._timer = self._loop.call_at(self._head_deadline, self._check_head)

    def next_chunk(self) -> bytes | None:
        """The next piece of the body if one is here: b"" at its end, None to wait for more."""
        if self._chunks:
            data = self._chunks.popleft()
            self._buffered -= len(data)
            if self._buffered <= READ_HIGH_WATER // 2 and self.transport is not None:
                self.transport.resume_reading()
            return data
        if self.complete:
            return b""
        if self._error is not None:
            raise self._error
        return None

    def take_all(self) -> bytes:
        """Every piece of the body received so far, joined."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self.transport is not None:
            self.transport.resume_reading()
        return data

    async def more(self) -> None:
        """Wait until the body has more, ends, or fails."""
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def finish(self, reusable: bool) -> None:
        """End the exchange: back to the pool when it may carry another, else closed."""
        self._interim = None  # (it holds the client's request: not kept past the exchange)
        if reusable and self.state == DONE and self.sent and self.keep_alive:
            self._move("reuse")
            self.reused = True
            self.pool.put(self)
        else:
            self.close()


def _keepalive_timeout(value: bytes) -> float | None:
    """The `timeout` parameter of a Keep-Alive header (seconds), if it has a valid one."""
    for parameter in value.split(b","):
        name, _, number = parameter.partition(b"=")
        if name.strip().lower() == b"timeout" and number.strip().isdigit():
            return float(number.strip())
    return None
