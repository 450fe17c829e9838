"""The routing decision for one request: stable or candidate, and why."""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

from proxy.config.model import Missing, Ramp, Variant
from proxy.routing.bucket import BUCKETS, bucket, threshold
from proxy.routing.cohort import cohort_key
from proxy.routing.facts import RequestFacts
from proxy.routing.ramp import ramp_share
from proxy.routing.table import ActiveRoute


class Reason(StrEnum):
    """Why a request went where it went."""

    BUCKET = "bucket"  # the cohort key's bucket against the share's threshold
    PINNED = "pinned"  # a segment pins the variant
    NO_KEY = "no_key"  # no cohort key: stable (or everyone's variant at share 0 or 1)
    RANDOM = "random"  # no cohort key and `missing: random`
    ROLLOUT = "rollout"  # the rollout's state decides alone (promoted or rolled back)


_BUCKET, _PINNED, _NO_KEY, _RANDOM = Reason.BUCKET, Reason.PINNED, Reason.NO_KEY, Reason.RANDOM
_ROLLOUT = Reason.ROLLOUT


class RolloutTerms(NamedTuple):
    """The rollout's say in a decision.

    `started_at` is when the rollout began (the start of ramps without one); `clock` is the ramps'
    time now (wall time less the time the ramp stood still); `forced` sends everyone to one
    variant; `share` replaces the route's own ramp (a manual override).
    """

    started_at: float
    clock: float
    forced: Variant | None = None
    share: float | None = None


# Enum member lookups cost a few hundred nanoseconds on Python 3.11; decide() runs per request.
_STABLE, _CANDIDATE = Variant.STABLE, Variant.CANDIDATE
_MISSING_STABLE = Missing.STABLE


def weight_of(variant: Variant, share: float) -> float:
    """A compared request's overlap weight in the analysis: 1 - share for the candidate's,
    share for stable's (`share`: the candidate's when it was assigned)."""
    return 1.0 - share if variant is _CANDIDATE else share


class Decision(NamedTuple):
    """Where one request goes. `bucket` is None when no key was hashed.

    `key` is the cohort key: never log it raw.
    """

    variant: Variant
    reason: Reason
    share: float
    segment: str | None = None
    bucket: int | None = None
    key: str | None = None

    @property
    def compared(self) -> bool:
        """Whether the analysis compares this request's variants: assigned at random (by bucket,
        or drawn for a keyless request) at a share strictly between 0 and 1."""
        return (self.reason is _BUCKET or self.reason is _RANDOM) and 0.0 < self.share < 1.0


def decide(
    active: ActiveRoute,
    facts: RequestFacts,
    control: RolloutTerms,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Decide the variant for a request on `active` under the rollout's `control`.

    A forced variant decides alone. Otherwise segments are tried in order: a pinned segment decides
    alone, a segment with its own ramp replaces the route's share. `rand` draws for keyless
    requests under `missing: random`.
    """
    route = active.route
    key = cohort_key(facts, route.cohort.keys)
    if control.forced is not None:
        forced = 1.0 if control.forced is _CANDIDATE else 0.0
        return Decision(control.forced, _ROLLOUT, forced, None, None, key)
    name = None
    segments = active.segments
    segment = segments.match(facts, key) if segments is not None else None
    if segment is None:
        share = (
            control.share
            if control.share is not None
            else current_share(route.ramp, control.started_at, control.clock)
        )
    elif segment.ramp is None:
        assert segment.variant is not None
        pinned = 1.0 if segment.variant is _CANDIDATE else 0.0
        return Decision(segment.variant, _PINNED, pinned, segment.name, None, key)
    else:
        name = segment.name
        share = current_share(segment.ramp, control.started_at, control.clock)
    limit = threshold(share)
    if key is None:
        if limit >= BUCKETS:
            return Decision(_CANDIDATE, _NO_KEY, share, name)
        if limit == 0 or route.cohort.missing is _MISSING_STABLE:
            return Decision(_STABLE, _NO_KEY, share, name)
        drawn = int(rand() * BUCKETS)
        variant = _CANDIDATE if drawn < limit else _STABLE
        return Decision(variant, _RANDOM, share, name, drawn)
    b = bucket(route.cohort.salt, key)
    return Decision(_CANDIDATE if b < limit else _STABLE, _BUCKET, share, name, b, key)


def current_share(ramp: Ramp, started_at: float, now: float) -> float:
    """The share of `ramp` at `now`, its start defaulting to `started_at`."""
    return ramp_share(ramp, ramp.start if ramp.start is not None else started_at, now)
