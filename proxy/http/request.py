"""A request on a client connection, as its handler sees it: the head (checked when made), the
body (streamed as it arrives, with flow control) and the methods that write the answer.

Invariants
- A `Request` exists only for a head that is valid HTTP/1.x: on HTTP/1.1 exactly one Host, and a
  Host that is valid wherever it is sent (else 400); an origin-form target, or an absolute-form
  http(s) one, rewritten to origin-form with its authority taken as the host (else 400); a body
  framed by Content-Length or by exactly `chunked` (another coding before chunked: 501; chunked
  not last, or any Transfer-Encoding on HTTP/1.0: 400).
- The pieces of a request body that arrive before the handler takes them are joined: a body
  sent as a million one-byte chunks costs one short Python step per chunk in the parser, not one
  per chunk in every layer that forwards it, and goes upstream in pieces of useful size. At most
  READ_HIGH_WATER bytes (and the rest of one read) wait: reading is paused above it.
- `100 Continue` is sent when the body is first read, and only then.
- Answers are framed as RFC 9112 §6 says: 204 and 304 without body or Content-Length; HEAD with
  the Content-Length the upstream gave; otherwise Content-Length, chunked, or (HTTP/1.0) the close.
- An answer's head is written together with its body when that is at hand: a whole answer in
  one write, a streamed one with its first piece if that is written before the event loop's
  next turn. A head is never held back waiting for a body still to come.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import posixpath
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote

import httptools
from mypy_extensions import mypyc_attr

from proxy.http.cookies import parse_cookies
from proxy.http.errors import BadRequest, ClientGone
from proxy.http.headers import tokens, valid_host
from proxy.http.tunnel import Tunnel

if TYPE_CHECKING:
    from proxy.http.client_connection import ClientConnection

log = logging.getLogger("grayscale.listener")

READ_HIGH_WATER = 256 * 1024  # pause reading from the client above this much unread body
READ_MAX_PIECES = 4096  # or when it came in more pieces than this (each costs a Python step)

Handler = Callable[["Request"], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]  # names and values as received

REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_ENCODED_SLASH = re.compile("%2[fF]")
_BODYLESS_STATUS = frozenset({204, 304})
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}  # by status and reason (b"": the standard's)
_STATUS_LINES_KEPT = 256  # (an upstream's reason phrases are its own: the cache stays bounded)


def render(headers: list[tuple[str, str]]) -> bytes:
    """Header lines as sent: ``Name: value`` and CRLF, each."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode(
        "utf-8", "surrogateescape"
    )


def index_headers(headers: RawHeaders) -> tuple[list[bytes], dict[bytes, bytes], bool]:
    """The lower-case names in order, the first value of each, and whether a name repeats;
    raises `BadRequest` for a second Host."""
    keys: list[bytes] = []
    index: dict[bytes, bytes] = {}
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
    return keys, index, repeats


def text(value: bytes) -> str:
    """Header bytes as text, every byte kept (undecodable ones as surrogate escapes)."""
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
        url: Any = httptools.parse_url(target)  # (fields may be None, whatever its stub says)
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


class _Clock:
    """The Date header's value, and the header lines of a JSON answer made here, made at most
    once a second."""

    second: ClassVar[int] = -1
    value: ClassVar[str] = ""
    json_lines: ClassVar[bytes] = b""

    @classmethod
    def date(cls) -> str:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.value = now, formatdate(now, usegmt=True)
            cls.json_lines = render(
                [("Content-Type", "application/json; charset=utf-8"), ("Date", cls.value)]
            )
        return cls.value


def http_date() -> str:
    """The Date header's value for now (RFC 9110 §5.6.7)."""
    return _Clock.date()


