"""One process's membership of the fleet: it flushes its observations, takes part in choosing
the decider, and reads what the fleet decided. To the analysis loop it is both seams of
`proxy.analysis.sources`: the fleet's pooled observations and its shared verdicts; a Redis that
cannot be reached is `Unavailable` there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import replace
from typing import Any

from redis.exceptions import RedisError

from proxy.analysis.sources import Unavailable
from proxy.analysis.verdict import Clustering, Sample
from proxy.analysis.window import LocalObservations
from proxy.fleet.decider import Decider
from proxy.fleet.observations import FLUSH_EVERY, PooledObservations
from proxy.rollout.redis_store import Client
from proxy.rollout.store import Fence
from proxy.runtime import clock
from proxy.runtime.tasks import cancel_and_wait

OFFSETS = 8  # measurements of the clock's offset kept: the one of the quickest call is used

log = logging.getLogger("grayscale.analysis")


class FleetMember:
    """The pooled observations and the decider's lease of one process."""

    def __init__(
        self,
        redis: Client,
        key_prefix: str,
        name: str,
        local: LocalObservations,
        max_clock_skew: float = 1.0,
    ):
        self.pool = PooledObservations(local, redis, key_prefix)
        self.decider = Decider(redis, key_prefix, name)
        self.name = name
        self._redis = redis
        self._local = local
        self._flusher: asyncio.Task[None] | None = None
        self.flush_error: str | None = None  # why this process's last flush failed, if it did
        self.max_clock_skew = max_clock_skew
        self.clock_error: str | None = None  # why this host's clock is not to be trusted
        self._offsets: deque[tuple[float, float]] = deque(maxlen=OFFSETS)  # (call, offset)

    @property
    def holder(self) -> str | None:
        """The decider's name as last seen."""
        return self.decider.holder

    @property
    def deciding(self) -> bool:
        """Whether this replica decides for the fleet."""
        return self.decider.deciding

    async def fence(self, route: str) -> Fence | None:
        """The decider's claim on `route`, for the changes only it may make; None when not
        deciding."""
        return await self.decider.fence(route)

    async def publish(self, route: str, record: dict[str, Any], keep: float) -> None:
        """Publish this decider's latest record on `route`, while it holds the lease."""
        try:
            published = await self.decider.publish(route, record, keep)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
        if not published:
            raise Unavailable("this replica no longer holds the decider's lease")

    async def latest(self, route: str) -> dict[str, Any] | None:
        """The fleet's latest record on `route`, as its decider published it."""
        try:
            return await self.decider.latest(route)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc

    async def samples(self, route: str, now: float) -> tuple[Sample, Sample]:
        """The fleet's samples of `route`, with this process's sample-ratio counts and design
        effects (see `own_ratio`). `Unavailable` while this process's own observations cannot
        be added to the fleet's: the pooled counts then stand still, and a verdict on them
        would judge a frozen window (a candidate failing now could pass on it)."""
        if self.flush_error is not None:
            raise Unavailable(self.flush_error)
        try:
            stable, candidate = await self.pool.samples(route, now)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"the fleet's store: {type(exc).__name__}: {exc}") from exc
        # The sample-ratio check tests the decider's own traffic (see proxy/fleet/observations).
        own_stable, own_candidate = self._local.samples(route, now)
        return own_ratio(stable, own_stable), own_ratio(candidate, own_candidate)

    def refer(self, route: str, seconds: float) -> None:
        """Count requests slower than `seconds` as slow in this process's users' sums."""
        self._local.refer(route, seconds)

    def count(self, route: str, run: str) -> None:
        """Count toward `run`: this process's windows, and with them the pooled keys they are
        flushed to (named by the run), start anew when the run changes."""
        self._local.count(route, run)

    def start(self) -> None:
        """Flush observations at least once a second and take part in the lease."""
        self.decider.start()
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_often())

    async def stop(self) -> None:
        """Hand over the lease, and flush what is left."""
        await self.decider.stop()
        if self._flusher is not None:
            await cancel_and_wait(self._flusher)
            self._flusher = None
        with contextlib.suppress(RedisError, OSError):
            await self.pool.flush(clock.now())

    async def measure_clock(self) -> None:
        """Measure this host's offset to Redis's clock (`proxy.runtime.clock`); a host further off
        than `max_clock_skew` says so and gives up deciding until it is not."""
        before = time.time()
        seconds, microseconds = await self._redis.time()
        after = time.time()
        self._offsets.append((after - before, seconds + microseconds / 1e6 - (before + after) / 2))
        offset = min(self._offsets)[1]
        clock.set_offset(offset)
        if abs(offset) > self.max_clock_skew:
            if self.clock_error is None:
                log.warning(
                    "this host's clock is %+.3f s off the fleet's (Redis's): the ramp and the "
                    "analysis use the fleet's, and this replica does not decide until it is "
                    "within %g s (state.max_clock_skew)",
                    -offset,
                    self.max_clock_skew,
                )
            self.clock_error = f"this host's clock is {-offset:+.3f} s off the fleet's"
        elif self.clock_error is not None:
            log.info("this host's clock is within %g s of the fleet's again", self.max_clock_skew)
            self.clock_error = None
        self.decider.eligible = self.clock_error is None

    async def _flush_often(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            with contextlib.suppress(RedisError, OSError):  # (the flush below says it)
                await self.measure_clock()
            try:
                await self.pool.flush(clock.now())
            except (RedisError, OSError) as exc:  # (kept for the next flush)
                if self.flush_error is None:
                    log.warning(
                        "this replica's observations cannot be added to the fleet's: %s; "
                        "no verdict is taken on the pooled counts until they are",
                        exc,
                    )
                self.flush_error = f"observations not pooled: {type(exc).__name__}: {exc}"
            else:
                if self.flush_error is not None:
                    log.info("this replica's observations are pooled again")
                self.flush_error = None


def own_ratio(pooled: Sample, own: Sample) -> Sample:
    """The fleet's sample with this process's sample-ratio counts and design effects. A design
    effect seen in this process's share of the traffic is scaled to the fleet's: if a user's
    requests are spread over the replicas, each sees 1/R of them and the excess over 1 that
    clustering adds is R times smaller (R: the fleet's weight over this process's); with users
    kept on one replica this overstates it, which only widens the bounds."""
    spread = pooled.weight / own.weight if own.weight > 0 else 1.0
    clustering = Clustering(
        1.0 + (own.clustering.errors - 1.0) * max(spread, 1.0),
        1.0 + (own.clustering.latency - 1.0) * max(spread, 1.0),
    )
    return replace(
        pooled,
        assigned=own.assigned,
        expected=own.expected,
        users=own.users,
        users_expected=own.users_expected,
        design_effect=own.design_effect,
        clustering=clustering,
    )
