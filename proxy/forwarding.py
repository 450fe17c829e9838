"""Forwarding one request to an upstream and streaming the answer back, chunk by chunk.

The only user of the upstream HTTP client. Request bodies are streamed to the upstream, responses
are streamed to the client as they arrive (an SSE token stream is not coalesced), hop-by-hop
headers are dropped in both directions, and client errors map to a 502/504 with a JSON body.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from functools import lru_cache

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from proxy.config.model import Upstream

log = logging.getLogger("grayscale.forwarding")

VARIANT_HEADER = istr("X-Grayscale-Variant")
ROUTE_HEADER = istr("X-Grayscale-Route")
_INTERNAL_PREFIX = "x-grayscale-"
_HOP_BY_HOP = frozenset(
    istr(h)
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
_HOST = istr("Host")
_EXPECT = istr("Expect")
_XFF = istr("X-Forwarded-For")
_XF_PROTO = istr("X-Forwarded-Proto")
_XF_HOST = istr("X-Forwarded-Host")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes and how it is labelled."""

    route: str
    variant: str
    upstream: Upstream


@dataclass(slots=True)
class Exchange:
    """What happened to one forwarded request; `forward` fills it in as it goes."""

    status: int = 0  # the status sent to the client; 0 until the answer started
    error: str | None = None  # why the upstream failed: connect, timeout, reset or protocol
    ttfb: float | None = None  # seconds from sending upstream to the answer body's first byte
    bytes_out: int = 0  # answer body bytes written to the client


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """Why an upstream exchange failed: `reason` is connect, timeout, reset or protocol."""

    reason: str
    status: int
    error: str
    detail: str


def _dropped(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Hop-by-hop headers, including those the `Connection` header names."""
    named = [
        token.strip() for value in headers.getall("Connection", ()) for token in value.split(",")
    ]
    return _HOP_BY_HOP.union(istr(token) for token in named if token)


def upstream_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    """The request headers to send upstream.

    Hop-by-hop headers, `Host` (the client sets it from the upstream URL), `Expect` (the proxy
    answers `100-continue` itself) and any client-sent `X-Grayscale-*` header are dropped.
    `X-Forwarded-For` gets the peer appended; `X-Forwarded-Proto` and `X-Forwarded-Host` are set
    unless a proxy in front already set them.
    """
    drop = _dropped(request.headers)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        if name in drop or name in (_HOST, _EXPECT) or name.lower().startswith(_INTERNAL_PREFIX):
            continue
        headers.add(name, value)
    peer = request.remote or ""
    previous = headers.get(_XFF)
    headers[_XFF] = f"{previous}, {peer}" if previous else peer
    headers.setdefault(_XF_PROTO, request.scheme)
    if request.host:
        headers.setdefault(_XF_HOST, request.host)
    return headers


def _copy_response_headers(
    answer: aiohttp.ClientResponse, headers: CIMultiDict[str], target: Target
) -> None:
    """Copy the upstream's answer headers into `headers`, less hop-by-hop ones, plus ours."""
    drop = _dropped(answer.headers)
    for name, value in answer.headers.items():
        if name not in drop:
            headers.add(name, value)
    headers[VARIANT_HEADER] = target.variant
    headers[ROUTE_HEADER] = target.route
    if answer.content_type == "text/event-stream":
        # Tell buffering proxies in front of us (nginx and the like) to pass events through.
        headers["X-Accel-Buffering"] = "no"


@lru_cache(maxsize=256)
def _timeout(connect: float, total: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, connect=connect)


def classify(exc: BaseException) -> UpstreamFailure:
    """Map an upstream client error to a reason, a status and a message."""
    if isinstance(exc, TimeoutError):
        return UpstreamFailure(
            "timeout", 504, "upstream_timeout", "the upstream did not answer in time"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamFailure(
            "connect", 502, "upstream_unreachable", f"cannot connect: {exc.strerror}"
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return UpstreamFailure("reset", 502, "upstream_reset", "the upstream closed the connection")
    return UpstreamFailure(
        "protocol", 502, "upstream_protocol_error", f"bad upstream answer: {exc}"
    )


def error_response(status: int, error: str, message: str, **fields: str) -> web.Response:
    """A JSON error answer: ``{"error": ..., "message": ..., **fields}``."""
    body = json.dumps({"error": error, "message": message, **fields})
    return web.Response(status=status, text=body, content_type="application/json")


async def forward(
    request: web.BaseRequest,
    session: aiohttp.ClientSession,
    target: Target,
    exchange: Exchange,
) -> web.StreamResponse:
    """Send `request` to `target`, stream the answer back, and note what happened in `exchange`.

    Before the answer's headers are sent, an upstream failure becomes a 502/504 JSON answer. After,
    the client connection is closed without completing the body, so the client sees the failure.
    """
    upstream = target.upstream
    url = URL(upstream.url + request.raw_path, encoded=True)
    response: web.StreamResponse | None = None
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        async with session.request(
            request.method,
            url,
            headers=upstream_headers(request),
            data=request.content if request.body_exists else None,
            timeout=_timeout(upstream.connect_timeout, upstream.timeout),
            allow_redirects=False,
        ) as answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            _copy_response_headers(answer, response.headers, target)
            await response.prepare(request)
            exchange.status = answer.status
            async for chunk in answer.content.iter_any():
                if exchange.ttfb is None:
                    exchange.ttfb = loop.time() - sent
                await response.write(chunk)
                exchange.bytes_out += len(chunk)
            if exchange.ttfb is None:
                exchange.ttfb = loop.time() - sent
            await response.write_eof()
            return response
    except (TimeoutError, aiohttp.ClientError) as exc:
        if isinstance(exc, aiohttp.ClientConnectionResetError) and response is not None:
            # The client went away mid-answer; leaving the block closed the upstream request.
            return response
        failure = classify(exc)
        exchange.error = failure.reason
        log.warning(
            "upstream error (%s): %s",
            failure.reason,
            failure.detail,
            extra={"route": target.route, "variant": target.variant},
        )
        if response is None:
            exchange.status = failure.status
            answer_error = error_response(
                failure.status,
                failure.error,
                failure.detail,
                route=target.route,
                variant=target.variant,
            )
            answer_error.headers[VARIANT_HEADER] = target.variant
            answer_error.headers[ROUTE_HEADER] = target.route
            return answer_error
        if request.transport is not None:
            request.transport.close()
        return response
