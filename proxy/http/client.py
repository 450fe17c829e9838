"""A lean HTTP/1.1 client for upstreams: pooled keep-alive connections on asyncio protocols,
answers parsed by llhttp (through httptools).

It does what a proxy needs and nothing else: no redirects, cookies, decompression or header
normalisation; bodies pass through as bytes, both ways, with flow control.

Invariants
- A request is sent again (once, on a new connection) only when its reused connection turned
  out closed before any byte of an answer came, and either nothing of it was written or it is
  idempotent and its body can be sent again (RFC 9110 §9.2.2). A POST that may have reached the
  upstream is never sent twice.
- An answer is handed on only with its head complete and checked (see `upstream_connection`);
  its body ends cleanly or raises `UpstreamError`, never a silent truncation.
- Interim answers (1xx) but 100 go to the request's `interim` callback, in the order received,
  before its answer (requests go out without `Expect`, so a 100 is nobody's); without a callback
  they are read and dropped.
- An https upstream's certificate is checked for its `server_name` (sent as SNI; the URL's host
  unless the config names another), against `ca_file` or the system's authorities; its client
  certificate, if any, is shown when asked. `renew_tls` reads their files again for the
  connections made from then on.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator
from urllib.parse import urlsplit

from proxy.config.model import Upstream
from proxy.http.errors import UpstreamError
from proxy.http.pool import KEEPALIVE_TIMEOUT, Pool
from proxy.http.tls import no_passphrase
from proxy.http.upstream_connection import Interim, UpstreamConnection

BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

Body = bytes | AsyncIterable[bytes] | None
ClientCert = tuple[str, str]  # the PEM files of a client certificate chain and its key

log = logging.getLogger("grayscale.upstream")


class Answer:
    """An upstream's answer: status, headers, and a body read with `chunks` or `read`."""

    def __init__(self, connection: UpstreamConnection):
        self._connection = connection
        self.status = connection.status
        self.reason = connection.reason
        self.headers = connection.headers
        self.content_length = connection.content_length

    def chunks(self, idle_timeout: float, deadline: float) -> AsyncIterator[bytes]:
        """The body as it arrives. `idle_timeout` bounds the silence between two pieces, and
        `deadline` (`time.monotonic()`) the whole answer."""
        return _Chunks(self, idle_timeout, deadline)

    async def _next_chunk(self, idle_timeout: float, deadline: float) -> bytes | None:
        """The body's next piece, None at its end: `chunks`' step (an iterator class rather than
        an async generator, which mypyc cannot compile)."""
        connection = self._connection
        while True:
            data = connection.next_chunk()
            if data is None:  # nothing here yet: wait, but not for ever
                wait = min(idle_timeout, deadline - time.monotonic())
                try:
                    async with asyncio.timeout(wait):
                        await connection.more()
                except TimeoutError:
                    raise UpstreamError("timeout", "the upstream did not answer in time") from None
                continue
            return data or None

    async def read(self, idle_timeout: float, deadline: float) -> bytes:
        """The whole body."""
        if self._connection.complete:  # all here already: no need to wait
            return self._connection.take_all()
        return b"".join([chunk async for chunk in self.chunks(idle_timeout, deadline)])

    @property
    def complete(self) -> bool:
        """Whether the whole answer was received."""
        return self._connection.complete

    def release(self) -> None:
        """Done with the answer: a complete answer's connection may be reused."""
        self._connection.finish(reusable=self._connection.complete)


class _Chunks:
    """`Answer.chunks`: its body's pieces, each one `_next_chunk`."""

    def __init__(self, answer: Answer, idle_timeout: float, deadline: float):
        self._answer, self._idle_timeout, self._deadline = answer, idle_timeout, deadline

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        data = await self._answer._next_chunk(self._idle_timeout, self._deadline)
        if data is None:
            raise StopAsyncIteration
        return data


