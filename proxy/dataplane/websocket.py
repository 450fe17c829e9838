"""WebSocket handshakes through the proxy (RFC 6455 §4, RFC 9110 §7.8): an upgrade request,
routed as any request, is asked of the chosen upstream over a connection of its own; a `101`
turns the client's connection into a tunnel to it (`proxy.http.tunnel`).

Invariants
- Only a bodiless HTTP/1.1 `GET` whose `Connection` holds the token `upgrade` and whose
  `Upgrade` holds `websocket` (any case) is an upgrade, on a route with `websocket` on, toward
  an upstream not spoken to in HTTP/2; any other request (an upgrade on a route with it off
  included) is forwarded as plain HTTP, its `Upgrade` dropped as hop-by-hop. HTTP/2 streams
  never are (a stream with `:protocol`, RFC 8441, is refused with `400`).
- The variant is the gateway's decision, as for any request; a candidate that cannot be
  reached falls back to stable as the route's `fallback` says.
- The upstream is asked over a new connection (never a pooled one) with the request's fields
  as any request's (`headers.forwarded_for_upstream`), plus `Connection: Upgrade` and `Upgrade:
  websocket`; `Sec-WebSocket-*` fields are kept even where `Connection` names them.
- Only a `101` whose `Upgrade` holds `websocket` switches: the client gets it with the
  upstream's fields and the proxy's labels, then bytes both ways until a side closes, the tunnel
  is silent for the upstream's `idle_timeout` or the proxy stops (not the route's `timeout`: a
  WebSocket lives long). A `101` for anything else is a `502`. Any other answer is passed on
  whole, and the client connection closed after it.
- A tunnel holds one of its upstream's `max_connections` slots from its handshake to its end,
  as a forwarded request holds one for its exchange: at most `max_connections` tunnels and
  requests in all, `max_pending` more waiting up to `connect_timeout`, then `503
  upstream_overloaded` (the candidate's falls back to stable as a request's would). The slot is
  given back exactly once, when the handshake fails or the tunnel ends.
- The handshake is one request outcome, recorded as soon as it is over (the tunnel's life and
  bytes are not metered): the status the client got (`101` a success); a failure to reach the
  upstream, `502`/`504` with the usual JSON and its `Failure` counted for the variant.
"""

from __future__ import annotations

import logging
import time
from typing import TypeGuard

from proxy.dataplane.forwarding import (
    FALLBACK_HEADER,
    FALLS_BACK,
    OVERLOADED,
    Exchange,
    Target,
    UpstreamFailure,
    classify,
    error_document,
    waited_for_slot,
)
from proxy.http.client import UpstreamClient
from proxy.http.errors import UpstreamError
from proxy.http.headers import answer_for_client, connection_named, forwarded_for_upstream, tokens
from proxy.http.request import H1Request, Request
from proxy.http.upgrade import UpgradeConnection, ask_upgrade

log = logging.getLogger("grayscale.websocket")

UPGRADE_LINES = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
_KEPT_PREFIX = b"sec-websocket-"  # fields kept even when `Connection` names them


def is_upgrade(request: Request) -> TypeGuard[H1Request]:
    """Whether `request` asks to switch to WebSocket (see the module's rules)."""
    return (
        b"upgrade" in request.keys
        and isinstance(request, H1Request)
        and request.version == "1.1"
        and request.method == "GET"
        and not request.has_body
        and b"websocket" in tokens(request.raw_values(b"upgrade"))
        and b"upgrade" in tokens(request.raw_values(b"connection"))
    )


def upstream_head(request: H1Request, target: Target, trusted: bool) -> bytes:
    """The request head sent to `target`'s upstream: as any forwarded request's, plus the
    upgrade's own fields."""
    named = connection_named(request.raw_values(b"connection"))
    keys, fields = [], []
    for key, field in zip(request.keys, request.raw_headers, strict=True):
        if key == b"connection" or (key in named and not key.startswith(_KEPT_PREFIX)):
            continue
        keys.append(key)
        fields.append(field)
    lines = forwarded_for_upstream(
        keys,
        fields,
        peer=(request.remote or "").encode(),
        authority=request.authority,
        version=request.version.encode(),
        trusted=trusted,
        secure=request.secure,
    )
    origin = target.origin
    return b"GET %s%s HTTP/1.1\r\n%s%s%s\r\n" % (
        origin.raw_prefix,
        request.raw_target,
        origin.host_line,
        lines,
        UPGRADE_LINES,
    )


