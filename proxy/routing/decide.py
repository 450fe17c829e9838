"""The routing decision for one request: stable or candidate, and why."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from proxy.config.model import Missing, Ramp, Route, Variant
from proxy.routing.bucket import BUCKETS, bucket, threshold
from proxy.routing.cohort import cohort_key
from proxy.routing.facts import RequestFacts
from proxy.routing.ramp import ramp_share
from proxy.routing.segments import match_segment


class Reason(StrEnum):
    """Why a request went where it went."""

    BUCKET = "bucket"  # the cohort key's bucket against the share's threshold
    PINNED = "pinned"  # a segment pins the variant
    NO_KEY = "no_key"  # no cohort key: stable (or everyone's variant at share 0 or 1)
    RANDOM = "random"  # no cohort key and `missing: random`


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request goes. `bucket` is None when no key was hashed."""

    variant: Variant
    reason: Reason
    share: float
    segment: str | None = None
    bucket: int | None = None


def decide(
    route: Route,
    started_at: float,
    facts: RequestFacts,
    now: float,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Decide the variant for a request on `route` at time `now` (POSIX seconds).

    `started_at` is when the rollout began for ramps without an explicit `start`. Segments are tried
    in order; a pinned segment decides alone, a segment with its own ramp replaces the route's
    share.
    """
    key = cohort_key(facts, route.cohort.keys)
    ramp = route.ramp
    segment = match_segment(route.segments, facts, key)
    if segment is not None:
        if segment.variant is not None:
            return Decision(
                segment.variant,
                Reason.PINNED,
                1.0 if segment.variant is Variant.CANDIDATE else 0.0,
                segment.name,
            )
        assert segment.ramp is not None
        ramp = segment.ramp
    share = current_share(ramp, started_at, now)
    limit = threshold(share)
    name = segment.name if segment is not None else None
    if key is None:
        if limit >= BUCKETS:
            return Decision(Variant.CANDIDATE, Reason.NO_KEY, share, name)
        if limit == 0 or route.cohort.missing is Missing.STABLE:
            return Decision(Variant.STABLE, Reason.NO_KEY, share, name)
        drawn = int(rand() * BUCKETS)
        variant = Variant.CANDIDATE if drawn < limit else Variant.STABLE
        return Decision(variant, Reason.RANDOM, share, name, drawn)
    b = bucket(route.cohort.salt, key)
    variant = Variant.CANDIDATE if b < limit else Variant.STABLE
    return Decision(variant, Reason.BUCKET, share, name, b)


def current_share(ramp: Ramp, started_at: float, now: float) -> float:
    """The share of `ramp` at `now`, its start defaulting to `started_at`."""
    return ramp_share(ramp, ramp.start if ramp.start is not None else started_at, now)