class Origin:
    """A parsed upstream base URL: where to connect, the Host header, a path prefix, and for
    https the authorities that may vouch for its certificate (`ca_file`, else the system's),
    the name it is checked for (`server_name`, else the URL's host) and the client certificate
    shown when it asks for one."""

    def __init__(
        self,
        url: str,
        ca_file: str | None = None,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        *,
        client_cert: ClientCert | None = None,
        server_name: str | None = None,
    ):
        parts = urlsplit(url)
        self.keepalive_timeout = keepalive_timeout
        self.tls = parts.scheme == "https"
        self.ca_file = ca_file
        self.client_cert = client_cert
        self.host = parts.hostname or ""
        self.server_name = server_name or self.host
        self.port = parts.port or (443 if self.tls else 80)
        default = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default else f"{host}:{self.port}"
        try:
            host_bytes = self.host_header.encode("idna")  # an IDN host as punycode
        except UnicodeError:
            host_bytes = self.host_header.encode("utf-8", "surrogateescape")
        self.host_line = b"Host: %s\r\n" % host_bytes
        self.prefix = parts.path.rstrip("/")
        self.raw_prefix = self.prefix.encode("utf-8", "surrogateescape")
        # what tells two origins' pools apart (made once: a pool is looked up per request)
        self.key = (
            self.host,
            self.port,
            self.tls,
            ca_file,
            client_cert,
            self.server_name,
            keepalive_timeout,
        )

    @classmethod
    def of(cls, upstream: Upstream) -> Origin:
        """The origin of an upstream as configured."""
        client_cert = None
        if upstream.client_cert_file and upstream.client_key_file:
            client_cert = (upstream.client_cert_file, upstream.client_key_file)
        return cls(
            upstream.url,
            upstream.ca_file,
            upstream.keepalive_timeout,
            client_cert=client_cert,
            server_name=upstream.server_name,
        )