async def _ask(
    request: H1Request, client: UpstreamClient, target: Target, trusted: bool
) -> UpgradeConnection:
    upstream = target.upstream
    return await ask_upgrade(
        target.origin,
        upstream_head(request, target, trusted),
        tls=client.tls(target.origin),
        connect_timeout=upstream.connect_timeout,
        first_byte_timeout=min(upstream.first_byte_timeout, upstream.timeout),
    )


async def _open(
    request: H1Request, client: UpstreamClient, target: Target, trusted: bool
) -> UpgradeConnection | UpstreamFailure:
    """Take a connection slot of `target`'s and ask it to switch: the answer's head (the slot
    then held by the caller), or why not (the slot given back, if one was taken)."""
    limiter = target.limiter
    if not limiter.try_acquire() and not await waited_for_slot(target):
        return OVERLOADED
    try:
        return await _ask(request, client, target, trusted)
    except UpstreamError as exc:
        limiter.release()
        return classify(exc)
    except BaseException:
        limiter.release()
        raise


def _failed(request: Request, target: Target, exchange: Exchange, failure: UpstreamFailure) -> None:
    """Answer with JSON: the upstream could not answer the handshake."""
    exchange.variant, exchange.status = target.variant, failure.status
    exchange.error = failure.reason
    log.warning(
        "upstream error in a websocket handshake (%s): %s",
        failure.reason,
        failure.detail,
        extra={"route": target.route, "variant": target.variant},
    )
    document = error_document(
        failure.status,
        failure.error,
        failure.detail,
        target.openai,
        route=target.route,
        variant=target.variant,
    )
    request.reply_json(failure.status, document, target.labels(exchange))


async def tunnel(
    request: H1Request,
    client: UpstreamClient,
    target: Target,
    exchange: Exchange,
    *,
    fallback: Target | None = None,
    trusted: bool = False,
) -> None:
    """Ask `target` to switch `request` to WebSocket and answer the client: a `101` and a
    tunnel (which the client's connection serves after this returns), the upstream's refusal,
    or the proxy's `502`/`504`. `exchange` is filled in for the handshake's outcome."""
    exchange.variant = target.variant
    sent = time.monotonic()
    opened = await _open(request, client, target, trusted)
    if isinstance(opened, UpstreamFailure):
        reason = opened.reason
        if fallback is None or reason is None or reason not in FALLS_BACK:
            return _failed(request, target, exchange, opened)
        exchange.candidate_error, exchange.fallback = reason, FALLS_BACK[reason]
        target = fallback
        exchange.variant = target.variant
        sent = time.monotonic()
        opened = await _open(request, client, target, trusted)
        if isinstance(opened, UpstreamFailure):
            return _failed(request, target, exchange, opened)
    connection = opened
    exchange.ttfb = time.monotonic() - sent
    tunnelled = False
    try:
        if connection.switched:
            upgrade = [value for name, value in connection.headers if name.lower() == b"upgrade"]
            if b"websocket" not in tokens(upgrade):
                error = UpstreamError("protocol", "a 101 to a protocol other than websocket")
                return _failed(request, target, exchange, classify(error))
            upstream, rest = connection.take()
            request.switch(
                _answer_lines(connection, target, exchange) + UPGRADE_LINES,
                upstream,
                idle_timeout=target.upstream.idle_timeout,
                from_upstream=rest,
            )
            tunnelled = True
            assert request.tunnel is not None
            limiter = target.limiter
            request.tunnel.done.add_done_callback(lambda _: limiter.release())
            exchange.status = 101
            return None
        body = await connection.read(target.upstream.idle_timeout)
    except UpstreamError as exc:
        return _failed(request, target, exchange, classify(exc))
    finally:
        if not tunnelled:
            connection.close()
            target.limiter.release()
    request.keep_alive = False  # it asked to switch and was refused: no more requests on it
    request.reply(connection.status, _answer_lines(connection, target, exchange), body)
    exchange.status, exchange.bytes_out = connection.status, len(body)
    return None


def _answer_lines(connection: UpgradeConnection, target: Target, exchange: Exchange) -> bytes:
    """The upstream's answer header lines for the client, plus the proxy's labels."""
    lines = [answer_for_client(connection.headers)[0], target.labels(exchange)]
    if exchange.fallback is not None:
        lines.append(b"%s: %s\r\n" % (FALLBACK_HEADER.encode(), exchange.fallback.encode()))
    return b"".join(lines)
