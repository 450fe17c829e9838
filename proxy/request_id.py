"""Request ids that say, to whoever holds the key, which route and variant served a request.

Every answer on a route carries `X-Grayscale-Request-Id`; an application later reports what the
user did with that answer (`POST /outcomes`), and the proxy needs to know which variant served
it. The id carries that itself, signed, so that any process of a fleet holding the same key can
read it with nothing stored per request: no memory grows with traffic, and an outcome can be
sent to a different replica or worker than the one that served the request.

Invariants
- An id is `base64url(signed || mac) "." tag count`. signed = version, the variant the request
  was assigned (`s`, `c`, or `n` for a request the analysis does not compare: not assigned at
  random, or sent to stable because the candidate was ejected), the time in seconds (5 bytes),
  4 bytes of a digest of the rollout (route, candidate and salt), the candidate's share when
  the request was assigned (2 bytes, in 65,535ths: the request's weight in the analysis), the
  route name's length and the name, zero bytes to a multiple of 3; mac = keyed BLAKE2b of signed
  (10 bytes); tag = 8 random hex digits per process, count = a per-process counter in decimal.
  Without the key, what an id says (route, variant, rollout, time, share) can be neither made
  nor changed: an end user cannot move their outcomes to the other variant. The tag and count
  only make ids unique; changing them changes nothing an outcome is counted by.
- The signed part is made once per second per route, variant and share, so an id costs a
  counter and a little formatting per request.
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
from proxy.routing.decide import Decision, weight_of

VERSION = 3
_MAC = 10
STABLE, CANDIDATE, NOT_COMPARED = ord("s"), ord("c"), ord("n")  # what a request was assigned
_BY_BYTE: dict[int, Variant | None] = {
    STABLE: Variant.STABLE,
    CANDIDATE: Variant.CANDIDATE,
    NOT_COMPARED: None,
}
SHARES = 65535  # a share is signed in 65,535ths
_FIXED = 1 + 1 + 5 + 4 + 2 + 1  # version, variant, time, rollout, share, route name's length


def assignment(decision: Decision, candidate_out: bool) -> tuple[int, int]:
    """What an id says of a request's assignment: the variant's byte (`NOT_COMPARED` unless the
    analysis compares it: assigned at random, and not while the candidate was ejected) and the
    share in 65,535ths."""
    if not decision.compared or candidate_out:
        return NOT_COMPARED, 0
    code = CANDIDATE if decision.variant is Variant.CANDIDATE else STABLE
    return code, round(decision.share * SHARES)


def key_of(secret: str) -> bytes:
    """The signing key for a secret (any length)."""
    return hashlib.blake2b(secret.encode(), person=b"grayscale-rid", digest_size=32).digest()


def rollout_digest(identity: str) -> bytes:
    """4 bytes naming a rollout, so an outcome for a rollout that was replaced is told apart."""
    return hashlib.blake2b(identity.encode(), digest_size=4).digest()


@dataclass(frozen=True, slots=True)
class Served:
    """What an id says: route, the variant assigned (None: not compared), the rollout's digest,
    when (whole seconds), and the candidate's share at assignment."""

    route: str
    variant: Variant | None
    rollout: bytes
    at: float
    share: float

    @property
    def weight(self) -> float:
        """The request's weight in the analysis (`weight_of`; 0 when not compared)."""
        return 0.0 if self.variant is None else weight_of(self.variant, self.share)


class Label:
    """The constant parts of the ids of one route, and the signed parts of the current second
    by variant and share."""

    __slots__ = ("digest", "prefixes", "second", "tail")

    def __init__(self, digest: bytes, tail: bytes):
        self.digest, self.tail = digest, tail
        self.second = -1
        self.prefixes: dict[tuple[int, int], bytes] = {}


class Minter:
    """Makes the ids of one process."""

    __slots__ = ("_counter", "_key", "_tag")

    def __init__(self, key: bytes):
        self._key = hashlib.blake2b(key=key, digest_size=_MAC)
        self._tag = b"." + os.urandom(4).hex().encode()
        self._counter = itertools.count()

    def label(self, route: str, identity: str) -> Label:
        """The label of one route (made once per config)."""
        name = route.encode()[:255]
        return Label(rollout_digest(identity), bytes((len(name),)) + name)

    def mint(self, label: Label, now: float, code: int, share: int) -> bytes:
        """A new id for a request under `label` at `now` (seconds), assigned the variant of
        `code` at a share of `share` 65,535ths."""
        second = int(now)
        if second != label.second:
            label.second = second
            label.prefixes.clear()
        prefix = label.prefixes.get((code, share))
        if prefix is None:
            signed = (
                bytes((VERSION, code))
                + second.to_bytes(5, "big")
                + label.digest
                + share.to_bytes(2, "big")
                + label.tail
            )
            signed += bytes(-(len(signed) + _MAC) % 3)  # whole base64 groups: ids concatenate
            mac = self._key.copy()
            mac.update(signed)
            prefix = label.prefixes[(code, share)] = base64.urlsafe_b64encode(signed + mac.digest())
        return b"%s%s%d" % (prefix, self._tag, next(self._counter))


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
        length = signed[_FIXED - 1]
        if signed[0] != VERSION or signed[1] not in _BY_BYTE or len(signed) < _FIXED + length:
            return None
        try:
            route = signed[_FIXED : _FIXED + length].decode()
        except UnicodeDecodeError:
            return None
        at = float(int.from_bytes(signed[2:7], "big"))
        share = int.from_bytes(signed[11:13], "big") / SHARES
        return Served(route, _BY_BYTE[signed[1]], signed[7:11], at, share)
