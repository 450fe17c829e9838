"""Header fields as the proxy's HTTP/2 sides send them through HPACK (RFC 7541).

The proxy speaks HTTP/2 inside a data centre, where CPU counts more than a few header bytes, and
carries many users' requests on one upstream connection.

Invariants
- Credentials (`authorization`, `proxy-authorization`, `cookie`, `set-cookie`) never enter a
  compression context (RFC 7541 §7.1.3): they are sent as never-indexed literals, so a request
  on a shared upstream connection cannot learn another user's by how well its own compresses.
- A value longer than LONG_VALUE bytes (a request id, a signature, a token) is a never-indexed
  literal too: such values rarely repeat, and in the table they would push out those that do.
- Literals are not Huffman-coded (`Encoder`): it saves a fifth of their bytes and costs more
  CPU than the rest of the encoding.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Encoder as HpackEncoder
from hpack import NeverIndexedHeaderTuple

LONG_VALUE = 40  # bytes: longer values are not indexed
SENSITIVE = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})


def field(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """A header field to send: never indexed when it is a credential or a long value."""
    if len(value) > LONG_VALUE or name in SENSITIVE:
        return NeverIndexedHeaderTuple(name, value)
    return (name, value)


class Encoder(HpackEncoder):
    """hpack's encoder, without Huffman coding."""

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = False) -> bytes:  # type: ignore[override]
        """Encode `headers` (see hpack's `Encoder.encode`) with plain literals."""
        return super().encode(headers, huffman=False)
