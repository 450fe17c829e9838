"""Request ids that say, to whoever holds the key, which route and variant served a request.

Every answer on a route carries `X-Grayscale-Request-Id`; an application later reports what the
user did with that answer (`POST /outcomes`), and the proxy needs to know which variant served
it. The id carries that itself, signed, so that any process of a fleet holding the same key can
read it with nothing stored per request: no memory grows with traffic, and an outcome can be
sent to a different replica or worker than the one that served the request.

Invariants
- An id is `base64url(payload || mac)`: payload = version, variant, the time in milliseconds
  (6 bytes), a nonce (4 random bytes per process, 4 of a counter), 4 bytes of a digest of the
  rollout (route, candidate and salt), the route's name; mac = keyed BLAKE2b of the payload
  (10 bytes). Without the key an id can be neither made nor changed (an end user cannot move
  their outcomes to the other variant); with it, reading is a constant-time comparison.
- Ids are unique per process (the counter) and, with overwhelming probability, per fleet.
- Pure apart from the clock and the nonce's random bytes, taken once per process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import os
from dataclasses import dataclass

from proxy.config.model import Variant

VERSION = 1
_MAC = 10
_VARIANTS = {Variant.STABLE: b"s", Variant.CANDIDATE: b"c"}
_BY_BYTE = {ord(b): v for v, b in _VARIANTS.items()}
_FIXED = 2 + 6 + 8 + 4  # version, variant, time, nonce, rollout digest


def key_of(secret: str) -> bytes:
    """The signing key for a secret (any length)."""
    return hashlib.blake2b(secret.encode(), person=b"grayscale-rid", digest_size=32).digest()


def rollout_digest(identity: str) -> bytes:
    """4 bytes naming a rollout, so an outcome for a rollout that was replaced is told apart."""
    return hashlib.blake2b(identity.encode(), digest_size=4).digest()


@dataclass(frozen=True, slots=True)
class Served:
    """What an id says: route, variant, the rollout's digest, and when (seconds)."""

    route: str
    variant: Variant
    rollout: bytes
    at: float


class Minter:
    """Makes the ids of one process."""

    __slots__ = ("_counter", "_key", "_prefix")

    def __init__(self, key: bytes):
        self._key = hashlib.blake2b(key=key, digest_size=_MAC)
        self._prefix = os.urandom(4)
        self._counter = itertools.count()

    def label(self, route: str, variant: Variant, identity: str) -> tuple[bytes, bytes]:
        """The constant parts of the ids of one route's variant (made once per config)."""
        head = bytes((VERSION,)) + _VARIANTS[variant]
        return head, rollout_digest(identity) + route.encode()

    def mint(self, label: tuple[bytes, bytes], now: float) -> bytes:
        """A new id for a request served under `label` at `now` (seconds)."""
        head, tail = label
        count = next(self._counter) & 0xFFFFFFFF
        payload = b"".join(
            (head, int(now * 1000).to_bytes(6, "big"), self._prefix, count.to_bytes(4), tail)
        )
        mac = self._key.copy()
        mac.update(payload)
        return base64.urlsafe_b64encode(payload + mac.digest()).rstrip(b"=")


class Reader:
    """Reads the ids signed with one key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes):
        self._key = hashlib.blake2b(key=key, digest_size=_MAC)

    def read(self, request_id: str) -> Served | None:
        """What `request_id` says, or None if it is not an id signed with our keys."""
        if not 0 < len(request_id) <= 512:
            return None
        try:
            raw = base64.urlsafe_b64decode(request_id + "=" * (-len(request_id) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) <= _FIXED + _MAC:
            return None
        payload, mac = raw[:-_MAC], raw[-_MAC:]
        expected = self._key.copy()
        expected.update(payload)
        if not hmac.compare_digest(expected.digest(), mac):
            return None
        variant = _BY_BYTE.get(payload[1])
        if payload[0] != VERSION or variant is None:
            return None
        try:
            route = payload[_FIXED:].decode()
        except UnicodeDecodeError:
            return None
        at = int.from_bytes(payload[2:8], "big") / 1000
        return Served(route, variant, payload[16:20], at)
