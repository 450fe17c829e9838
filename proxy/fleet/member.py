"""One process's membership of the fleet: it flushes its observations, takes part in choosing
the decider, and reads what the fleet decided."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.analysis.window import LocalObservations
from proxy.fleet.connection import cancel_and_wait
from proxy.fleet.decider import Decider
from proxy.fleet.observations import FLUSH_EVERY, PooledObservations

log = logging.getLogger("grayscale.analysis")


class FleetMember:
    """The pooled observations and the decider's lease of one process."""

    def __init__(self, redis: Redis, key_prefix: str, name: str, local: LocalObservations):
        self.pool = PooledObservations(local, redis, key_prefix)
        self.decider = Decider(redis, key_prefix, name)
        self._flusher: asyncio.Task[None] | None = None

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
            await self.pool.flush(time.time())

    async def _flush_often(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            with contextlib.suppress(RedisError, OSError):  # kept for the next flush; the
                await self.pool.flush(time.time())  # state store logs the outage