def client_context(origin: Origin, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A TLS context for `origin`: its authorities, and its client certificate, read now
    (`OSError` or `ssl.SSLError` when they do not load); offering `alpn`, if given."""
    context = ssl.create_default_context(cafile=origin.ca_file)
    if origin.client_cert is not None:
        context.load_cert_chain(*origin.client_cert, no_passphrase)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def renewed_context(origin: Origin, alpn: list[str] | None = None) -> ssl.SSLContext | None:
    """`client_context` read again for a renewal; None, said in a warning, when the files no
    longer load (the context in use then stays)."""
    try:
        return client_context(origin, alpn)
    except (OSError, ssl.SSLError) as exc:
        log.warning(
            "the certificate files of %s did not load, the previous stay: %s",
            origin.host_header,
            exc,
        )
        return None


class UpstreamClient:
    """Sends requests to upstreams over pooled keep-alive connections."""

    def __init__(self) -> None:
        self._pools: dict[tuple[object, ...], Pool] = {}
        self._secure: list[tuple[Origin, Pool]] = []  # the https pools, each with its origin

    def _pool(self, origin: Origin) -> Pool:
        key = origin.key
        pool = self._pools.get(key)
        if pool is None:
            tls = client_context(origin) if origin.tls else None
            pool = Pool(origin.host, origin.port, tls, origin.keepalive_timeout, origin.server_name)
            self._pools[key] = pool
            if tls is not None:
                self._secure.append((origin, pool))
        return pool

    def tls(self, origin: Origin) -> ssl.SSLContext | None:
        """The TLS context connections to `origin` are made with now (None for http): its
        pool's, made once and renewed with `renew_tls`, for connections made outside the pool
        (WebSocket tunnels)."""
        return self._pool(origin).tls

    def renew_tls(self) -> None:
        """Read the https upstreams' certificate files again: the connections made from now on
        use what they hold (open ones keep their session). A pool whose files no longer load
        keeps the context it has, and says so."""
        for origin, pool in self._secure:
            pool.tls = renewed_context(origin) or pool.tls

    async def request(
        self,
        origin: Origin,
        method: str,
        *,
        target: bytes,
        headers: bytes,
        body: Body,
        content_length: int | None,
        connect_timeout: float,
        first_byte_timeout: float,
        send_timeout: float | None = None,
        interim: Interim | None = None,
    ) -> Answer:
        """Send a request and wait for the answer's head.

        `first_byte_timeout` bounds sending the request and waiting for the answer's head; for
        a body that streams in from a client, it starts once the whole request is sent, and
        `send_timeout` (if given) bounds the sending: a body still arriving then is the
        client's slowness, `UpstreamError("request_timeout")`, not the upstream's.
        `target` is the path and query, sent as given; `headers` are header lines (``Name: value``
        and CRLF each) that must not frame the body: this sets Content-Length (or chunked
        encoding for a body of unknown length). See the module's rules for when a request is
        sent again. `interim` is told of each interim answer (1xx) but 100, as it comes.
        """
        if isinstance(body, bytes):
            framing = b"Content-Length: %d\r\n" % len(body)
        elif body is not None:
            framing = (
                b"Transfer-Encoding: chunked\r\n"
                if content_length is None
                else b"Content-Length: %d\r\n" % content_length
            )
        else:
            framing = b"" if method in BODYLESS_METHODS else b"Content-Length: 0\r\n"
        head = b"%s %s%s HTTP/1.1\r\n%s%s%s\r\n" % (
            method.encode("latin-1"),
            origin.raw_prefix,
            target,
            origin.host_line,
            framing,
            headers,
        )
        pool = self._pool(origin)
        loop = asyncio.get_running_loop()
        streamed = body is not None and not isinstance(body, bytes)
        sending = send_timeout if streamed and send_timeout is not None else first_byte_timeout
        for attempt in range(2):
            connection = pool.idle() or await pool.connect(connect_timeout)
            connection.begin(method, loop.time() + sending, interim)
            try:
                if body is None or isinstance(body, bytes):
                    if not connection.send(head + body if body else head):
                        await connection.drained()
                    connection.sent = True
                else:
                    await self._stream(connection, head, body, content_length)
                    connection.expect_head_by(loop.time() + first_byte_timeout)
                await connection.head
            except UpstreamError as exc:
                if streamed and not connection.sent and exc.reason == "timeout":
                    connection.finish(reusable=False)
                    raise UpstreamError(
                        "request_timeout", "the request body was still arriving at the timeout"
                    ) from None
                if connection.answered:
                    # The upstream answered, then closed while the body was still on its way
                    # (a 413, a 401): its answer is the one to pass on.
                    return Answer(connection)
                connection.finish(reusable=False)
                if attempt == 0 and _may_send_again(connection, exc, method, body):
                    continue
                raise
            except BaseException:
                connection.finish(reusable=False)
                raise
            return Answer(connection)
        raise AssertionError("unreachable")

    @staticmethod
    async def _stream(
        connection: UpstreamConnection,
        head: bytes,
        body: AsyncIterable[bytes],
        content_length: int | None,
    ) -> None:
        """Send the head, then the body as it comes, until it ends or the upstream answers."""
        await connection.write(head)
        chunked = content_length is None
        async for chunk in body:
            if connection.answered:
                return  # answered before the whole body went: the rest is not sent
            if chunk:
                await connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if connection.answered:
            return
        if chunked:
            await connection.write(b"0\r\n\r\n")
        connection.sent = True

    def close(self) -> None:
        """Close every idle connection."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._secure.clear()


def _may_send_again(
    connection: UpstreamConnection, error: UpstreamError, method: str, body: Body
) -> bool:
    """Whether a failed request may be sent once more, on a new connection."""
    if not connection.reused or connection.received or error.reason != "reset":
        return False  # not a stale keep-alive connection: the upstream did see it, or failed
    if not connection.wrote:
        return True  # provably never reached the upstream
    return method in IDEMPOTENT_METHODS and not isinstance(body, AsyncIterable)
