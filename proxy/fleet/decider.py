"""Which replica decides: a lease in Redis, and the verdicts the decider publishes for all.

Invariants
- At most one replica holds the lease at a time: it is taken only if absent (SET NX) and kept
  by renewing it before it expires (a script that extends it only for its holder). A replica
  that cannot renew stops deciding at once; when the decider dies, its lease expires after
  `LEASE` seconds and another replica takes it at its next attempt.
- Only the lease holder judges, holds or releases the ramp, and rolls back. Even two deciders
  at once (a stalled process that has not noticed its lease expired) roll back at most once:
  the rollback is a compare-and-set on the rollout record, and the state machine refuses a
  second one (so one webhook).
- The decider publishes each verdict, with its name and count of consecutive failures; every
  replica reads it for `/status`, and a new decider continues the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.fleet.connection import cancel_and_wait

log = logging.getLogger("grayscale.analysis")

LEASE = 3.0  # seconds a decider's lease lasts without renewal
RENEW_EVERY = 1.0  # seconds between renewals (by the holder) and attempts (by the others)

# KEYS[1] the lease; ARGV: this replica's name, the lease in milliseconds. The holder after.
_TAKE_OR_RENEW = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return holder
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Decider:
    """This replica's part in choosing the decider, and the published verdicts."""

    def __init__(self, redis: Redis, key_prefix: str, name: str):
        self.name = name
        self.holder: str | None = None  # the decider as last seen
        self._redis = redis
        self._prefix = key_prefix
        self._lease_key = f"{key_prefix}:decider"
        self._take = redis.register_script(_TAKE_OR_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._task: asyncio.Task[None] | None = None

    @property
    def deciding(self) -> bool:
        """Whether this replica holds the lease (as of its last renewal)."""
        return self.holder == self.name

    async def attempt(self) -> bool:
        """Take the lease if it is free, renew it if it is ours; whether we hold it."""
        try:
            holder = await self._take(keys=[self._lease_key], args=[self.name, int(LEASE * 1000)])
        except (RedisError, OSError):
            holder = None  # cannot tell: not deciding (the lease lapses if it was ours)
        else:
            holder = holder.decode() if isinstance(holder, bytes) else str(holder)
        if (holder == self.name) != self.deciding:
            log.info(
                "%s deciding for the fleet",
                "this replica is now" if holder == self.name else "this replica stopped",
            )
        self.holder = holder
        return self.deciding

    def start(self) -> None:
        """Take part in the lease until `stop`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop, and hand the lease over at once if it is ours."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self.deciding:
            with contextlib.suppress(RedisError, OSError):  # (else it expires by itself)
                await self._release(keys=[self._lease_key], args=[self.name])
            self.holder = None

    async def _run(self) -> None:
        while True:
            await self.attempt()
            await asyncio.sleep(RENEW_EVERY)

    def verdict_key(self, route: str) -> str:
        return f"{self._prefix}:verdict:{{{route}}}"

    async def publish(self, route: str, record: dict[str, Any], keep: float) -> None:
        """Publish the decider's latest verdict on `route` for `keep` seconds."""
        document = json.dumps({**record, "decider": self.name})
        await self._redis.set(self.verdict_key(route), document, px=int(keep * 1000))

    async def latest(self, route: str) -> dict[str, Any] | None:
        """The fleet's latest verdict on `route`, as published by its decider, if any."""
        value = await self._redis.get(self.verdict_key(route))
        if value is None:
            return None
        try:
            record = json.loads(value)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None
