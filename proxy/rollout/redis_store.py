"""Rollout state shared by a fleet of replicas (and the workers of each) on Redis.

Invariants
- One record per route and candidate, `<prefix>:rollout:{<route>}:<candidate digest>`: replicas
  that run different candidates on a route (a config being rolled out) never overwrite each
  other's rollout.
- A record changes only by compare-and-set on its version (a Lua script, atomic in Redis): of two
  replicas acting at once, the second works on the first's result, or is refused as the state
  machine refuses any illegal action. A new rollout is created only if absent, so its start
  (when the config leaves it out) is set once for the whole fleet.
- Every change is published on `<prefix>:changes`; each replica also re-reads its records every
  `REREAD_EVERY`, so a missed message delays a change by at most that long.
- When Redis cannot be reached, nothing changes (`StateUnavailable`, quickly), the data plane
  serves on the last known state, and the outage is logged once. When Redis answers again, or a
  record is found missing (a failover to an empty instance, an expired key) or older than what
  the controller knows (a restore from an older snapshot, a failover that lost writes: its
  `Rollout.revision` is lower), the controller is told, and writes back what it knows.
- On a Redis Cluster each script and transaction touches one route's keys (one slot, by the
  `{route}` hash tag); reads of many routes are pipelines, not MGET; a durable change's WAIT is
  sent to the node that took the change, on the same connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import RedisError, ResponseError

from proxy.rollout.machine import Rollout
from proxy.rollout.store import (
    Change,
    Fence,
    Follower,
    LeaseLost,
    NotReplicated,
    Recovery,
    StateError,
    StateUnavailable,
    decode_rollout,
    encode_rollout,
)
from proxy.runtime.tasks import cancel_and_wait

log = logging.getLogger("grayscale.state")

REREAD_EVERY = 1.0  # seconds between re-reads of this replica's records (if a message is missed)
RECONNECT_EVERY = 1.0  # seconds between attempts to reach a Redis that is gone, at the most
KEEP_FOR = 30 * 86400  # seconds a record lives without being read by a replica that has it
WAIT_FOR = 0.5  # seconds a durable change waits for its replicas' acknowledgement
RETRIES = 20  # compare-and-set attempts before a change gives up (records in fierce contention)

Client = Redis | RedisCluster  # one Redis, or a Redis Cluster


def same_node(client: Client, key: str) -> dict[str, ClusterNode | None]:
    """The arguments that send a command without keys (`WAIT`) to the node holding `key`: on a
    cluster its master; on one Redis, nothing to add."""
    if isinstance(client, RedisCluster):
        return {"target_nodes": client.get_node_from_key(key)}
    return {}


async def follow_master(client: Client) -> bool:
    """On Sentinel, ask the sentinels which master they name now; whether it changed. After a
    failover every connection to the old master is closed (an idle one at once, one in use
    when it is given back), so the next call goes to the new master: the old one takes writes
    until the sentinels demote it, up to ~10 s, and drops them when it resyncs."""
    pool = client.connection_pool if isinstance(client, Redis) else None
    if not isinstance(pool, SentinelConnectionPool):
        return False
    before = pool.master_address
    now = await pool.get_master_address()  # type: ignore[no-untyped-call]
    if before is None or now == before:
        return False
    await pool.update_active_connections_for_reconnect()  # type: ignore[no-untyped-call]
    return True


async def replicas(client: Client) -> int:
    """The replicas of the master (on a cluster: of the master with the fewest)."""
    if isinstance(client, RedisCluster):
        info = await client.info("replication", target_nodes=RedisCluster.PRIMARIES)
        return min((int(node.get("connected_slaves", 0)) for node in info.values()), default=0)
    return int((await client.info("replication")).get("connected_slaves", 0))


# KEYS[1] the record, KEYS[2] (if fenced) the decider's claim on the route; ARGV: expected
# version (0: absent), new document, its time to live, the channel to publish the change on, (if
# fenced) the lease holder's token. 1 when set, 0 when the version had moved on, -1 when the
# claim is not the holder's.
_COMPARE_AND_SET = """
if KEYS[2] and redis.call('GET', KEYS[2]) ~= ARGV[5] then return -1 end
local current = redis.call('GET', KEYS[1])
local version = 0
if current then
  local ok, document = pcall(cjson.decode, current)
  if not ok or type(document) ~= 'table' then return 0 end
  version = document['version']
