"""A bounded sample of one route's users, for the sample-ratio check: which distinct users were
seen in the analysis window, and how many randomly assigned requests each sent.

Invariants:
- Users are sampled by a hash of their cohort key with its own seed and no salt, independent of
  their bucket, so whether a user is sampled says nothing of their variant: the sample's counts
  are a fair sample of the route's users.
- At most `CAPACITY` users are kept: beyond it, users not seen within the window go first, then
  the sampling rate halves (keeping the users whose hash is below the new rate) until it fits.
  Users are only ever dropped, never added back at a lower rate, so the sample is exactly the
  users seen in the window whose hash is below the current rate.
- A sampled user's first request in the window is reported once (`see` returns True); a user not
  seen for longer than the window counts as new again.
- Memory is bounded whatever the traffic: `CAPACITY` entries per analysed route.
"""

from __future__ import annotations

import mmh3

CAPACITY = 4096  # sampled users kept per route
SEED = 0x9E3779B9  # the sampling hash's seed: any seed but the buckets' (0)
_FULL = 1 << 32


class UserSample:
    """The sampled users of one route's window of `span` seconds (`math.inf`: since the rollout
    began)."""

    __slots__ = ("_rate", "_seen", "span")

    def __init__(self, span: float):
        self.span = span
        self._rate = _FULL  # users whose sampling hash is below it are sampled
        self._seen: dict[int, list[float]] = {}  # sampling hash -> [last seen, requests]

    @property
    def rate(self) -> float:
        """The share of users sampled."""
        return self._rate / _FULL

    def __len__(self) -> int:
        return len(self._seen)

    def see(self, key: str, now: float) -> bool:
        """Count a randomly assigned request of the user with cohort key `key`; whether it is the
        first of a sampled user in the window (the sample-ratio check's unit)."""
        h = mmh3.hash(key.encode("utf-8", "surrogateescape"), SEED, signed=False)
        if h >= self._rate:
            return False
        entry = self._seen.get(h)
        if entry is not None and now - entry[0] <= self.span:
            entry[0] = now
            entry[1] += 1
            return False
        self._seen[h] = [now, 1]
        if len(self._seen) > CAPACITY:
            self._shrink(now)
        return h < self._rate

    def _shrink(self, now: float) -> None:
        self._seen = {h: e for h, e in self._seen.items() if now - e[0] <= self.span}
        while len(self._seen) > CAPACITY:
            self._rate //= 2
            self._seen = {h: e for h, e in self._seen.items() if h < self._rate}

    def design_effect(self, now: float) -> float:
        """How much more a variant's request count varies than if every request were assigned
        on its own: the sampled users' sum of squared request counts over their sum (1 for
        one request each; Rao and Scott's first-order correction). 1 without users."""
        counts = [e[1] for e in self._seen.values() if now - e[0] <= self.span]
        total = sum(counts)
        return max(1.0, sum(n * n for n in counts) / total) if total else 1.0
