"""Request ids that say, to whoever holds the key, which route and variant served a request.

Every answer on a route carries `X-Grayscale-Request-Id`; an application later reports what the
user did with that answer (`POST /outcomes`), and the proxy needs to know which variant served
it. The id carries that itself, signed, so that any process of a fleet holding the same key can
read it with nothing stored per request: no memory grows with traffic, and an outcome can be
sent to a different replica or worker than the one that served the request.

Invariants
- An id is `base64url(signed || mac) "." tag count`. signed = version, variant, the time in
  seconds (5 bytes), 4 bytes of a digest of the rollout (route, candidate and salt), the route
  name's length and the name, zero bytes to a multiple of 3; mac = keyed BLAKE2b of signed (10
  bytes); tag = 8 random hex digits per process, count = a per-process counter in decimal.
  Without the key, what an id says (route, variant, rollout, time) can be neither made nor
  changed: an end user cannot move their outcomes to the other variant. The tag and count only
  make ids unique; changing them changes nothing an outcome is counted by.
- The signed part is made once per second per route and variant, so an id costs a counter and
  a little formatting per request.
- Ids are unique per process (the counter) and, with overwhelming probability, per fleet.
- Pure apart from the tag's random bytes, taken once per process.
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

VERSION = 2
_MAC = 10
_VARIANTS = {Variant.STABLE: b"s", Variant.CANDIDATE: b"c"}
_BY_BYTE = {ord(b): v for v, b in _VARIANTS.items()}
_FIXED = 1 + 1 + 5 + 4 + 1  # version, variant, time, rollout digest, route name's length


def key_of(secret: str) -> bytes:
    """The signing key for a secret (any length)."""
    return hashlib.blake2b(secret.encode(), person=b"grayscale-rid", digest_size=32).digest()


def rollout_digest(identity: str) -> bytes:
    """4 bytes naming a rollout, so an outcome for a rollout that was replaced is told apart."""
    return hashlib.blake2b(identity.encode(), digest_size=4).digest()


@dataclass(frozen=True, slots=True)
class Served:
    """What an id says: route, variant, the rollout's digest, and when (whole seconds)."""

    route: str
    variant: Variant
    rollout: bytes
    at: float


class Label:
    """The constant parts of the ids of one route's variant, and their signed part of the
    current second."""

    __slots__ = ("head", "prefix", "second", "tail")

    def __init__(self, head: bytes, tail: bytes):
        self.head, self.tail = head, tail
        self.second = -1
        self.prefix = b""


class Minter:
    """Makes the ids of one process."""

    __slots__ = ("_counter", "_key", "_tag")

    def __init__(self, key: bytes):
        self._key = hashlib.blake2b(key=key, digest_size=_MAC)
        self._tag = b"." + os.urandom(4).hex().encode()
        self._counter = itertools.count()

    def label(self, route: str, variant: Variant, identity: str) -> Label:
        """The label of one route's variant (made once per config)."""
        name = route.encode()[:255]
        head = bytes((VERSION,)) + _VARIANTS[variant]
        return Label(head, rollout_digest(identity) + bytes((len(name),)) + name)

    def mint(self, label: Label, now: float) -> bytes:
        """A new id for a request served under `label` at `now` (seconds)."""
        second = int(now)
        if second != label.second:
            signed = label.head + second.to_bytes(5, "big") + label.tail
            signed += bytes(-(len(signed) + _MAC) % 3)  # whole base64 groups: ids concatenate
            mac = self._key.copy()
            mac.update(signed)
            label.prefix = base64.urlsafe_b64encode(signed + mac.digest())
            label.second = second
        return b"%s%s%d" % (label.prefix, self._tag, next(self._counter))


class Reader:
    """Reads the ids signed with one key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes):
        self._key = hashlib.blake2b(key=key, digest_size=_MAC)

    def read(self, request_id: str) -> Served | None:
        """What `request_id` says, or None if it is not an id signed with our key."""
        signature, dot, _ = request_id.partition(".")
        if not dot or not 0 < len(request_id) <= 512 or len(signature) % 4:
            return None
        try:
            raw = base64.urlsafe_b64decode(signature.encode("ascii"))
        except (binascii.Error, ValueError):
            return None
        signed, mac = raw[:-_MAC], raw[-_MAC:]
        if len(signed) < _FIXED:
            return None
        expected = self._key.copy()
        expected.update(signed)
        if not hmac.compare_digest(expected.digest(), mac):
            return None
        variant = _BY_BYTE.get(signed[1])
        length = signed[_FIXED - 1]
        if signed[0] != VERSION or variant is None or len(signed) < _FIXED + length:
            return None
        try:
            route = signed[_FIXED : _FIXED + length].decode()
        except UnicodeDecodeError:
            return None
        at = float(int.from_bytes(signed[2:7], "big"))
        return Served(route, variant, signed[7:11], at)
