"""The Redis connection of one process, shared by the state store, the pooled observations and
the decider's lease: one Redis (at a URL, or the master its sentinels name) or a Redis Cluster.

On a cluster every command and script touches the keys of one route only (their `{route}` hash
tag puts them in one slot), or one key; the few calls that differ are beside the state store
(`proxy.rollout.redis_store`)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError
from redis.asyncio.sentinel import Sentinel as Sentinels
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.config.model import Sentinel
from proxy.rollout.redis_store import Client

TIMEOUT = 1.0  # seconds a Redis call may take before Redis counts as unavailable


def connect(url: str, password_env: str | None = None, ca_file: str | None = None) -> Redis:
    """A client of the Redis at `url`; its password (if any) from the variable `password_env`;
    a `rediss://` server's certificate checked against the authorities in `ca_file` (or the
    system's).

    Calls fail after `TIMEOUT` (once retried on a fresh connection), so that nothing waits long
    on a Redis that is gone: the data plane never waits on it at all.
    """
    password = os.environ.get(password_env) if password_env else None
    tls: dict[str, Any] = {"ssl_ca_certs": ca_file} if ca_file else {}
    return Redis.from_url(
        url,
        password=password or None,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), 1),
        **tls,
    )


class _Sentinels(Sentinels):
    """Sentinels asked for the master by `SENTINEL GET-MASTER-ADDR-BY-NAME`: that names the
    promoted replica as soon as a failover promotes it, while `SENTINEL MASTERS` (redis-py's
    way) names the old master until the failover ends, up to ~10 s later, and the old master
    takes writes meanwhile that it drops when it resyncs as a replica."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        for sentinel in self.sentinels:
            try:
                address = await sentinel.sentinel_get_master_addr_by_name(service_name)
            except (RedisError, OSError):
                continue  # (the next sentinel)
            if isinstance(address, tuple | list) and len(address) == 2:
                host, port = address
                return host.decode() if isinstance(host, bytes) else str(host), int(port)
        raise MasterNotFoundError(f"no sentinel names a master for {service_name!r}")


def connect_sentinel(sentinel: Sentinel, password_env: str | None = None) -> Redis:
    """A client of the master that `sentinel`'s sentinels name for its service, found anew
    whenever a connection is made: after a failover (the old master's connection lost, or
    answering READONLY as a replica now) the next call, retried once, reaches the new master.
    The password (if any) is the master's; the sentinels are asked without one."""
    password = os.environ.get(password_env) if password_env else None
    sentinels = _Sentinels(  # type: ignore[no-untyped-call]
        [(host.host, host.port) for host in sentinel.hosts],
        sentinel_kwargs={"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT},
    )
    master: Redis = sentinels.master_for(
        sentinel.service,
        redis_class=Redis,
        password=password or None,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), 1),
    )
    return master


def connect_cluster(
    url: str, password_env: str | None = None, ca_file: str | None = None
) -> Client:
    """A client of the Redis Cluster that the node at `url` belongs to (the others are learnt
    from it, and again when slots move or a master fails over); password and certificate as
    for `connect`."""
    password = os.environ.get(password_env) if password_env else None
    tls: dict[str, Any] = {"ssl_ca_certs": ca_file} if ca_file else {}
    cluster: RedisCluster = RedisCluster.from_url(
        url,
        password=password or None,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), 1),
        **tls,
    )
    return cluster


def describe(url: str) -> str:
    """`redis at HOST:PORT`, for messages (never the URL's user or query)."""
    parts = urlsplit(url)
    return f"redis at {parts.hostname}:{parts.port or 6379}"


def replica_name() -> str:
    """This process's name in the fleet: $GRAYSCALE_REPLICA (or the host name) and the process
    id, which tells the workers of one replica apart."""
    return f"{os.environ.get('GRAYSCALE_REPLICA') or os.uname().nodename}:{os.getpid()}"
