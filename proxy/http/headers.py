"""Header field rules shared by both sides: hop-by-hop fields, Host, transfer codings, and the
fields a gateway adds on the way to the upstream (RFC 9110 §7.6, RFC 9112 §3.2, §6, §7).

Invariants
- A header that is hop-by-hop (listed here, or named by `Connection`) never crosses the proxy,
  in either direction; neither does a `Content-Length` (each side frames its own body).
- `X-Grayscale-*` fields are the proxy's: one sent by a client or by an upstream is dropped.
- `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` are believed only from a peer listed
  in `server.trusted_proxies`; from anyone else they are replaced (or, for `Forwarded`, dropped).
  `X-Forwarded-For` always gets the peer appended, so its last entry is one we saw.
- Every request sent upstream carries `Via` with the protocol version it was received in.
"""

from __future__ import annotations

import re

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
    return _HOST.fullmatch(value) is not None


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
) -> bytes:
    """The request header lines to send upstream, from the client's (`keys` are their names in
    lower case, `raw_headers` as received).

    Dropped: hop-by-hop fields, `Host` (the upstream's own is set by the client), `Content-Length`
    (the client frames the body), `Expect` (the proxy answers `100-continue` itself) and
    `X-Grayscale-*`. Added: `X-Forwarded-For` (the peer appended), `X-Forwarded-Proto` and
    `X-Forwarded-Host` (kept only from a `trusted` peer), and `Via`.
    """
    named: set[bytes] = set()
    for key, (_, value) in zip(keys, raw_headers, strict=True):
        if key == b"connection":
            named.update(tokens([value]))
    lines: list[bytes] = []
    forwarded_for = proto = host = None
    for key, (name, value) in zip(keys, raw_headers, strict=True):
        if key in _NOT_FORWARDED or key in named or key.startswith(INTERNAL_PREFIX):
            continue
        if key == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else b"%s, %s" % (forwarded_for, value)
            continue
        if key in _FORWARDED_BY_PROXIES:
            if not trusted:
                continue
            if key == b"x-forwarded-proto":
                proto = value
            elif key == b"x-forwarded-host":
                host = value
        lines.append(b"%s: %s\r\n" % (name, value))
    chain = b"%s, %s" % (forwarded_for, peer) if forwarded_for else peer
    lines.append(b"X-Forwarded-For: %s\r\n" % chain)
    if proto is None:
        lines.append(b"X-Forwarded-Proto: http\r\n")
    if host is None and authority:
        lines.append(b"X-Forwarded-Host: %s\r\n" % authority)
    lines.append(b"Via: %s %s\r\n" % (version, VIA_NAME))
    return b"".join(lines)


_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"expect", b"content-length"}
_FORWARDED_BY_PROXIES = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})


def answer_for_client(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bool]:
    """An upstream's answer header lines for the client (hop-by-hop fields, `Content-Length` and
    `X-Grayscale-*` dropped), and whether the answer is an event stream."""
    named = set(tokens([value for name, value in headers if name.lower() == b"connection"]))
    lines: list[bytes] = []
    event_stream = False
    for name, value in headers:
        key = name.lower()
        if key in _NOT_ANSWERED or key in named or key.startswith(INTERNAL_PREFIX):
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
        if key == b"content-type" and value.startswith(b"text/event-stream"):
            event_stream = True
    return b"".join(lines), event_stream


_NOT_ANSWERED = HOP_BY_HOP | {b"content-length"}
