"""The data plane's HTTP/1.1 server: requests parsed by llhttp (through httptools) on asyncio
protocols, answers written straight to the socket.

It does what a proxy's listener needs: keep-alive and pipelining (answered in order), request
bodies streamed with flow control, `100-continue` sent when the body is first read, answers of
known length, chunked or (for HTTP/1.0) delimited by closing, limits on the request head, idle,
body and send timeouts, handler cancellation when the client goes away, and a graceful drain.

Invariants
- One request at a time per connection. The parser is fed no further than the end of the
  request being answered (see `framing`); what the client sent after it waits unparsed until
  that answer is complete, so pipelined requests are answered in order and a malformed request
  cannot harm the ones before it.
- A handler sees only a head that is valid HTTP/1.x: version 1.0 or 1.1 (else 505); on HTTP/1.1
  exactly one Host, and a Host that is valid wherever it is sent (else 400); an origin-form
  target, or an absolute-form http(s) one, rewritten to origin-form with its authority taken as
  the host (else 400); a body framed by Content-Length or by exactly `chunked` (another coding
  before chunked: 501; chunked not last, or any Transfer-Encoding on HTTP/1.0: 400); at most
  MAX_HEAD bytes in all and MAX_FIELDS lines (431), a target of at most MAX_TARGET bytes (414).
  CONNECT is refused (405). `Upgrade` is ignored (RFC 9110 §7.8): the request is served as plain
  HTTP, its body included.
- A refused head is answered, then the connection closed: nothing after it is parsed.
- Request trailers are read and dropped: never taken for headers.
- The pieces of a request body that arrive before the handler takes them are joined: a body
  sent as a million one-byte chunks costs one short Python step per chunk in the parser, not one
  per chunk in every layer that forwards it, and goes upstream in pieces of useful size. At most
  READ_HIGH_WATER bytes (and the rest of one read) wait: reading is paused above it.
- A write to a client that stops reading waits at most `send_timeout`; then the connection is
  cut, so a reader that stalls cannot hold its upstream connection.
- Answers are framed as RFC 9112 §6 says: 204 and 304 without body or Content-Length; HEAD with
  the Content-Length the upstream gave; otherwise Content-Length, chunked, or (HTTP/1.0) the close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qsl, unquote

import httptools

from proxy.http import framing
from proxy.http.cookies import parse_cookies
from proxy.http.errors import BadRequest, ClientGone
from proxy.http.framing import CHUNKED, DONE, LENGTH, Cutter
from proxy.http.headers import tokens, valid_host

log = logging.getLogger("grayscale.listener")

MAX_TARGET = 16 * 1024  # request line target: longer is 414
MAX_FIELD = 16 * 1024  # one header line: longer is 431
MAX_HEAD = 64 * 1024  # the whole request head, every byte: larger is 431
MAX_FIELDS = 100  # header lines in a head (or trailer lines): more is 431
READ_HIGH_WATER = 256 * 1024  # pause reading from the client above this much unread body
READ_MAX_PIECES = 4096  # or when it came in more pieces than this (each costs a Python step)
HOLD_HIGH_WATER = 64 * 1024  # pause reading above this much sent ahead of the answer in progress
KEEPALIVE_TIMEOUT = 75.0  # an idle connection (or a request head never finished) is closed
BODY_TIMEOUT = 60.0  # longest wait for the next piece of a request body (nginx's default too)
SEND_TIMEOUT = 60.0  # longest wait for a client to take more of an answer (nginx's default too)
LINGER = 2.0  # after an answer sent before its request body was read, how long to drain it

Handler = Callable[["Request"], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]  # names and values as received

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_ENCODED_SLASH = re.compile("%2[fF]")
_BODYLESS_STATUS = frozenset({204, 304})


# A head that carries the body of an Upgrade request to a fresh parser (see `_after_upgrade`).
_BODY_HEADS = {
    LENGTH: b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n",
    CHUNKED: b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
}


def render(headers: list[tuple[str, str]]) -> bytes:
    """Header lines as sent: ``Name: value`` and CRLF, each."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode(
        "utf-8", "surrogateescape"
    )


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def routing_path(target: str) -> str:
    """The path a request is routed by: percent-decoded (except encoded slashes), dot segments
    resolved, without the query. The target is forwarded as received."""
    path = target.partition("?")[0]
    if not path.startswith("/"):
        return ""  # `*` (OPTIONS): no path to route by
    if "%" in path:
        path = "%2F".join(unquote(part) for part in _ENCODED_SLASH.split(path))
    if "/." in path:
        trailing = path.endswith(("/", "/.", "/.."))
        path = posixpath.normpath(path).replace("//", "/")
        path = path + "/" if trailing and path != "/" else path
    return path


