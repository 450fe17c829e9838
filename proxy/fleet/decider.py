"""Which replica decides: a lease in Redis, and the verdicts the decider publishes for all.

Invariants
- At most one replica holds the lease at a time: it is taken only if absent (SET NX) and kept
  by renewing it before it expires (a script that extends it only for its holder). The lease
  holds the replica's name and a random token, so two processes given the same name (workers
  of one pod, a copied replica name) can never both hold it. A replica
  that cannot renew stops deciding at once; when the decider dies, its lease expires after
  `LEASE` seconds and another replica takes it then: a replica that does not hold the lease
  makes its next attempt when the lease it saw expires (or after `RENEW_EVERY`, if sooner), so
  the fleet has a decider again within `LEASE` of the last renewal.
- Only the lease holder judges, holds or releases the ramp, and rolls back. Even two deciders
  at once (a stalled process that has not noticed its lease expired) roll back at most once:
  the rollback is a compare-and-set on the rollout record, and the state machine refuses a
  second one (so one webhook).
- The decider publishes each verdict, with its name and count of consecutive failures; every
  replica reads it for `/status`, and a new decider continues the count.
- Fencing: a decider counts its lease from the moment it asked for it, on the monotonic clock,
  and stops deciding when that much time has passed without a renewal, before asking Redis (a
  process stopped past its lease wakes up not deciding). Its writes check its token in Redis in
  the same script: a verdict is published, and a rollout changed (`Fence`), only while the
  route's claim holds its token, so a stale decider publishes and changes nothing.
- A claim is the lease copied beside a route's keys (`<prefix>:decider:{route}`, in the route's
  slot of a Redis Cluster, where a script cannot read the lease itself): the decider writes it
  before its first change of the route and with every renewal, to expire when the lease it
  renewed does at the latest (`PXAT` on the fleet's clock, so a claim sent late expires at
  once). A new decider overwrites every claim before it changes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import Any

from redis.exceptions import RedisError

from proxy.rollout.redis_store import Client
from proxy.rollout.store import Fence
from proxy.runtime import clock
from proxy.runtime.tasks import cancel_and_wait

log = logging.getLogger("grayscale.analysis")

LEASE = 3.0  # seconds a decider's lease lasts without renewal
RENEW_EVERY = 1.0  # seconds between renewals (by the holder) and attempts (by the others)
TAKEOVER_DELAY = 0.02  # seconds after another's lease expires that the next attempt is made

# KEYS[1] the lease; ARGV: this process's token, the lease in milliseconds. The holder after,
# and the milliseconds left on its lease.
_TAKE_OR_RENEW = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {ARGV[1], tonumber(ARGV[2])}
end
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {holder, redis.call('PTTL', KEYS[1])}
"""
# KEYS[1] the route's claim, KEYS[2] the verdict; ARGV: the holder's token, the document,
# milliseconds to keep it. 1 when published, 0 when the claim is not the holder's.
_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Decider:
    """This replica's part in choosing the decider, and the published verdicts."""

    def __init__(self, redis: Client, key_prefix: str, name: str):
        self.name = name
        self.holder: str | None = None  # the decider's name as last seen
        self._token = f"{name}#{secrets.token_hex(8)}"  # this process's value in the lease
        self._held = False
        self.eligible = True  # False: do not take the lease (a host clock too far off)
        self._valid_until = 0.0  # monotonic time our lease ends, counted from when we asked
        self._expires_in = RENEW_EVERY  # seconds left on the lease as last seen
        self._ends_at = 0.0  # when our lease ends, on the fleet's clock (our claims with it)
        self._claimed: set[str] = set()  # the routes claimed with the lease we hold
        self._redis = redis
        self._prefix = key_prefix
        self._lease_key = f"{key_prefix}:decider"
        self._take = redis.register_script(_TAKE_OR_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._publish = redis.register_script(_PUBLISH)
        self._task: asyncio.Task[None] | None = None

    @property
    def deciding(self) -> bool:
        """Whether this replica holds the lease: it did at its last renewal, and the lease has
        not run out since (counted from when it was asked for)."""
        return self._held and time.monotonic() < self._valid_until

    async def fence(self, route: str) -> Fence | None:
        """The claim on `route` (made now if it is not yet), for the changes only the decider
        may make; None when not deciding (or the claim cannot be made)."""
        if not self.deciding:
            return None
        if route not in self._claimed:
            with contextlib.suppress(RedisError, OSError):
                await self._claim([route])
        if route not in self._claimed:
            return None
        return Fence(self.claim_key(route), self._token)

    def claim_key(self, route: str) -> str:
        return f"{self._prefix}:decider:{{{route}}}"

    async def _claim(self, routes: list[str]) -> None:
        """Copy our lease to `routes`' claims, to expire with the lease at the latest."""
        ends_at = int(self._ends_at * 1000)
        pipe = self._redis.pipeline(transaction=False)
        for route in routes:
            pipe.set(self.claim_key(route), self._token, pxat=ends_at)
        await pipe.execute()
        self._claimed.update(routes)

    async def attempt(self) -> bool:
        """Take the lease if it is free, renew it if it is ours; whether we hold it."""
        if not self.eligible:
            if self._held:
                log.info("this replica stopped deciding for the fleet")
                with contextlib.suppress(RedisError, OSError):
                    await self._release(keys=[self._lease_key], args=[self._token])
            self._held = False
            return False
        value: str | None = None  # if Redis cannot tell: not deciding (ours lapses by itself)
        self._expires_in = RENEW_EVERY
        asked, asked_fleet = time.monotonic(), clock.now()
        with contextlib.suppress(RedisError, OSError):
            holder, left = await self._take(
                keys=[self._lease_key], args=[self._token, int(LEASE * 1000)]
            )
            value = holder.decode() if isinstance(holder, bytes) else str(holder)
            if int(left) >= 0:
                self._expires_in = int(left) / 1000
        held = value == self._token
        if held:
            self._valid_until = asked + self._expires_in
            self._ends_at = asked_fleet + self._expires_in
            renew, self._claimed = sorted(self._claimed), set()
            try:
                await self._claim(renew)
            except (RedisError, OSError):
                held = False  # (the lease lapses by itself; our claims with it)
        else:
            self._claimed = set()
        if held != self._held:  # (a lease that ran out unrenewed is said when Redis tells)
            log.info(
                "%s deciding for the fleet",
                "this replica is now" if held else "this replica stopped",
            )
        self._held = held
        self.holder = None if value is None else value.rpartition("#")[0] or value
        return held

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
                await self._release(keys=[self._lease_key], args=[self._token])
            self.holder, self._held = None, False

    async def _run(self) -> None:
        while True:
            if await self.attempt():
                await asyncio.sleep(RENEW_EVERY)
            else:
                await asyncio.sleep(min(RENEW_EVERY, self._expires_in + TAKEOVER_DELAY))

    def verdict_key(self, route: str) -> str:
        return f"{self._prefix}:verdict:{{{route}}}"

    async def publish(self, route: str, record: dict[str, Any], keep: float) -> bool:
        """Publish the decider's latest verdict on `route` for `keep` seconds, if the lease is
        still ours; whether it was."""
        fence = await self.fence(route)
        if fence is None:
            return False
        document = json.dumps({**record, "decider": self.name})
        keys = [fence.key, self.verdict_key(route)]
        if await self._publish(keys=keys, args=[self._token, document, int(keep * 1000)]):
            return True
        self._held = False  # (another holds it: the next attempt says so)
        return False

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
