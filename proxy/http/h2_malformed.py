"""Whether an HTTP/2 header block is malformed (RFC 9113 §8.2 and §8.3), in one pass: a
request's, as the proxy's HTTP/2 listener takes it, and an answer's, as its HTTP/2 upstream
client does.

h2 checks the same rules with a chain of seven generators per header block; both sides check
them here instead, in one pass (about 10 % less CPU to take in and answer a request's head:
`loadtests/README.md`, HTTP/2 and gRPC).

Invariants
- `malformed(fields, trailers)` is None exactly when h2's own inbound validation of a request's
  header block (or of its trailers) passes, and `malformed_answer(fields, trailers)` exactly
  when its validation of an answer's (an interim one included) does (both tested against it as
  the oracle); else they say why not.
- Nothing here reads anything but the fields given: no I/O, no state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# A field name holds no control, space, upper-case, colon (but a pseudo-header's first) or
# non-ASCII byte (§8.2.1); a value no NUL, CR or LF, nor whitespace at either end.
_BAD_NAME = re.compile(rb"[\x00-\x20:A-Z\x7f-\xff]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_EDGE_WHITESPACE = frozenset(b" \t")
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
_PSEUDO = _REQUEST_PSEUDO | {b":status"}

Fields = Sequence[tuple[bytes, bytes]]


def malformed(fields: Fields, trailers: bool) -> str | None:
    """Why a request's header block (`trailers`: its trailer block) is malformed, or None."""
    why, pseudo, host = _checked(fields, hosts=not trailers)
    if why is not None:
        return why
    if trailers:
        return "a pseudo-header in trailers" if pseudo else None
    if b":status" in pseudo:
        return "the pseudo-header b':status' in a request"
    return _request_pseudo(pseudo, host)


def malformed_answer(fields: Fields, trailers: bool) -> str | None:
    """Why an answer's header block (`trailers`: its trailer block) is malformed, or None."""
    why, pseudo, _ = _checked(fields, hosts=False)
    if why is not None:
        return why
    if trailers:
        return "a pseudo-header in trailers" if pseudo else None
    if b":status" not in pseudo:
        return "no :status"
    if not pseudo.keys() <= {b":status"}:
        return "a request's pseudo-header in an answer"
    return None


def _checked(fields: Fields, hosts: bool) -> tuple[str | None, dict[bytes, bytes], bytes | None]:
    """The rules of every field (§8.2), then the pseudo-headers and (`hosts`) the one `Host`
    seen: (why the block is malformed or None, its pseudo-headers, its `Host`)."""
    pseudo: dict[bytes, bytes] = {}
    regular = False
    host: bytes | None = None
    for name, value in fields:
        if not name:
            return "a field with an empty name", pseudo, host
        if _BAD_NAME.search(name, 1 if name[0] == 0x3A else 0):
            return f"an invalid field name {name!r}", pseudo, host
        if value and (
            _BAD_VALUE.search(value)
            or value[0] in _EDGE_WHITESPACE
            or value[-1] in _EDGE_WHITESPACE
        ):
            return f"an invalid value of {name!r}", pseudo, host
        if name[0] == 0x3A:
            if name in pseudo:
                return f"{name!r} twice", pseudo, host
            if regular:
                return f"{name!r} after a regular field", pseudo, host
            if name not in _PSEUDO:
                return f"the pseudo-header {name!r}", pseudo, host
            pseudo[name] = value
            continue
        regular = True
        if name in _CONNECTION_SPECIFIC:
            return f"the connection-specific field {name!r}", pseudo, host
        if name == b"te" and value.lower() != b"trailers":
            return f"TE: {value!r}", pseudo, host
        if hosts and name == b"host":
            if host is not None:
                return "Host twice", pseudo, host
            host = value
    return None, pseudo, host


def _request_pseudo(pseudo: dict[bytes, bytes], host: bytes | None) -> str | None:
    """What a request's pseudo-headers lack or have too many of (§8.3.1, RFC 8441 §4)."""
    method = pseudo.get(b":method")
    if method is None:
        return "no :method"
    connect = method == b"CONNECT"
    if connect and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            return "CONNECT with :scheme or :path"
    elif b":scheme" not in pseudo or b":path" not in pseudo:
        return "no :scheme or no :path"
    if not connect and b":protocol" in pseudo:
        return ":protocol without CONNECT"
    authority = pseudo.get(b":authority")
    if authority is None and host is None:
        return "neither :authority nor Host"
    if authority is not None and host is not None and authority != host:
        return ":authority and Host differ"
    if pseudo.get(b":path") == b"":
        return "an empty :path"
    return None