def _origin_form(target: bytes) -> tuple[bytes, bytes]:
    """An absolute-form target (`http://host/path?query`) as origin-form, and its authority."""
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise _bad_target() from None
    if url.schema not in (b"http", b"https") or not url.host or url.userinfo:
        raise _bad_target()
    start = target.index(b"//") + 2
    end = min((i for i in (target.find(c, start) for c in b"/?#") if i >= 0), default=len(target))
    authority, rest = target[start:end], target[end:]
    return (rest if rest[:1] == b"/" else b"/" + rest), authority


def _bad_target() -> BadRequest:
    return BadRequest(400, "bad_request", "the request target must be a path or an http(s) URL")


def _refusal(exc: httptools.HttpParserError, method: bytes) -> BadRequest:
    """What to answer a request the parser failed on (a `BadRequest` raised in a callback, or a
    malformed request); an exception of ours that was not one is a bug, raised again."""
    cause = exc.__context__
    if isinstance(cause, BadRequest):
        return cause
    if isinstance(exc, httptools.HttpParserCallbackError):
        raise exc
    if method == b"PRI":  # the HTTP/2 connection preface
        return BadRequest(505, "http_version_not_supported", "HTTP/2 is not served: use HTTP/1.1")
    return BadRequest(400, "bad_request", f"malformed request: {exc}")


def _request_parser(connection: _Connection) -> httptools.HttpRequestParser:
    """llhttp, strict but for the version: any HTTP/x.y parses, so that the check in
    `on_headers_complete` answers the ones not served with 505 rather than a bare 400."""
    parser = httptools.HttpRequestParser(connection)
    parser.set_dangerous_leniencies(lenient_version=True)
    return parser


class _Clock:
    """The Date header's value, formatted at most once a second."""

    second = -1
    value = ""

    @classmethod
    def date(cls) -> str:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.value = now, formatdate(now, usegmt=True)
        return cls.value


