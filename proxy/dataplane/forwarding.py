"""Forwarding one request to an upstream and streaming the answer back, chunk by chunk.

A request body up to a size is read before an upstream is asked (the rest, if any, streamed
after it); answers are streamed to the client as they arrive (an SSE token stream is not
coalesced); header fields cross as `proxy.http.headers` rules; upstream errors map to a 502/504
with a JSON body.

Invariants
- A client's slowness is never an upstream's error: a body that stops arriving is the client's
  408, and so is one still arriving at the exchange's `timeout`; an upstream's first-byte timer
  starts when it has the whole request.
- A gRPC call's request stream is sent as it comes, from its first message, and may be silent
  or long: only the exchange's timeout (or the call's deadline) bounds it.
- The route's `timeout` bounds the whole exchange, a client that stops reading included: it is
  cut then, and the upstream connection let go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial

from proxy.config.model import GRPC_ERROR_CODES, GrpcStatus, Upstream, Variant
from proxy.dataplane.limiter import Limiter, Overloaded
from proxy.dataplane.model_body import BodyError, ReadBody
from proxy.dataplane.request_body import BodyLimit, buffered
from proxy.dataplane.stream_meter import EVENT_LIMIT, StreamMeter, whole_answer_tokens
from proxy.http import grpc
from proxy.http.client import Answer, Body, Origin, UpstreamClient
from proxy.http.errors import ClientGone, UpstreamError
from proxy.http.h2_client import H2Answer, H2Client
from proxy.http.headers import (
    HOP_BY_HOP,
    INTERNAL_PREFIX,
    answer_for_client,
    forwarded_for_upstream,
)
from proxy.http.request import Request, render
from proxy.records.request_id import NOT_COMPARED
from proxy.records.request_outcome import Failure, FallbackReason

log = logging.getLogger("grayscale.forwarding")

VARIANT_HEADER = "X-Grayscale-Variant"
ROUTE_HEADER = "X-Grayscale-Route"
FALLBACK_HEADER = "X-Grayscale-Fallback"
REQUEST_ID_HEADER = "X-Grayscale-Request-Id"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes, how it is labelled, and the upstream's connection limiter."""

    route: str
    variant: Variant
    upstream: Upstream
    limiter: Limiter
    origin: Origin
    mint: Callable[[float, int, int], bytes]  # a new request id for this route (see labels)
    openai: bool = False  # a model route: the proxy's own errors in OpenAI's shape
    max_event_bytes: int = EVENT_LIMIT  # of one event of an answer's stream, metered
    h2: H2Client | None = None  # the upstream is spoken to in HTTP/2 (else HTTP/1.1)
    grpc_errors: frozenset[GrpcStatus] = GRPC_ERROR_CODES  # a call's statuses that are errors
    label: bytes = field(init=False)  # the header lines that say which route and variant answered

    _id_line: bytes = field(init=False)  # `label`, then the request id header's name

    def __post_init__(self) -> None:
        label = render([(VARIANT_HEADER, self.variant), (ROUTE_HEADER, self.route)])
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "_id_line", label + REQUEST_ID_HEADER.encode() + b": ")

    def labels(self, exchange: Exchange) -> bytes:
        """Our header lines on an answer from this target, with a new request id (kept in
        `exchange`)."""
        exchange.request_id = request_id = self.mint(time.time(), exchange.assigned, exchange.share)
        return self._id_line + request_id + b"\r\n"