@mypyc_attr(allow_interpreted_subclasses=True)  # (H2Request, not compiled)
class Request(abc.ABC):
    """One request, whatever carried it (an HTTP/1.1 message, `H1Request`, or an HTTP/2 stream,
    `h2_server.H2Request`): what it says (method, target, header fields as received; its query
    and cookies, read on demand), its body, and the methods that answer it (`reply` whole, or
    `start`, `write`... `end`). Subclasses fill the fields in and carry the bytes."""

    __slots__ = (
        "_cookies",
        "_index",
        "_query",
        "authority",
        "body_bytes",
        "body_complete",
        "content_length",
        "done",
        "has_body",
        "keys",
        "method",
        "path",
        "raw_headers",
        "raw_target",
        "remote",
        "repeats",
        "secure",
        "started",
        "status",
        "target",
        "version",
    )

    method: str
    version: str  # "1.0", "1.1" or "2"
    raw_headers: RawHeaders  # as received (HTTP/2: lower case, pseudo-header fields left out)
    keys: list[bytes]  # header names, lower case, in order
    _index: dict[bytes, bytes]  # the first value of each
    repeats: bool  # some header name (in any case) comes more than once
    authority: bytes | None  # the host the client asked for
    raw_target: bytes  # origin-form: path and query, as received
    target: str
    path: str  # see `routing_path`
    remote: str | None
    secure: bool  # it came over TLS
    has_body: bool
    content_length: int | None
    body_bytes: int  # received so far
    body_complete: bool
    started: bool  # the answer's head was sent
    done: bool  # the whole answer was sent
    status: int
    _query: tuple[dict[str, str], frozenset[str]] | None
    _cookies: dict[str, str] | None

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        value = self._index.get(name.lower().encode("latin-1"))
        return None if value is None else text(value)

    def field(self, key: bytes) -> bytes | None:
        """The first value of the header whose lower-case name is `key`, as received."""
        return self._index.get(key)

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        return [text(value) for value in self.raw_values(name.lower().encode("latin-1"))]

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

    @abc.abstractmethod
    def chunks(self, patient: bool = False) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives (once: the pieces are not kept). A body that
        stops arriving for the listener's body timeout is the client's 408, unless `patient`
        (a stream of messages, silent as long as it likes: its exchange's timeout bounds it)."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The whole body."""

    @abc.abstractmethod
    def reply(self, status: int, headers: bytes, body: bytes, reason: bytes = b"") -> None:
        """Send a whole answer. `headers` are rendered lines (see `render`) that do not frame the
        body: the framing is set here."""

    def reply_json(self, status: int, document: object, headers: bytes = b"") -> None:
        """Send a JSON answer made here (with a Date header); `headers` are more rendered lines."""
        _Clock.date()
        self.reply(status, headers + _Clock.json_lines, json.dumps(document).encode())

    @abc.abstractmethod
    def start(self, status: int, headers: bytes, length: int | None, reason: bytes = b"") -> None:
        """Send the head of an answer whose body follows through `write`: `length` bytes, or
        of unknown length. `headers` are rendered lines that do not frame the body."""

    @abc.abstractmethod
    def inform(self, status: int, headers: bytes, reason: bytes = b"") -> None:
        """Send an interim (1xx) answer ahead of the answer, where the client can take one."""

    @abc.abstractmethod
    async def write(self, data: bytes, deadline: float | None = None) -> None:
        """Send a piece of the answer's body; waits while the client reads slower, until
        `deadline` (`time.monotonic()`) at most: then the client is cut off (`ClientGone`)."""

    @abc.abstractmethod
    def end(self, trailers: RawHeaders | None = None) -> None:
        """The answer's body is complete; `trailers` follow it where the protocol carries
        them (HTTP/2), else they are dropped."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Cut the answer off: one that cannot be completed must look incomplete."""


async def answer(handler: Handler, request: Request) -> None:
    """Run `handler` for `request`, and make sure it is answered: a `BadRequest` raised once
    its body turned out malformed or stalled gets its status; any other failure a 500 (logged);
    a handler that made no answer, a 500; an answer begun and not ended is cut off."""
    try:
        await handler(request)
    except (asyncio.CancelledError, ClientGone):
        raise
    except BadRequest as exc:
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


class H1Request(Request):
    """A request on an HTTP/1.x connection: its head (checked), its body (read once, as it
    arrives), and its answer written to the connection."""

    __slots__ = (
        "_body",
        "_connection",
        "_continue",
        "_error",
        "_framing",
        "_pieces",
        "_unsent",
        "_waiter",
        "chunked",
        "keep_alive",
        "tunnel",
    )

    def __init__(
        self,
        connection: ClientConnection,
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
        self.secure = connection.listener.tls is not None
        self.keys, index, self.repeats = index_headers(headers)
        self._index = index
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
        self.target = text(target)
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
        self._unsent = b""  # the answer's head, made by `start` and not yet written
        self.tunnel: Tunnel | None = None  # after a switch of protocols (see `switch`)

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

    def chunks(self, patient: bool = False) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives (once: the pieces are not kept; see
        `Request.chunks`)."""
        return _Chunks(self, patient)

    async def _next_chunk(self, patient: bool) -> bytes | None:
        """The body's next piece, None at its end: `chunks`' step (an iterator class rather than
        an async generator, which mypyc cannot compile)."""
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
                return data
            elif self.body_complete:
                return None
            elif self._error is not None:
                raise self._error
            else:
                self._waiter = loop.create_future()
                try:
                    async with asyncio.timeout(
                        None if patient else self._connection.listener.body_timeout
                    ):
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

    def _head(
        self, status: int, reason: bytes, headers: bytes, length: int | None, body: bytes = b""
    ) -> bytes:
        """The answer's head, framed for `length` body bytes (None: unknown), followed by `body`
        if the framing sends one."""
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
        if not keep:
            framing += b"Connection: close\r\n\r\n"
            self.keep_alive = False
        elif self.version == "1.0":
            framing += b"Connection: keep-alive\r\n\r\n"
        else:
            framing += b"\r\n"
        line = _STATUS_LINES.get((status, reason))
        if line is None:
            line = b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, b""))
            if len(_STATUS_LINES) < _STATUS_LINES_KEPT:
                _STATUS_LINES[(status, reason)] = line
        if body and self._framing == "length":
            return b"".join((line, headers, framing, body))
        return b"".join((line, headers, framing))

    def reply(self, status: int, headers: bytes, body: bytes, reason: bytes = b"") -> None:
        """Send a whole answer, head and body in one write. `headers` are rendered lines (see
        `render`) that do not frame the body: the framing is set here."""
        self._connection.write(self._head(status, reason, headers, len(body), body))
        self.done = True

    def start(self, status: int, headers: bytes, length: int | None, reason: bytes = b"") -> None:
        """Send the head of an answer whose body follows through `write`: `length` bytes, or
        of unknown length (chunked, or up to the close for an HTTP/1.0 client). `headers` are
        rendered lines that do not frame the body.

        The head goes out with the body's first piece, in one write, when that piece is written
        before the event loop's next turn (it was already in); else on its own at that turn, so
        the client never waits for the head while the body is slow to come."""
        if self._connection.closed:
            raise ClientGone("the client closed the connection")
        self._unsent = self._head(status, reason, headers, length)
        asyncio.get_running_loop().call_soon(self._send_head)

    def _send_head(self) -> None:
        """Send the head that `start` made, if no piece of the body took it along."""
        head = self._unsent
        if head:
            self._unsent = b""
            if not self._connection.closed:
                self._connection.write(head)

    def inform(self, status: int, headers: bytes, reason: bytes = b"") -> None:
        """Send an interim (1xx) answer ahead of the answer: to an HTTP/1.1 client only (RFC
        9110 §15.2), and not once the answer has started or the client has gone."""
        if self.version == "1.1" and not self.started and not self._connection.closed:
            reason = reason or REASONS.get(status, b"")
            self._connection.write(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, headers))

    async def write(self, data: bytes, deadline: float | None = None) -> None:
        """Send a piece of the answer's body; waits while the client reads slower, until
        `deadline` (`time.monotonic()`) at most: then the client is cut off (`ClientGone`)."""
        if not data or self._framing == "none":
            return
        head = self._unsent
        if head:  # (the first piece: the head goes with it)
            self._unsent = b""
            if self._framing == "chunked":
                data = b"%s%x\r\n%s\r\n" % (head, len(data), data)
            else:
                data = head + data
        elif self._framing == "chunked":
            data = b"%x\r\n%s\r\n" % (len(data), data)
        await self._connection.send(data, deadline)

    def end(self, trailers: RawHeaders | None = None) -> None:
        """The answer's body is complete (trailers are dropped: not sent on HTTP/1.1)."""
        last = b"0\r\n\r\n" if self._framing == "chunked" else b""
        if self._unsent:
            last, self._unsent = self._unsent + last, b""
        if last:
            self._connection.write(last)
        self.done = True

    def abort(self) -> None:
        """Cut the client connection: an answer that cannot be completed must look incomplete."""
        self.keep_alive = False
        self._send_head()
        self._connection.close()

    def switch(
        self,
        headers: bytes,
        upstream: asyncio.Transport,
        *,
        idle_timeout: float,
        from_upstream: bytes = b"",
    ) -> None:
        """Answer `101 Switching Protocols` with `headers` (rendered lines), then copy bytes
        both ways between the client and `upstream` (`from_upstream` first toward the client):
        the connection is a `Tunnel` from now on, which it serves once the handler returns."""
        transport, held = self._connection.hand_over()
        self.started = self.done = True
        self.status, self.keep_alive = 101, False
        head = b"HTTP/1.1 101 Switching Protocols\r\n%s\r\n" % headers
        self.tunnel = Tunnel(
            transport,
            upstream,
            idle_timeout=idle_timeout,
            to_client=head + from_upstream,
            to_upstream=held,
        )


class _Chunks:
    """`H1Request.chunks`: its body's pieces, each one `_next_chunk`."""

    def __init__(self, request: H1Request, patient: bool):
        self._request, self._patient = request, patient

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        data = await self._request._next_chunk(self._patient)
        if data is None:
            raise StopAsyncIteration
        return data