class Request:
    """One request on a connection: its head (checked), its body (read once, as it arrives),
    and the methods that answer it (`reply` whole, or `start`, `write`... `end`)."""

    __slots__ = (
        "_body",
        "_connection",
        "_continue",
        "_cookies",
        "_error",
        "_framing",
        "_index",
        "_pieces",
        "_query",
        "_waiter",
        "authority",
        "body_bytes",
        "body_complete",
        "chunked",
        "content_length",
        "done",
        "has_body",
        "keep_alive",
        "keys",
        "method",
        "path",
        "raw_headers",
        "raw_target",
        "remote",
        "repeats",
        "started",
        "status",
        "target",
        "version",
    )

    def __init__(
        self,
        connection: _Connection,
        method: str,
        target: bytes,
        *,
        version: str,
        headers: RawHeaders,
        keep_alive: bool,
    ):
        """Check the head (raising `BadRequest`) and take in what it says."""
        self._connection = connection
        self.method = method
        self.version = version
        self.raw_headers = headers
        self.keep_alive = keep_alive
        self.remote = connection.remote
        self.keys: list[bytes] = []  # header names, lower case, in order
        index: dict[bytes, bytes] = {}  # the first value of each
        keys = self.keys
        repeats = False
        for name, value in headers:
            key = name.lower()
            keys.append(key)
            if key not in index:
                index[key] = value
            elif key == b"host":
                raise BadRequest(400, "bad_host", "the request has more than one Host header")
            else:
                repeats = True
        self._index = index
        self.repeats = repeats  # some header name (in any case) comes more than once
        host = index.get(b"host")
        if host is None:
            if version == "1.1":
                raise BadRequest(400, "bad_host", "an HTTP/1.1 request needs a Host header")
        elif not valid_host(host):
            raise BadRequest(400, "bad_host", "the Host header is not a valid host[:port]")
        if target[:1] == b"/":
            self.authority = host  # the host the client asked for
        elif target == b"*" and method == "OPTIONS":
            self.authority = host
        else:
            target, self.authority = _origin_form(target)
        self.raw_target = target  # origin-form: path and query, as received
        self.target = _text(target)
        self.path = routing_path(self.target)
        self.chunked = False
        if b"transfer-encoding" in index:
            self.chunked = self._chunked_framing()
        length = index.get(b"content-length")  # llhttp accepts digits only, and one length
        self.content_length = None if self.chunked or length is None else int(length)
        self.has_body = self.chunked or bool(self.content_length)
        expect = index.get(b"expect", b"").lower() == b"100-continue"
        self._continue = expect and self.has_body and version == "1.1"
        self._query: tuple[dict[str, str], frozenset[str]] | None = None
        self._cookies: dict[str, str] | None = None
        self._body = bytearray()  # what came of the body and was not yet taken
        self._pieces = 0  # how many pieces it came in
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self.body_complete = not self.has_body
        self.body_bytes = 0
        self.started = False  # the answer's head was sent
        self.done = False  # the whole answer was sent
        self.status = 0
        self._framing = ""  # how the answer's body is sent: "length", "chunked", "close", "none"

    def _chunked_framing(self) -> bool:
        """Whether Transfer-Encoding frames the body as chunks; raises when the framing cannot
        be trusted (RFC 9112 §6.1, §6.3)."""
        if self.version == "1.0":
            raise BadRequest(400, "bad_request", "Transfer-Encoding is not allowed in HTTP/1.0")
        if b"content-length" in self._index:
            raise BadRequest(400, "bad_request", "both Content-Length and Transfer-Encoding")
        codings = tokens(self.raw_values(b"transfer-encoding"))
        if codings == [b"chunked"]:
            return True
        if codings and codings[-1] == b"chunked":
            raise BadRequest(
                501, "not_implemented", "transfer codings other than chunked are not supported"
            )
        raise BadRequest(
            400, "bad_request", "the body's length is unknown: Transfer-Encoding must be chunked"
        )

    # --- what the request says ----------------------------------------------------------------

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        value = self._index.get(name.lower().encode("latin-1"))
        return None if value is None else _text(value)

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        return [_text(value) for value in self.raw_values(name.lower().encode("latin-1"))]

    def raw_values(self, key: bytes) -> list[bytes]:
        """Every value of the header whose lower-case name is `key`, as received."""
        if key not in self._index:
            return []
        pairs = zip(self.keys, self.raw_headers, strict=True)
        return [value for k, (_, value) in pairs if k == key]

    def query(self, name: str) -> str | None:
        """The first value of query parameter `name`, or None."""
        return self._parsed_query()[0].get(name)

    def query_repeated(self, name: str) -> bool:
        """Whether query parameter `name` is given more than once."""
        return name in self._parsed_query()[1]

    def _parsed_query(self) -> tuple[dict[str, str], frozenset[str]]:
        """The first value of each query parameter, and the parameters given more than once."""
        if self._query is None:
            found: dict[str, str] = {}
            repeated = set()
            query = self.target.partition("?")[2]
            # Percent-escapes that are not UTF-8 stay distinct (as surrogate escapes), like
            # raw bytes in headers: two such user ids must not fall into one bucket.
            pairs = parse_qsl(query, keep_blank_values=True, errors="surrogateescape")
            for key, value in pairs:
                if key in found:
                    repeated.add(key)
                else:
                    found[key] = value
            self._query = found, frozenset(repeated)
        return self._query

    def cookie(self, name: str) -> str | None:
        """The value of cookie `name`, or None."""
        if self._cookies is None:
            self._cookies = parse_cookies(self.header_values("cookie"))
        return self._cookies.get(name)

    # --- the body -----------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self.body_bytes += len(data)
        connection = self._connection
        if connection.discarding:
            return
        body = self._body
        body += data
        self._pieces += 1
        if len(body) > READ_HIGH_WATER or self._pieces > READ_MAX_PIECES:
            connection.pause_reading()
        if self._waiter is not None:
            self._wake()

    def _finish_body(self, error: Exception | None = None) -> None:
        if error is None:
            self.body_complete = True
        elif not self.body_complete and self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives (once: the pieces are not kept)."""
        if self._continue:
            self._continue = False
            self._connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        loop = asyncio.get_running_loop()
        while True:
            if self._body:
                data = bytes(self._body)
                self._body.clear()
                self._pieces = 0
                self._connection.resume_reading()
                yield data
            elif self.body_complete:
                return
            elif self._error is not None:
                raise self._error
            else:
                self._waiter = loop.create_future()
                try:
                    async with asyncio.timeout(self._connection.listener.body_timeout):
                        await self._waiter
                except TimeoutError:
                    raise BadRequest(
                        408, "request_timeout", "the request body stopped arriving"
                    ) from None
                finally:
                    self._waiter = None

    async def read(self) -> bytes:
        """The whole body."""
        if self.body_complete and not self._continue:  # all here already: no need to wait
            data = bytes(self._body)
            self._body.clear()
            self._connection.resume_reading()
            return data
        return b"".join([chunk async for chunk in self.chunks()])

    # --- the answer ---------------------------------------------------------------------------

    def _head(self, status: int, reason: bytes, headers: bytes, length: int | None) -> bytes:
        """The answer's head, framed for `length` body bytes (None: unknown)."""
        keep = self._connection.keeps_alive(self)
        if status in _BODYLESS_STATUS:
            framing, self._framing = b"", "none"
        elif self.method == "HEAD":
            framing = b"" if length is None else b"Content-Length: %d\r\n" % length
            self._framing = "none"
        elif length is not None:
            framing, self._framing = b"Content-Length: %d\r\n" % length, "length"
        elif self.version == "1.1":
            framing, self._framing = b"Transfer-Encoding: chunked\r\n", "chunked"
        else:
            framing, self._framing, keep = b"", "close", False
        self.started, self.status = True, status
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b"")), headers]
        parts.append(framing)
        if not keep:
            parts.append(b"Connection: close\r\n")
            self.keep_alive = False
        elif self.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def reply(self, status: int, headers: bytes, body: bytes, reason: bytes = b"") -> None:
        """Send a whole answer. `headers` are rendered lines (see `render`) that do not frame the
        body: the framing is set here."""
        head = self._head(status, reason, headers, len(body))
        self._connection.write(head + body if self._framing == "length" else head)
        self.done = True

    def reply_json(self, status: int, document: object, headers: bytes = b"") -> None:
        """Send a JSON answer made here (with a Date header); `headers` are more rendered lines."""
        ours = render(
            [("Content-Type", "application/json; charset=utf-8"), ("Date", _Clock.date())]
        )
        self.reply(status, headers + ours, json.dumps(document).encode())

    def start(self, status: int, headers: bytes, length: int | None, reason: bytes = b"") -> None:
        """Send the head of an answer whose body follows through `write`: `length` bytes, or
        of unknown length (chunked, or up to the close for an HTTP/1.0 client). `headers` are
        rendered lines that do not frame the body."""
        self._connection.write(self._head(status, reason, headers, length))

    def inform(self, status: int, headers: bytes, reason: bytes = b"") -> None:
        """Send an interim (1xx) answer ahead of the answer: to an HTTP/1.1 client only (RFC
        9110 §15.2), and not once the answer has started or the client has gone."""
        if self.version == "1.1" and not self.started and not self._connection.closed:
            reason = reason or _REASONS.get(status, b"")
            self._connection.write(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, headers))

    async def write(self, data: bytes, deadline: float | None = None) -> None:
        """Send a piece of the answer's body; waits while the client reads slower, until
        `deadline` (`time.monotonic()`) at most: then the client is cut off (`ClientGone`)."""
        if not data or self._framing == "none":
            return
        if self._framing == "chunked":
            data = b"%x\r\n%s\r\n" % (len(data), data)
        await self._connection.send(data, deadline)

    def end(self) -> None:
        """The answer's body is complete."""
        if self._framing == "chunked":
            self._connection.write(b"0\r\n\r\n")
        self.done = True

    def abort(self) -> None:
        """Cut the client connection: an answer that cannot be completed must look incomplete."""
        self.keep_alive = False
        self._connection.close()


