"""A bounded sample of one route's users: which distinct users were seen in the analysis window,
how many randomly assigned requests each sent (the sample-ratio check), and per variant the
weighted sums of their compared requests, errors and slow requests, from which the design
effects of the error-rate and latency checks are estimated (`UserSample.clustering`).

Invariants:
- Users are sampled by a hash of their cohort key with its own seed and no salt, independent of
  their bucket, so whether a user is sampled says nothing of their variant: the sample's counts
  are a fair sample of the route's users.
- At most `CAPACITY` users are kept: beyond it, users not seen within the window go first, then
  the sampling rate halves (keeping the users whose hash is below the new rate) until it fits.
  Users are only ever dropped, never added back at a lower rate, so the sample is exactly the
  users seen in the window whose hash is below the current rate.
- A sampled user's first request in the window is reported once (`see` says so); a user not
  seen for longer than the window counts as new again.
- Memory is bounded whatever the traffic: `CAPACITY` entries per analysed route.
- A design effect is at least 1 and is 1 without sampled users of the variant: clustering can
  only widen a bound. It is taken over the users kept (a user not seen for longer than the
  window counts anew when it returns; users beyond it leave when the sample shrinks), from
  totals kept up to date with each request, so a verdict costs no work per user.
"""

from __future__ import annotations

import mmh3

from proxy.analysis.verdict import Clustering
from proxy.config.model import Variant

CAPACITY = 4096  # sampled users kept per route
SEED = 0x9E3779B9  # the sampling hash's seed: any seed but the buckets' (0)
_FULL = 1 << 32


class User:
    """One sampled user: when last seen, how many randomly assigned requests, and per variant
    the sums over its compared requests of w, w², w and w² over errors, w and w² over slow
    requests (w: the request's weight)."""

    __slots__ = ("last", "requests", "sums")

    def __init__(self, now: float):
        self.last = now
        self.requests = 1
        self.sums: dict[Variant, list[float]] = {}


# A variant's totals over the kept users: the sums of the users' six sums, then of the products
# that the design effects need (per user: A = sum w, B = sum w over ones, of errors and of slow
# requests): A², A·B errors, B² errors, A·B slow, B² slow.
_SQUARES = 6
_TOTALS = 11


def _squares(sums: list[float]) -> tuple[float, float, float, float, float]:
    a, errors, slow = sums[0], sums[2], sums[4]
    return a * a, a * errors, errors * errors, a * slow, slow * slow


def _design_effect(totals: list[float], at: int, products: int) -> float:
    """The design effect of a mean of 0/1 values (errors: `at` 2, slow requests: 4) from a
    variant's totals: the variance of the weighted mean with users as the units (sum over users
    of (B - mean·A)²) over its variance with requests as the units (sum over requests of
    w² (y - mean)²), at least 1; `products` is where A·B and B² of these values sit."""
    weight = totals[0]
    if weight <= 0.0:
        return 1.0
    mean = totals[at] / weight
    squares_a, cross, squares_b = totals[_SQUARES], totals[products], totals[products + 1]
    clustered = squares_b - 2.0 * mean * cross + mean * mean * squares_a
    alone = totals[at + 1] * (1.0 - 2.0 * mean) + mean * mean * totals[1]
    return max(1.0, clustered / alone) if alone > 0.0 else 1.0


class UserSample:
    """The sampled users of one route's window of `span` seconds (`math.inf`: since the rollout
    began)."""

    __slots__ = ("_rate", "_seen", "_totals", "span")

    def __init__(self, span: float):
        self.span = span
        self._rate = _FULL  # users whose sampling hash is below it are sampled
        self._seen: dict[int, User] = {}  # sampling hash -> the user
        self._totals: dict[Variant, list[float]] = {}  # kept up to date as users change

    @property
    def rate(self) -> float:
        """The share of users sampled."""
        return self._rate / _FULL

    def __len__(self) -> int:
        return len(self._seen)

    def see(self, key: str, now: float) -> tuple[User | None, bool]:
        """Count a randomly assigned request of the user with cohort key `key`: the user, if
        sampled, and whether this is its first request in the window (the sample-ratio check's
        unit)."""
        h = mmh3.hash(key.encode("utf-8", "surrogateescape"), SEED, signed=False)
        if h >= self._rate:
            return None, False
        user = self._seen.get(h)
        if user is not None and now - user.last <= self.span:
            user.last = now
            user.requests += 1
            return user, False
        if user is not None:  # (seen before the window: counted anew)
            self._total(user, -1.0)
        user = self._seen[h] = User(now)
        if len(self._seen) > CAPACITY:
            self._shrink(now)
        return (user, True) if h < self._rate else (None, False)

    def add(self, user: User, variant: Variant, weight: float, error: bool, slow: bool) -> None:
        """Count one compared request of sampled `user`'s (see `see`)."""
        sums = user.sums.get(variant)
        if sums is None:
            sums = user.sums[variant] = [0.0] * 6
        totals = self._totals.get(variant)
        if totals is None:
            totals = self._totals[variant] = [0.0] * _TOTALS
        before = _squares(sums)
        w2 = weight * weight
        e, s = float(error), float(slow)
        added = (weight, w2, weight * e, w2 * e, weight * s, w2 * s)
        for index, amount in enumerate(added):
            sums[index] += amount
            totals[index] += amount
        for index, (old, new) in enumerate(zip(before, _squares(sums), strict=True)):
            totals[_SQUARES + index] += new - old

    def _total(self, user: User, sign: float) -> None:
        """Add `user`'s sums to the totals (`sign` 1) or take them away (-1)."""
        for variant, sums in user.sums.items():
            totals = self._totals.setdefault(variant, [0.0] * _TOTALS)
            for index, value in enumerate((*sums, *_squares(sums))):
                totals[index] += sign * value

    def _shrink(self, now: float) -> None:
        self._seen = {h: u for h, u in self._seen.items() if now - u.last <= self.span}
        while len(self._seen) > CAPACITY:
            self._rate //= 2
            self._seen = {h: u for h, u in self._seen.items() if h < self._rate}
        self._totals = {}  # (counted anew from the users kept: no rounding carried over)
        for user in self._seen.values():
            self._total(user, 1.0)

    def design_effect(self, now: float) -> float:
        """How much more a variant's request count varies than if every request were assigned
        on its own: the sampled users' sum of squared request counts over their sum (1 for
        one request each; Rao and Scott's first-order correction). 1 without users."""
        counts = [u.requests for u in self._seen.values() if now - u.last <= self.span]
        total = sum(counts)
        return max(1.0, sum(n * n for n in counts) / total) if total else 1.0

    def clustering(self, variant: Variant) -> Clustering:
        """The design effects of `variant`'s error rate and share of slow requests, over the
        sampled users kept (kept up to date as requests come: no work per verdict)."""
        totals = self._totals.get(variant)
        if totals is None:
            return Clustering()
        return Clustering(_design_effect(totals, 2, 7), _design_effect(totals, 4, 9))
