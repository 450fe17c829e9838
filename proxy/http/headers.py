"""Header field rules shared by both sides: hop-by-hop fields, Host, transfer codings, and the
fields a gateway adds on the way to the upstream (RFC 9110 §7.6, RFC 9112 §3.2, §6, §7).

Invariants
- A header that is hop-by-hop (listed here, or named by `Connection`) never crosses the proxy,
  in either direction; neither does a `Content-Length` (each side frames its own body).
- `X-Grayscale-*` fields are the proxy's: one sent by a client or by an upstream is dropped.
- A name is compared with `_` read as `-`, as CGI and WSGI servers read it (both spellings
  become `HTTP_X_GRAYSCALE_VARIANT`): `X_Grayscale_Variant` or `Transfer_Encoding` is dropped as
  its dashed twin would be, and so is an underscore spelling of a field the proxy sets toward
  the upstream (`X_Forwarded_For`...), which such a server would take for the proxy's own.
- `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` are believed only from a peer listed
  in `server.trusted_proxies`; from anyone else they are replaced (or, for `Forwarded`, dropped).
  `X-Forwarded-For` always gets the peer appended, so its last entry is one we saw.
- Every request sent upstream carries `Via` with the protocol version it was received in.
- An answer is an event stream when its media type is `text/event-stream`, in any case, with
  or without parameters (RFC 9110 §8.3.1: type and subtype are case-insensitive).
"""

from __future__ import annotations

import re
from typing import TypeVar

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
INTERNAL_PREFIX = b"x-grayscale-"
VIA_NAME = b"grayscale"  # our pseudonym in Via (RFC 9110 §7.6.3)

# Host = uri-host [ ":" port ] (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP literal in brackets, or a
# reg-name (which also matches an IPv4 address); no userinfo, no path, no whitespace.
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[\w.~!$&'()*+,;=:-]+\]"
    rb"|(?:[\w.~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+)(?::[0-9]{0,5})?",
    re.ASCII,
)


def valid_host(value: bytes) -> bool:
    """Whether `value` is a valid, non-empty Host for an http(s) URI."""
    valid = _HOSTS.get(value)
    if valid is None:
        valid = _remember(_HOSTS, value, _HOST.fullmatch(value) is not None)
    return valid


def spelled(key: bytes) -> bytes:
    """A lower-case field name as CGI and WSGI servers read it: `_` as `-`."""
    return key.replace(b"_", b"-") if b"_" in key else key


def connection_named(values: list[bytes]) -> frozenset[bytes]:
    """The fields that `Connection` values name (hop-by-hop, RFC 9110 §7.6.1), `spelled`."""
    return frozenset(spelled(token) for token in tokens(values))


def is_event_stream(content_type: bytes) -> bool:
    """Whether a `Content-Type` value is `text/event-stream` (any case, any parameters)."""
    return content_type.partition(b";")[0].strip(b" \t").lower() == b"text/event-stream"


def tokens(values: list[bytes]) -> list[bytes]:
    """The members of comma-separated list fields, lower case, without empty ones."""
    found = []
    for value in values:
        for member in value.split(b","):
            token = member.strip(b" \t").lower()
            if token:
                found.append(token)
    return found