class Exchange:
    """A forwarded request while it is in flight; `forward` fills it in as it goes, and the
    gateway makes its `RequestOutcome` from it at the end."""

    __slots__ = (
        "assigned",
        "bytes_out",
        "call",
        "call_timeout",
        "candidate_error",
        "candidate_status",
        "capture",
        "captured",
        "error",
        "event_stream",
        "fallback",
        "forwarded",
        "grpc_status",
        "output_tokens",
        "refused",
        "request_id",
        "share",
        "status",
        "ttfb",
        "ttft",
        "variant",
    )

    def __init__(self, variant: Variant):
        self.variant = variant  # the variant being asked (stable after a fallback)
        # what the request id says was assigned (`request_id` codes), and at which share, in
        # 65,535ths
        self.assigned, self.share = NOT_COMPARED, 0
        self.status: int | None = None  # the status sent to the client, once the answer started
        self.error: Failure | None = None  # why the answering upstream failed
        self.refused = False  # answered by the proxy before any upstream saw it
        self.ttfb: float | None = None  # seconds from sending upstream to the body's first byte
        self.bytes_out = 0  # answer body bytes written to the client
        self.fallback: FallbackReason | None = None  # why the request went to stable instead
        self.candidate_error: Failure | None = None  # the candidate's, when stable answered
        self.candidate_status: int | None = None  # the candidate's 5xx, when stable answered
        # seconds from sending upstream to the first token (event streams: the first event with
        # content; other answers: the body's first byte)
        self.ttft: float | None = None
        self.output_tokens: int | None = None  # the answer's `usage`, if it says
        self.request_id: bytes | None = None  # the id on the answer
        self.event_stream = False  # whether the answer is an event stream
        self.capture: list[bytes] | None = None  # the answer's body, kept (for a shadow copy)
        self.forwarded = b""  # the header lines sent upstream (a shadow copy sends them too)
        self.captured = 0  # its size; past CAPTURE the capture is dropped (None)
        self.call = False  # the request is a gRPC call
        self.call_timeout: float | None = None  # the call's own deadline (`grpc-timeout`), s
        self.grpc_status: GrpcStatus | None = None  # the status that ended the call

    def timeout(self, upstream: Upstream) -> float:
        """How long the exchange with `upstream` may take: its `timeout`, or less if the gRPC
        call's deadline is sooner."""
        if self.call_timeout is None or self.call_timeout >= upstream.timeout:
            return upstream.timeout
        return self.call_timeout

    def keep(self, chunk: bytes) -> None:
        """Keep a piece of the answer's body, if asked to, up to `CAPTURE` bytes."""
        if self.capture is not None:
            self.captured += len(chunk)
            if self.captured > CAPTURE:
                self.capture = None
            else:
                self.capture.append(chunk)


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """Why an exchange failed (`reason`; None: the proxy refused the request itself), and the
    answer the client gets: status, error code, detail."""

    reason: Failure | None
    status: int
    error: str
    detail: str


def answer_headers(
    answer: Answer | H2Answer, target: Target, exchange: Exchange
) -> tuple[bytes, bool]:
    """The upstream's answer header lines for the client, plus ours; whether it is an event
    stream."""
    lines, event_stream = answer_for_client(answer.headers)
    lines += target.labels(exchange)
    if exchange.fallback is not None:
        lines += _FALLBACK_LINES[exchange.fallback]
    if event_stream:
        # Tell buffering proxies in front of us (nginx and the like) to pass events through.
        lines += b"X-Accel-Buffering: no\r\n"
    return lines, event_stream


_FALLBACK_LINES = {
    reason: b"%s: %s\r\n" % (FALLBACK_HEADER.encode(), reason.encode()) for reason in FallbackReason
}


_FAILURES: dict[str, tuple[Failure | None, int, str]] = {
    "connect": (Failure.CONNECT, 502, "upstream_unreachable"),
    "connect_timeout": (Failure.CONNECT, 504, "upstream_connect_timeout"),
    "timeout": (Failure.TIMEOUT, 504, "upstream_timeout"),
    "reset": (Failure.RESET, 502, "upstream_reset"),
    "protocol": (Failure.PROTOCOL, 502, "upstream_protocol_error"),
    # the client was still sending its body when the exchange timed out: no upstream's fault
    "request_timeout": (None, 408, "request_timeout"),
}


def classify(error: UpstreamError) -> UpstreamFailure:
    """Map a transport error to a reason (connect timeouts count as connect), status and text."""
    reason, status, code = _FAILURES[error.reason]
    return UpstreamFailure(reason, status, code, error.detail)


OVERLOADED = UpstreamFailure(
    Failure.OVERLOADED, 503, "upstream_overloaded", "too many requests are waiting for the upstream"
)
BODY_TOO_LARGE = UpstreamFailure(
    None, 413, "request_body_too_large", "the request body is larger than server.max_body_bytes"
)
SMALL_BODY = 64 * 1024  # bodies up to this size are read whole rather than streamed
CAPTURE = 1024 * 1024  # bytes of an answer kept for a shadow comparison
# Failures of a request that never reached the upstream, and what a fallback then says.
FALLS_BACK = {  # the failures a candidate's request goes to stable after, and why
    Failure.CONNECT: FallbackReason.CONNECT,
    Failure.OVERLOADED: FallbackReason.OVERLOADED,
}
_REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def waited_for_slot(target: Target) -> bool:
    """Wait in line for one of `target`'s connection slots, up to its `connect_timeout`: whether
    one came (the caller's then, to release); after a `try_acquire` that found none free."""
    try:
        await target.limiter.acquire(target.upstream.connect_timeout)
    except Overloaded:
        return False
    return True


