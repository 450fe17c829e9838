"""gRPC over HTTP/2, as a gateway reads it (grpc/doc/PROTOCOL-HTTP2.md): which requests are
calls, a call's deadline, the status that ended it, and the answers the proxy makes itself.

Invariants
- A request is a gRPC call when its content type is `application/grpc`, alone or with a
  `+format` or parameters (gRPC-Web's `application/grpc-web` is not).
- `grpc-timeout` is 1 to 8 digits and a unit (H, M, S, m, u, n); anything else is no deadline
  (the spec leaves a malformed one to the server; the proxy does not invent one).
- A call's status is the `grpc-status` of its trailers, or of its head when the answer is
  trailers-only; a value that is not a whole number from 0 to 16 is UNKNOWN, as clients read it.
- The proxy's own answer to a call is trailers-only (HTTP 200, `content-type:
  application/grpc`, `grpc-status`, `grpc-message` percent-encoded): what a gRPC client reads,
  where an HTTP 502 with a JSON body would be "Received http2 header with status: 502".
"""

from __future__ import annotations

from proxy.config.model import GrpcStatus

CONTENT_TYPE = b"application/grpc"
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# The status of the proxy's own answer to a call, by the HTTP status it gives other clients
# (the gRPC spec's table for HTTP to gRPC, with timeouts as DEADLINE_EXCEEDED).
_FOR_HTTP = {
    400: GrpcStatus.INTERNAL,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    408: GrpcStatus.DEADLINE_EXCEEDED,
    413: GrpcStatus.RESOURCE_EXHAUSTED,
    429: GrpcStatus.UNAVAILABLE,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.DEADLINE_EXCEEDED,
}
_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}  # sent as they are in grpc-message


def is_call(content_type: bytes | None) -> bool:
    """Whether a request with this content type is a gRPC call."""
    if content_type is None or content_type[:16].lower() != CONTENT_TYPE:
        return False
    rest = content_type[16:17]
    return rest in (b"", b"+", b";")


def deadline(value: bytes | None) -> float | None:
    """The seconds a `grpc-timeout` value allows, or None (absent or malformed)."""
    if value is None or not 2 <= len(value) <= 9:
        return None
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or unit not in _UNITS:
        return None
    return int(digits) * _UNITS[unit]


def status_of(fields: list[tuple[bytes, bytes]]) -> GrpcStatus | None:
    """The `grpc-status` among `fields` (names in lower case), or None if there is none."""
    for name, value in fields:
        if name == b"grpc-status":
            number = value.strip()
            if number.isdigit() and int(number) <= max(GrpcStatus):
                return GrpcStatus(int(number))
            return GrpcStatus.UNKNOWN
    return None


def status_for_http(status: int) -> GrpcStatus:
    """The gRPC status of the proxy's own answer with HTTP `status` (to another client)."""
    return _FOR_HTTP.get(status, GrpcStatus.UNKNOWN)


def encode_message(message: str) -> bytes:
    """`grpc-message`'s value: UTF-8, percent-encoded outside printable ASCII and `%`."""
    return b"".join(
        bytes((byte,)) if byte in _SAFE else b"%%%02X" % byte for byte in message.encode()
    )


def status_fields(status: GrpcStatus, message: str) -> list[tuple[bytes, bytes]]:
    """The fields that end a call with `status`: trailers, or part of a trailers-only head."""
    return [(b"grpc-status", b"%d" % status), (b"grpc-message", encode_message(message))]


def trailers_only(status: GrpcStatus, message: str) -> bytes:
    """The header lines (rendered, as `Request.reply` takes them) of a trailers-only answer
    ending a call with `status`."""
    fields = [(b"content-type", CONTENT_TYPE), *status_fields(status, message)]
    return b"".join(b"%s: %s\r\n" % field for field in fields)