end
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
"""


class RedisStore:
    """Each route's rollout in Redis, changed by compare-and-set and followed by every replica."""

    def __init__(
        self,
        redis: Client,
        key_prefix: str,
        where: str = "redis",
        min_replicas_ack: int | None = None,
    ):
        """`where` names the Redis in messages (see `proxy.fleet.redis_connection.describe`);
        `min_replicas_ack`: the replicas a durable change waits for (None: one if the master
        has any, as last seen)."""
        self.min_replicas_ack = min_replicas_ack
        self.replicas = 0  # the master's replicas, as last seen (`INFO replication`)
        self._redis = redis
        self._prefix = key_prefix
        self._where = where
        self._channel = f"{key_prefix}:changes"
        self._keys: dict[bytes, str] = {}  # followed records -> route names
        self._on_change: Follower | None = None
        self._on_recovery: Recovery | None = None
        self._follower: asyncio.Task[None] | None = None
        self._unreadable: list[str] = []  # records found unreadable by `load`
        self._reported: set[bytes] = set()  # unreadable records already logged
        self._reading = asyncio.Lock()  # a read and its report never straddle a change of ours
        self._reachable = True
        self.refusing: str | None = None  # why Redis refused our last write (out of memory, a
        # read-only replica), until one is taken

    @property
    def healthy(self) -> bool:
        """Whether Redis answered the last call and took the last write."""
        return self._reachable and self.refusing is None

    def key(self, name: str, identity: str) -> str:
        """The record of route `name`'s rollout of the candidate `identity` (`{name}` is a hash
        tag: a route's keys stay on one node of a Redis Cluster)."""
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return f"{self._prefix}:rollout:{{{name}}}:{digest}"

    async def load(self, identities: Mapping[str, str]) -> dict[str, Rollout]:
        if not identities:
            return {}
        names = list(identities)
        keys = [self.key(name, identities[name]) for name in names]
        values = await self._get(keys)
        loaded: dict[str, Rollout] = {}
        self._unreadable = []
        for name, key, value in zip(names, keys, values, strict=True):
            try:
                rollout = self._parse(value)[1]
            except ValueError as exc:
                self._unreadable.append(key)
                error = StateError(f"{self._where}, {key}: rollout record unreadable: {exc}")
                continue
            if rollout is not None:
                loaded[name] = rollout
        if self._unreadable:
            raise error
        return loaded

    async def change(
        self,
        name: str,
        identity: str,
        change: Change,
        fence: Fence | None = None,
        durable: bool = False,
    ) -> Rollout:
        async with self._reading:
            return await self._change(name, identity, change, fence, durable)

    async def _change(
        self, name: str, identity: str, change: Change, fence: Fence | None, durable: bool
    ) -> Rollout:
        key = self.key(name, identity)
        keys, fenced = [key], []
        if fence is not None:
            keys, fenced = [key, fence.key], [fence.token]
        await self._master_moved()  # (a failover just now: write to the new master)
        for attempt in range(RETRIES):
            if attempt:  # another process changed it meanwhile: let it finish, then read again
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
            try:
                version, stored = self._parse(await self._call(self._redis.get(key)))
            except ValueError as exc:
                raise StateError(
                    f"{self._where}, {key}: rollout record unreadable: {exc}"
                ) from None
            changed = change(stored)
            if stored is not None and changed == stored:
                await self._call(self._redis.expire(key, KEEP_FOR))
                return stored
            document = json.dumps({"version": version + 1, "rollout": encode_rollout(changed)})
            acks = self._acks() if durable else 0
            # (one connection for both: WAIT counts the replicas that have this connection's
            # writes; the script by its text, as a cluster's pipelines take no EVALSHA)
            pipe = self._redis.pipeline(transaction=False)
            args: list[str | int] = [version, document, KEEP_FOR, self._channel, *fenced]
            pipe.execute_command("EVAL", _COMPARE_AND_SET, len(keys), *keys, *args)
            if acks:
                pipe.execute_command(
                    "WAIT", acks, int(WAIT_FOR * 1000), **same_node(self._redis, key)
                )
            done, *acked = await self._call(pipe.execute(), write=True)
            if done == -1:
                raise LeaseLost(f"{name}: this replica no longer holds the decider's lease")
            if done and acked and acked[0] < acks:
                raise NotReplicated(
                    f"{self._where}: acknowledged by {acked[0]} of {acks} replicas within "
                    f"{WAIT_FOR:g} s: a failover now could lose it",
                    changed,
                )
            if done:
                return changed
        raise StateUnavailable(f"the record of {name} kept changing: try again")

    async def forget(self, name: str) -> None:
        """Records expire by themselves: other replicas may still have the route."""

    async def follow(
        self, identities: Mapping[str, str], on_change: Follower, on_recovery: Recovery
    ) -> None:
        self._keys = {
            self.key(name, identity).encode(): name for name, identity in identities.items()
        }
        self._on_change, self._on_recovery = on_change, on_recovery
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        if self._follower is not None:
            await cancel_and_wait(self._follower)
            self._follower = None

    async def set_aside(self) -> str | None:
        """Rename the records `load` found unreadable to `<key>:unreadable-<time>`."""
        moved = []
        for key in self._unreadable:
            aside = f"{key}:unreadable-{int(time.time())}"
            with contextlib.suppress(StateUnavailable, RedisError):
                await self._call(self._redis.rename(key, aside), write=True)
                moved.append(aside)
        self._unreadable = []
        return ", ".join(moved) or None

    # --- following ------------------------------------------------------------------------------

    async def _follow(self) -> None:
        """Listen for changes, re-read every record now and then, reconnect after an outage."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                recovered = not self._reachable
                missing = await self._reread()
                self._answered()
                delay = 0.1
                if (recovered or missing) and self._on_recovery is not None:
                    await self._on_recovery()
                next_read = loop.time() + REREAD_EVERY
                while True:
                    wait = max(0.0, next_read - loop.time())
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                    if message is not None and message["data"] in self._keys:
                        await self._read(message["data"])  # (a missing one: the next re-read)
                    if loop.time() >= next_read:
                        next_read = loop.time() + REREAD_EVERY
                        if await self._master_moved():
                            break  # (subscribe again, on the new master)
                        if await self._reread() and self._on_recovery is not None:
                            await self._on_recovery()  # a record vanished: write it back
            except (RedisError, OSError, StateUnavailable) as exc:
                self._unavailable(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_EVERY)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _acks(self) -> int:
        if self.min_replicas_ack is not None:
            return self.min_replicas_ack
        return min(self.replicas, 1)

    async def _reread(self) -> bool:
        """Read every followed record; True when one of them is missing or older than this
        process's. While Redis refuses writes, try one (a key of this process's that expires)
        to learn when it takes them again. Count the master's replicas (see `_acks`)."""
        if self.min_replicas_ack is None:
            with contextlib.suppress(StateUnavailable):
                self.replicas = await self._call(replicas(self._redis))
        if self.refusing is not None:
            with contextlib.suppress(StateUnavailable):
                probe = f"{self._prefix}:writable"  # (any write would do; this one expires)
                await self._call(self._redis.set(probe, b"1", px=5000), write=True)
        keys = list(self._keys)
        if not keys:
            return False
        async with self._reading:
            return self._report(keys, await self._get(keys))

    def _report(self, keys: list[bytes], values: list[bytes | None]) -> bool:
        """Tell the controller of the records read; True when one of them is missing or older
        than this process's (then written back)."""
        missing = False
        for key, value in zip(keys, values, strict=True):
            try:
                rollout = self._parse(value)[1]
            except ValueError as exc:
                if key not in self._reported:
                    self._reported.add(key)
                    log.error("%s, %s: rollout record unreadable: %s", self._where, key, exc)
                continue
            self._reported.discard(key)
            name = self._keys.get(key)
            if rollout is None:
                missing = True
            elif name is not None and self._on_change is not None:
                missing = self._on_change(name, rollout) or missing
        return missing

    async def _read(self, key: bytes) -> None:
        async with self._reading:
            behind = self._report([key], [await self._call(self._redis.get(key))])
        if behind and self._on_recovery is not None:
            await self._on_recovery()

    # --- helpers --------------------------------------------------------------------------------

    async def _master_moved(self) -> bool:
        """Whether the sentinels name a new master (see `follow_master`)."""
        try:
            moved = await follow_master(self._redis)
        except (RedisError, OSError):
            return False  # (the sentinels cannot be asked: the master may still answer)
        if moved:
            log.warning("%s: the sentinels name a new master: following it", self._where)
        return moved

    async def _get(self, keys: list[Any]) -> list[bytes | None]:
        """The values of `keys` (one pipeline: on a cluster they are in different slots)."""
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        values: list[bytes | None] = await self._call(pipe.execute())
        return values

    async def _call(self, call: Any, write: bool = False) -> Any:
        """Await a Redis call; `StateUnavailable` when Redis cannot be reached, or refuses a
        `write` (out of memory under `noeviction`, a replica that is read-only)."""
        try:
            result = await call
        except ResponseError as exc:
            self._answered()
            if not write:
                raise StateUnavailable(f"the state store refused a read: {exc}") from exc
            if self.refusing is None:
                log.warning("state store refuses writes: %s; serving on the last known state", exc)
            self.refusing = str(exc)
            raise StateUnavailable(f"the state store refuses writes: {exc}") from exc
        except (RedisError, OSError) as exc:
            self._unavailable(exc)
            raise StateUnavailable(f"the state store cannot be reached: {exc}") from exc
        self._answered()
        if write and self.refusing is not None:
            log.info("state store takes writes again")
            self.refusing = None
        return result

    def _unavailable(self, exc: BaseException) -> None:
        if self._reachable:
            log.warning("state store unavailable: %s; serving on the last known state", exc)
            self._reachable = False

    def _answered(self) -> None:
        if not self._reachable:
            log.info("state store reachable again")
            self._reachable = True

    @staticmethod
    def _parse(value: bytes | None) -> tuple[int, Rollout | None]:
        """A record's version and rollout (0 and None when absent); `ValueError` naming what
        is wrong when it cannot be read (a corrupt record, or one of a newer format)."""
        if value is None:
            return 0, None
        try:
            document = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ValueError("expected an object")
        version = document.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version: expected a positive whole number, got {version!r}")
        return version, decode_rollout(document.get("rollout"), "rollout")