def bad_body(detail: str) -> UpstreamFailure:
    """The answer to a body the route cannot read (not a JSON object with one `model`)."""
    return UpstreamFailure(None, 400, "invalid_json_body", detail)


async def _open(
    client: UpstreamClient,
    request: Request,
    target: Target,
    exchange: Exchange,
    *,
    headers: bytes,
    body: Body,
    limit: BodyLimit | None,
) -> tuple[Answer | H2Answer, float] | UpstreamFailure:
    """Take a connection slot and send the request (over HTTP/2 when `target.h2`), within the
    exchange's time on this upstream: the answer (its head read) and when it was sent, or why
    not (the slot given back; no byte reached the client)."""
    upstream = target.upstream
    allowed = exchange.timeout(upstream)
    if not target.limiter.try_acquire() and not await waited_for_slot(target):
        return OVERLOADED
    sent = time.monotonic()
    try:
        answer = await (client if target.h2 is None else target.h2).request(
            target.origin,
            request.method,
            target=request.raw_target,
            headers=headers,
            body=body,
            content_length=request.content_length,
            connect_timeout=upstream.connect_timeout,
            first_byte_timeout=min(upstream.first_byte_timeout, allowed),
            send_timeout=allowed,
            interim=partial(_inform, request),
        )
    except (UpstreamError, ValueError) as exc:
        target.limiter.release()
        if limit is not None and limit.exceeded:
            return BODY_TOO_LARGE
        if isinstance(exc, ValueError):
            raise
        return classify(exc)
    except BaseException:
        target.limiter.release()
        raise
    return answer, sent