class _Connection(asyncio.Protocol):
    """One client connection: parses requests one at a time and answers them in order."""

    __slots__ = (
        "_body_after_head",
        "_cutter",
        "_headers",
        "_held",
        "_idle_since",
        "_in_head",
        "_loop",
        "_next",
        "_parsed",
        "_parser",
        "_parsing",
        "_paused",
        "_request",
        "_send_timer",
        "_stopped",
        "_stopped_at",
        "_synthetic",
        "_target",
        "_task",
        "_timer",
        "_trailers",
        "_whole_head_end",
        "_writable",
        "closed",
        "discarding",
        "listener",
        "remote",
        "transport",
    )

    def __init__(self, listener: Listener):
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.closed = False
        self.discarding = False  # dropping the rest of an answered request's body
        self._loop = asyncio.get_running_loop()
        self._parser = _request_parser(self)
        self._cutter = Cutter()
        self._held = bytearray()  # what the client sent past the request being answered
        self._request: Request | None = None  # the request being answered
        self._parsing: Request | None = None  # the request whose body is arriving
        self._parsed: Request | None = None  # a head just parsed, handed on once it checks out
        self._task: asyncio.Task[None] | None = None  # answers this connection's requests
        self._next: asyncio.Future[None] | None = None  # set while waiting for a request
        self._writable: asyncio.Future[None] | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._stopped = False  # nothing more is parsed: a head was refused
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._in_head = False
        self._trailers = 0
        self._target = bytearray()
        self._headers: RawHeaders = []
        self._body_after_head = False  # a body is still to be parsed by a fresh parser
        self._synthetic = False  # parsing the head that carries it to that parser
        self._whole_head_end = 0  # parsing a whole read whose head ends here (see _whole_read)
        self._stopped_at = 0  # where the request parsed in that read ends

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are only alike
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        self.listener.connections.add(self)
        self._idle_since = self._loop.time()
        self._timer = self._loop.call_later(self.listener.keepalive_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._cutter.mode == DONE:  # sent ahead of the answer in progress: later
            self._hold(data)
        else:
            self._consume(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        self._cancel_timer()
        if self._send_timer is not None:
            self._send_timer.cancel()
        if self._parsing is not None:
            self._parsing._finish_body(ClientGone("the client closed the connection"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._task is not None:
            self._task.cancel()  # nobody is left to answer: stop the work for this request

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()
        self._send_timer = self._loop.call_later(self.listener.send_timeout, self._send_stalled)

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- parsing ------------------------------------------------------------------------------

    def _consume(self, data: bytes) -> None:
        """Parse `data`, no further than the end of the current request; hold the rest."""
        cutter = self._cutter
        start, size = 0, len(data)
        head_end = cutter.whole_head(data, MAX_HEAD)
        if head_end:
            start = self._whole_read(data, head_end)
            if start < 0:
                return
        while start < size:
            if cutter.mode == DONE:
                self._hold(data[start:])
                return
            end = cutter.piece(data, start)
            if cutter.head_bytes > MAX_HEAD:
                self._refuse(BadRequest(431, "head_too_large", "the request head is too large"))
                return
            try:
                self._parser.feed_data(framing.part(data, start, end))
            except httptools.HttpParserUpgrade:
                self._fresh_parser()
            except httptools.HttpParserError as exc:
                self._refuse(_refusal(exc, self._parser.get_method()))
                return
            if self._parsed is not None:  # a head was parsed, and nothing was wrong with it
                self._dispatch(self._parsed)
            start = end

    def _whole_read(self, data: bytes, head_end: int) -> int:
        """Parse a read that begins with a whole head in one go (the common case, and cheaper
        than in pieces). The parser is stopped where it would run into the next request or into
        a chunked body (whose end is not known here). Returns where parsing in pieces goes on
        (the size of `data` when all is parsed), or -1 when the request was refused."""
        self._whole_head_end = head_end
        try:
            self._parser.feed_data(data)
            if self._cutter.mode == LENGTH:
                self._cutter.left -= len(data) - head_end  # what came of the body
            goes_on = len(data)
        except httptools.HttpParserUpgrade as exc:
            self._fresh_parser()
            goes_on = int(exc.args[0])
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, framing.Stop) and self._cutter.mode != DONE:
                self._refuse(_refusal(exc, self._parser.get_method()))
                return -1
            # Stopped, or a whole request followed by bytes that are not one (they wait): llhttp
            # stops only by failing, so a new parser goes on.
            self._fresh_parser()
            goes_on = self._stopped_at
        finally:
            self._whole_head_end = 0
        if self._parsed is not None:
            self._dispatch(self._parsed)
        return goes_on

    def _hold(self, data: bytes | bytearray) -> None:
        self._held += data
        if len(self._held) > HOLD_HIGH_WATER:
            self.pause_reading()

    def _fresh_parser(self) -> None:
        """Go on with a new parser: llhttp stops at the head of an Upgrade request (the upgrade
        is ignored), and when it is stopped. A body still to come is given to the new parser
        after a head of the same framing, and the requests that follow after it."""
        self._parser = _request_parser(self)
        if self._body_after_head:
            self._body_after_head = False
            self._synthetic = True
            mode, head = self._cutter.mode, _BODY_HEADS[self._cutter.mode]
            self._parser.feed_data(head % self._cutter.left if mode == LENGTH else head)

    def _dispatch(self, request: Request) -> None:
        self._parsed = None
        self._request = request
        if self._next is not None:
            self._next.set_result(None)
        elif self._task is None:
            self._task = self._loop.create_task(self._serve())

    def _refuse(self, refused: BadRequest) -> None:
        """Stop parsing: answer the refusal now, or fail the body of the request in progress."""
        self._stopped = True
        self.pause_reading()
        if self._parsed is not None:  # its head's framing turned out wrong: the whole is refused
            self._parsed = self._parsing = None
        if self._parsing is not None:  # its body is malformed: its handler answers, or did
            self._parsing._finish_body(refused)
            if self.discarding:
                self.close()
            return
        log.info("request refused (%d): %s", refused.status, refused.message)
        body = json.dumps({"error": refused.error, "message": refused.message}).encode()
        self.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (refused.status, _REASONS[refused.status], len(body), body)
        )
        self._lingering_close()

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        if self._whole_head_end and self._cutter.mode == DONE:
            raise framing.Stop  # the next request: it waits until this one is answered
        self._in_head, self._trailers = True, 0
        self._target.clear()
        self._headers = []

    def on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        self._target += url
        if len(self._target) > MAX_TARGET:
            raise BadRequest(414, "uri_too_long", "the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD:
            raise BadRequest(431, "header_too_large", "a request header is too large")
        if self._in_head:
            self._headers.append((name, value))  # (their number is checked with the head)
        elif not self._synthetic:  # a trailer field, after a chunked body: read and dropped
            self._trailers += 1
            if self._trailers > MAX_FIELDS:
                raise BadRequest(431, "too_many_headers", "the request has too many trailers")

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        self._in_head = False
        if len(self._headers) > MAX_FIELDS:
            raise BadRequest(431, "too_many_headers", "the request has too many header lines")
        parser = self._parser
        version = parser.get_http_version()
        if version not in {"1.1", "1.0"}:
            raise BadRequest(505, "http_version_not_supported", f"HTTP/{version} is not served")
        method = parser.get_method().decode("latin-1")
        if method == "CONNECT":
            raise BadRequest(405, "method_not_allowed", "CONNECT is not served: not a proxy")
        request = Request(
            self,
            method,
            bytes(self._target),
            version=version,
            headers=self._headers,
            keep_alive=parser.should_keep_alive(),
        )
        if request.chunked:
            self._cutter.body(CHUNKED)
        elif request.content_length:
            self._cutter.body(LENGTH, request.content_length)
        self._parsing = request if request.has_body else None
        self._parsed = request
        self._body_after_head = request.has_body and parser.should_upgrade()
        if self._whole_head_end:
            self._stopped_at = self._whole_head_end + (request.content_length or 0)
            if request.chunked and not self._body_after_head:
                self._body_after_head = True
                raise framing.Stop  # where a chunked body ends is not known: it goes in pieces

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing._feed(body)

    def on_message_complete(self) -> None:
        if self._body_after_head:
            return  # llhttp skipped the body; it is parsed next (see `_fresh_parser`)
        self._synthetic = False
        self._cutter.done()
        if self._parsing is not None:
            self._parsing._finish_body()
            self._parsing = None
        if self.discarding:
            self.close()  # the unread body is over: the answer has been sent, close now

    # --- answering ----------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Answer requests in order; between them, wait for the next one."""
        try:
            while True:
                request = self._request
                if request is None:
                    if self.listener.closing:
                        self.close()
                        return
                    self._idle_since = self._loop.time()
                    self._next = self._loop.create_future()
                    try:
                        await self._next
                    finally:
                        self._next = None
                    continue
                await self._answer(request)
                self._request = None
                if self.closed:
                    return
                if not request.keep_alive:
                    self._linger_or_close(request)
                    return
                self._next_message()
        except (asyncio.CancelledError, ClientGone):
            return  # the client left, or the drain is over
        finally:
            self._task = None

    def _next_message(self) -> None:
        """Go on with what the client sent after the request just answered."""
        self._cutter.begin()
        self.resume_reading()
        if self._held:
            held = bytes(self._held)
            self._held.clear()
            self._consume(held)

    async def _answer(self, request: Request) -> None:
        try:
            await self.listener.handler(request)
        except (asyncio.CancelledError, ClientGone):
            raise
        except BadRequest as exc:  # the request's body turned out malformed, or stalled
            if not request.started:
                request.reply_json(exc.status, {"error": exc.error, "message": exc.message})
            else:
                request.abort()
            return
        except Exception:
            log.exception("unexpected error answering %s", request.method)
            if not request.started:
                request.reply_json(500, {"error": "internal", "message": "internal proxy error"})
            else:
                request.abort()
            return
        if not request.started:
            request.reply_json(500, {"error": "internal", "message": "no answer was made"})
        elif not request.done:
            request.abort()

    def keeps_alive(self, request: Request) -> bool:
        """Whether the connection stays open after `request`'s answer."""
        return (
            request.keep_alive
            and request.body_complete
            and not self.listener.closing
            and not self._stopped
        )

    def _linger_or_close(self, request: Request) -> None:
        waits_for_continue = request._continue and request.body_bytes == 0
        if request.body_complete or waits_for_continue or self._stopped:
            self.close()  # nothing more to read, or a client that sends nothing until told
            return
        # The answer went out before the body was read: read and drop the rest for a moment,
        # so that closing does not reset the connection before the client has the answer.
        self.discarding = True
        self.resume_reading()
        self._loop.call_later(LINGER, self.close)

    # --- transport ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray) -> None:
        """Queue bytes for the client."""
        if self.closed or self.transport is None:
            raise ClientGone("the client closed the connection")
        self.transport.write(data)

    async def send(self, data: bytes, deadline: float | None = None) -> None:
        """Write, then wait while the client's side is full (at most `send_timeout`, and until
        `deadline` on the monotonic clock, if given: then the connection is cut)."""
        self.write(data)
        if self._writable is not None:
            if deadline is None:
                await self._writable
            else:
                try:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        await asyncio.shield(self._writable)
                except TimeoutError:
                    log.info("client did not read the answer within the exchange's timeout: cut")
                    self.closed = True
                    if self.transport is not None:
                        self.transport.abort()
            if self.closed:
                raise ClientGone("the client closed the connection")

    def _send_stalled(self) -> None:
        """The client took nothing for `send_timeout`: cut it off."""
        self._send_timer = None
        log.info("client took no data for %.0f s: connection cut", self.listener.send_timeout)
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    @property
    def idle(self) -> bool:
        """No request is being answered."""
        return self._request is None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        """Close the connection if it has been idle (or sending one head) for too long."""
        timeout = self.listener.keepalive_timeout
        left = timeout if not self.idle else self._idle_since + timeout - self._loop.time()
        if left <= 0:
            self.close()
        elif not self.closed:
            self._timer = self._loop.call_later(left, self._expire)

    def _lingering_close(self) -> None:
        """End our side once the answer is out (FIN), then read and drop what the client still
        sends for up to LINGER seconds before closing: closing with unread bytes would reset
        the connection, and the client could lose the answer (nginx's lingering close)."""
        if self.transport is None or self.closed:
            return
        self._cancel_timer()
        self.resume_reading()  # what arrives now is dropped: nothing is parsed any more
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._loop.call_later(LINGER, self.close)

    def close(self) -> None:
        """Close the connection once what was written is sent (within `send_timeout`)."""
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
            if self.transport.get_write_buffer_size() and self._send_timer is None:
                self._send_timer = self._loop.call_later(
                    self.listener.send_timeout, self.transport.abort
                )

    def cancel(self) -> None:
        """Stop answering: the drain is over."""
        if self._task is not None:
            self._task.cancel()
        self.close()


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
        self.connections: set[_Connection] = set()
        self.closing = False
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        """Bind and start accepting (`reuse_port`: alongside other processes on that port)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, reuse_port=reuse_port or None
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
