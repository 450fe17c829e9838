"""Request ids that say, to whoever holds the key, which route and variant served a request.

Every answer on a route carries `X-Grayscale-Request-Id`; an application later reports what the
user did with that answer (`POST /outcomes`), and the proxy needs to know which variant served
it. The id carries that itself, signed, so that any process of a fleet holding the same key can
read it with nothing stored per request: no memory grows with traffic, and an outcome can be
sent to a different replica or worker than the one that served the request.

Invariants
- An id is `base64url(signed || mac) "." nonce "." check`. signed = version, the variant the
  request was assigned (`s`, `c`, or `n` for a request the analysis does not compare: not
  assigned at random, or sent to stable because the candidate was ejected), the time in seconds
  (5 bytes), 4 bytes of a digest of the rollout (route, candidate and salt), the candidate's
  share when the request was assigned (2 bytes, in 65,535ths: the request's weight in the
  analysis), the route name's length and the name, zero bytes to a multiple of 3; mac = keyed
  BLAKE2b of signed (10 bytes); nonce = 8 random hex digits per process, then a per-process
  counter in decimal; check = 12 hex digits of a keyed BLAKE2b (another personalisation) of mac
  and nonce.
- Without the key, what an id says (route, variant, rollout, time, share) can be neither made
  nor changed: an end user cannot move their outcomes to the other variant. Nor can a new id be
  made from one that was served (another nonce, or a nonce moved onto another signed part): a
  client can report for the requests it was served, each once, and no more.
- The signed part is made once per second per route, variant and share; each id costs a counter,
  one keyed hash of 24 bytes or so, and a little formatting.
- Ids are unique per process (the counter) and, with overwhelming probability, per fleet.
- Pure apart from the nonce's random bytes, taken once per process.
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

VERSION = 4
_MAC = 10
_CHECK = 6  # bytes of the nonce's check (12 hex digits)
_NONCE_PERSON = b"grayscale-nonce"
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
    (encoded, and their MAC) by variant and share."""

    __slots__ = ("digest", "prefixes", "second", "tail")

    def __init__(self, digest: bytes, tail: bytes):
        self.digest, self.tail = digest, tail
        self.second = -1
        self.prefixes: dict[tuple[int, int], tuple[bytes, bytes]] = {}


class Minter:
    """Makes the ids of one process."""

    __slots__ = ("_checks", "_counter", "_key", "_tag")

    def __init__(self, key: bytes):
        self._key = hashlib.blake2b(key=key, digest_size=_MAC)
        self._checks = hashlib.blake2b(key=key, digest_size=_CHECK, person=_NONCE_PERSON)
        self._tag = os.urandom(4).hex().encode()
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
        found = label.prefixes.get((code, share))
        if found is None:
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
            sealed = mac.digest()
            found = label.prefixes[(code, share)] = (
                base64.urlsafe_b64encode(signed + sealed),
                sealed,
            )
        prefix, sealed = found
        nonce = b"%s%d" % (self._tag, next(self._counter))
        check = self._checks.copy()
        check.update(sealed + nonce)
        return b"%s.%s.%s" % (prefix, nonce, check.hexdigest().encode())


class Reader:
    """Reads the ids signed with one key."""

    __slots__ = ("_checks", "_key")

    def __init__(self, key: bytes):
        self._key = hashlib.blake2b(key=key, digest_size=_MAC)
        self._checks = hashlib.blake2b(key=key, digest_size=_CHECK, person=_NONCE_PERSON)

    def read(self, request_id: str) -> Served | None:
        """What `request_id` says, or None if it is not an id made with our key."""
        signature, dot, rest = request_id.partition(".")
        nonce, dot, check = rest.rpartition(".")
        if not dot or not 0 < len(request_id) <= 512 or len(signature) % 4 or not nonce:
            return None
        try:
            encoded, nonce_bytes = signature.encode("ascii"), nonce.encode("ascii")
            raw = base64.urlsafe_b64decode(encoded)
        except (binascii.Error, ValueError):
            return None
        if base64.urlsafe_b64encode(raw) != encoded or not check.isascii():
            return None  # only the one spelling of an id is ours: a repeat is told as such
        signed, mac = raw[:-_MAC], raw[-_MAC:]
        if len(signed) < _FIXED:
            return None
        expected = self._key.copy()
        expected.update(signed)
        if not hmac.compare_digest(expected.digest(), mac):
            return None
        nonce_check = self._checks.copy()
        nonce_check.update(mac + nonce_bytes)
        if not hmac.compare_digest(nonce_check.hexdigest(), check):
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