def _inform(
    request: Request, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Pass an upstream's interim answer (103 Early Hints...) on to the client."""
    request.inform(status, answer_for_client(headers)[0], reason)


def _note_failure(target: Target, exchange: Exchange, failure: UpstreamFailure, when: str) -> None:
    exchange.error = failure.reason
    log.warning(
        "upstream error %s (%s): %s",
        when,
        failure.reason,
        failure.detail,
        extra={"route": target.route, "variant": target.variant},
    )


def error_document(
    status: int, code: str, message: str, openai: bool = False, **more: object
) -> dict[str, object]:
    """The JSON body of an answer the proxy makes itself: `{"error": code, "message": …, …}`,
    or on a model route OpenAI's shape, which its client libraries read (`{"error":
    {"message", "type", "code", …}}`, the type `invalid_request_error` for a 4xx, else
    `server_error`)."""
    if not openai:
        return {"error": code, "message": message, **more}
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": code, "param": None, **more}}


def _failed(request: Request, target: Target, exchange: Exchange, failure: UpstreamFailure) -> None:
    """Answer with JSON: the upstream could not answer."""
    exchange.variant = target.variant
    exchange.status = failure.status
    if failure.reason is None:
        exchange.refused = True
    else:
        _note_failure(target, exchange, failure, "before the answer")
    request.reply_json(
        failure.status,
        error_document(
            failure.status,
            failure.error,
            failure.detail,
            target.openai,
            route=target.route,
            variant=target.variant,
        ),
        target.labels(exchange),
    )


async def forward(
    request: Request,
    client: UpstreamClient,
    target: Target,
    exchange: Exchange,
    *,
    max_body: int,
    buffer_bytes: int = SMALL_BODY,
    trusted: bool = False,
    fallback: Target | None = None,
    fallback_on_5xx: bool = False,
    read: ReadBody | None = None,
) -> None:
    """Send `request` to `target`, stream the answer back, and note what happened in `exchange`.

    `trusted`: the client is one of `server.trusted_proxies`, whose forwarded headers stand.
    `buffer_bytes`: a request body up to this size is read whole before a connection slot to
    the upstream is taken (a larger one: its first `buffer_bytes`), so a client that sends
    slowly holds no slot, and the upstream's first-byte timer starts when it has the request.
    `read`: the body, already read whole (on routes that route on or rewrite its `model`): each
    upstream gets it with its own `model`, if it names one.

    When `target` cannot be reached (or has no free connection slot) the request goes to
    `fallback`, if given: it never reached the first upstream, so nothing is sent twice. With
    `fallback_on_5xx`, a 5xx answer to a bodiless GET, HEAD or OPTIONS is retried there too.
    Before the answer's headers are sent, a failure becomes a 4xx/5xx JSON answer; after, the
    client connection is closed without completing the body, so the client sees the failure.
    """
    exchange.variant = target.variant
    if request.version == "2" and grpc.is_call(request.field(b"content-type")):
        exchange.call = True
        exchange.call_timeout = grpc.deadline(request.field(b"grpc-timeout"))
    exchange.forwarded = headers = forwarded_for_upstream(
        request.keys,
        request.raw_headers,
        peer=(request.remote or "").encode(),
        authority=request.authority,
        version=request.version.encode(),
        trusted=trusted,
        secure=request.secure,
    )
    limit: BodyLimit | None = None
    body: Body = None
    if read is not None:
        try:
            body = read.to(target.upstream.model) if read.data else None
        except BodyError as exc:
            return _failed(request, target, exchange, bad_body(str(exc)))
    elif exchange.call:
        # A call's messages go as they come (a bidirectional stream waits for each answer
        # before it sends on), unbounded here: the upstream bounds its messages.
        body = request.chunks(patient=True)
    elif request.has_body:
        length = request.content_length
        if length is not None and length > max_body:
            return _failed(request, target, exchange, BODY_TOO_LARGE)
        if length is not None and length <= buffer_bytes:
            body = (
                await request.read()
            )  # (before a connection slot is taken: see `request_body.buffered`)
        else:
            limit = BodyLimit(request, max_body) if length is None else None
            try:
                body = await buffered(request, limit, buffer_bytes)
            except ValueError:
                return _failed(request, target, exchange, BODY_TOO_LARGE)
    opened = await _open(client, request, target, exchange, headers=headers, body=body, limit=limit)
    if isinstance(opened, UpstreamFailure):
        reason = opened.reason
        if fallback is None or reason is None or reason not in FALLS_BACK:
            return _failed(request, target, exchange, opened)
        exchange.candidate_error, exchange.fallback = reason, FALLS_BACK[reason]
        target = fallback
        exchange.variant = target.variant
        if read is not None and read.data:
            try:
                body = read.to(target.upstream.model)
            except BodyError as exc:
                return _failed(request, target, exchange, bad_body(str(exc)))
        opened = await _open(
            client, request, target, exchange, headers=headers, body=body, limit=limit
        )
        if isinstance(opened, UpstreamFailure):
            return _failed(request, target, exchange, opened)
    answer, sent = opened
    if (
        fallback is not None
        and fallback_on_5xx
        and target is not fallback
        and answer.status >= 500
        and request.method in _REPLAYABLE_METHODS
        and not request.has_body
    ):
        answer.release()
        target.limiter.release()
        exchange.candidate_status, exchange.fallback = answer.status, FallbackReason.FIVE_XX
        target = fallback
        exchange.variant = target.variant
        opened = await _open(
            client, request, target, exchange, headers=headers, body=None, limit=None
        )
        if isinstance(opened, UpstreamFailure):
            return _failed(request, target, exchange, opened)
        answer, sent = opened
    if limit is not None and limit.exceeded:
        # The body passed the limit on its way: the upstream saw a cut-off request.
        answer.release()
        target.limiter.release()
        return _failed(request, target, exchange, BODY_TOO_LARGE)
    try:
        await _stream(request, answer, target, exchange, sent)
    finally:
        answer.release()
        target.limiter.release()


async def _whole(
    request: Request, answer: Answer | H2Answer, target: Target, exchange: Exchange, sent: float
) -> None:
    """Read a small answer whole and send it at once; a failure is still a clean 502/504."""
    upstream = target.upstream
    try:
        body = await answer.read(upstream.idle_timeout, sent + exchange.timeout(upstream))
    except UpstreamError as exc:
        return _failed(request, target, exchange, classify(exc))
    exchange.ttfb = time.monotonic() - sent
    headers, event_stream = answer_headers(answer, target, exchange)
    exchange.event_stream = event_stream
    if exchange.capture is not None:
        exchange.keep(body)
    if event_stream:
        meter = StreamMeter(target.max_event_bytes)
        meter.feed(body, exchange.ttfb)
        exchange.ttft, exchange.output_tokens = meter.first_token, meter.output_tokens
    else:
        exchange.ttft = exchange.ttfb
        exchange.output_tokens = whole_answer_tokens(body)  # (parsed only if it names them)
    if exchange.call:  # (a trailers-only answer: the status is in its head)
        _ended(target, exchange, grpc.status_of(answer.headers))
    request.reply(answer.status, headers, body, answer.reason)
    exchange.status = answer.status
    exchange.bytes_out = len(body)


def _ended(target: Target, exchange: Exchange, status: GrpcStatus | None) -> None:
    """Note the status that ended a gRPC call: one of the route's `grpc_error_codes` is an
    error of the variant that answered (an answer without one is UNKNOWN, as clients read it)."""
    exchange.grpc_status = status = GrpcStatus.UNKNOWN if status is None else status
    if status in target.grpc_errors and exchange.error is None:
        exchange.error = Failure.GRPC_STATUS


def _trailers(answer: Answer | H2Answer) -> list[tuple[bytes, bytes]] | None:
    """The answer's trailers for the client (an HTTP/2 answer's; hop-by-hop and the proxy's
    own names left out)."""
    if not isinstance(answer, H2Answer):
        return None
    return [
        (name, value)
        for name, value in answer.trailers
        if name not in HOP_BY_HOP and not name.startswith(INTERNAL_PREFIX)
    ]


def _stream(
    request: Request,
    answer: Answer | H2Answer,
    target: Target,
    exchange: Exchange,
    sent: float,
) -> Coroutine[None, None, None]:
    """Stream `answer` to the client chunk by chunk (a small answer of known size in one go,
    unless trailers may follow it). (A plain function: one coroutine fewer per request.)"""
    length = answer.content_length
    if request.method != "HEAD" and (
        answer.complete and not answer.trailers  # (all in: a trailers-only gRPC answer...)
        if isinstance(answer, H2Answer)
        else length is not None and length <= SMALL_BODY
    ):
        return _whole(request, answer, target, exchange, sent)
    return _chunks(request, answer, target, exchange, sent)


async def _chunks(
    request: Request,
    answer: Answer | H2Answer,
    target: Target,
    exchange: Exchange,
    sent: float,
) -> None:
    """Stream `answer` to the client as its pieces arrive."""
    length = answer.content_length
    headers, event_stream = answer_headers(answer, target, exchange)
    exchange.event_stream = event_stream
    meter = StreamMeter(target.max_event_bytes) if event_stream else None
    try:
        request.start(answer.status, headers, length, answer.reason)
        exchange.status = answer.status
        upstream = target.upstream
        # (the whole exchange, or the gRPC call's deadline: a client not reading is cut)
        deadline = sent + exchange.timeout(upstream)
        async for chunk in answer.chunks(upstream.idle_timeout, deadline):
            if exchange.ttfb is None:
                exchange.ttfb = time.monotonic() - sent
            if meter is not None:
                meter.feed(chunk, time.monotonic() - sent)
            if exchange.capture is not None:
                exchange.keep(chunk)
            await request.write(chunk, deadline)
            exchange.bytes_out += len(chunk)
        if exchange.ttfb is None:
            exchange.ttfb = time.monotonic() - sent
        trailers = _trailers(answer)
        if exchange.call:
            _ended(target, exchange, grpc.status_of(trailers or answer.headers))
        request.end(trailers)
    except ClientGone:
        pass  # the client went away mid-answer: closing the answer ends the upstream request
    except UpstreamError as exc:
        failure = classify(exc)
        _note_failure(target, exchange, failure, "mid-answer")
        if exchange.call:  # (a status the client can read, rather than a reset stream)
            status = grpc.status_for_http(failure.status)
            exchange.grpc_status = status
            request.end(grpc.status_fields(status, failure.detail))
        else:
            request.abort()
    finally:
        if meter is None:
            exchange.ttft = exchange.ttfb
        else:
            exchange.ttft, exchange.output_tokens = meter.first_token, meter.output_tokens