def forwarded_for_upstream(
    keys: list[bytes],
    raw_headers: list[tuple[bytes, bytes]],
    *,
    peer: bytes,
    authority: bytes | None,
    version: bytes,
    trusted: bool,
    secure: bool = False,
) -> bytes:
    """The request header lines to send upstream, from the client's (`keys` are their names in
    lower case, `raw_headers` as received).

    Dropped: hop-by-hop fields, `Host` (the upstream's own is set by the client), `Content-Length`
    (the client frames the body), `Expect` (the proxy answers `100-continue` itself) and
    `X-Grayscale-*`. Added: `X-Forwarded-For` (the peer appended), `X-Forwarded-Proto` (`https` when
    the client's connection is `secure`) and `X-Forwarded-Host` (each kept only from a `trusted`
    peer), and `Via`.
    """
    named: frozenset[bytes] = frozenset()
    if b"connection" in keys:
        pairs = zip(keys, raw_headers, strict=True)
        named = connection_named([value for key, (_, value) in pairs if key == b"connection"])
    lines: list[bytes] = []
    forwarded_for = proto = host = None
    kinds = _REQUEST_KINDS
    for key, (name, value) in zip(keys, raw_headers, strict=True):
        kind = kinds.get(key)
        if kind is None:
            kind = _remember(kinds, key, _request_kind(key))
        if kind == _PASS:
            if not named or spelled(key) not in named:
                lines.append(b"%s: %s\r\n" % (name, value))
        elif kind == _FORWARDED_FOR:
            forwarded_for = value if forwarded_for is None else b"%s, %s" % (forwarded_for, value)
        elif kind != _DROP and trusted:  # set by a proxy in front: believed from trusted ones
            if kind == _FORWARDED_PROTO:
                proto = value
            elif kind == _FORWARDED_HOST:
                host = value
            lines.append(b"%s: %s\r\n" % (name, value))
    chain = b"%s, %s" % (forwarded_for, peer) if forwarded_for else peer
    lines.append(b"X-Forwarded-For: %s\r\n" % chain)
    if proto is None:
        lines.append(b"X-Forwarded-Proto: https\r\n" if secure else b"X-Forwarded-Proto: http\r\n")
    if host is None and authority:
        lines.append(b"X-Forwarded-Host: %s\r\n" % authority)
    lines.append(b"Via: %s %s\r\n" % (version, VIA_NAME))
    return b"".join(lines)


_PASS, _DROP, _FORWARDED_FOR, _FORWARDED_PROTO, _FORWARDED_HOST, _FORWARDED = range(6)
_BY_PROXIES = {
    b"x-forwarded-for": _FORWARDED_FOR,
    b"x-forwarded-proto": _FORWARDED_PROTO,
    b"x-forwarded-host": _FORWARDED_HOST,
    b"forwarded": _FORWARDED,
}
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"expect", b"content-length"}
_NOT_ANSWERED = HOP_BY_HOP | {b"content-length"}
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})  # names no other field


def _request_kind(key: bytes) -> int:
    read = spelled(key)
    if read in _NOT_FORWARDED or read.startswith(INTERNAL_PREFIX):
        return _DROP
    kind = _BY_PROXIES.get(read, _PASS)
    return _DROP if kind != _PASS and read != key else kind  # `X_Forwarded_For`: never ours


def _answer_key(name: bytes) -> tuple[bytes, bool]:
    key = name.lower()
    read = spelled(key)
    return key, not (read in _NOT_ANSWERED or read.startswith(INTERNAL_PREFIX))


# Header names repeat from request to request: what each means is worked out once. The caches
# stop growing at a bound, so that a client sending endless new names cannot grow them.
_HOSTS: dict[bytes, bool] = {}
_REQUEST_KINDS: dict[bytes, int] = {}
_ANSWER_KEYS: dict[bytes, tuple[bytes, bool]] = {}
_EVENT_STREAMS: dict[bytes, bool] = {}  # Content-Type values: whether each is an event stream
_CACHED = 4096
K = TypeVar("K")
V = TypeVar("V")


def _remember(cache: dict[K, V], key: K, value: V) -> V:
    if len(cache) < _CACHED:
        cache[key] = value
    return value


def answer_for_client(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bool]:
    """An upstream's answer header lines for the client (hop-by-hop fields, `Content-Length` and
    `X-Grayscale-*` dropped), and whether the answer is an event stream."""
    lines: list[bytes] = []
    kept: list[bytes] = []  # the lower-case name of each line
    named: list[bytes] = []
    event_stream = False
    keys = _ANSWER_KEYS
    for name, value in headers:
        entry = keys.get(name)
        if entry is None:
            entry = _remember(keys, name, _answer_key(name))
        key, passes = entry
        if not passes:
            if key == b"connection":
                named.append(value)
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
        kept.append(key)
        if key == b"content-type":
            streams = _EVENT_STREAMS.get(value)
            if streams is None:
                streams = _remember(_EVENT_STREAMS, value, is_event_stream(value))
            event_stream = event_stream or streams
    if named and not (len(named) == 1 and named[0].lower() in _PLAIN_CONNECTION):
        dropped = connection_named(named)
        pairs = zip(kept, lines, strict=True)
        return b"".join([line for key, line in pairs if spelled(key) not in dropped]), event_stream
    return b"".join(lines), event_stream
