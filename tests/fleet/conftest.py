"""Fixtures for tests of many proxies acting as one: a real Redis (the replicas themselves,
`replicas`, are a suite-wide fixture: tests/support/fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import MISSING, RedisServer

# Still imported from here by test_fleet_timeline.py; they live in tests.support.replicas.
from tests.support.replicas import Replica, ReplicaFactory

__all__ = ["Replica", "ReplicaFactory"]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running, empty redis-server; the test is skipped (and listed at the end of the run)
    when the machine has none."""
    server = RedisServer.find()
    if server is None:
        pytest.skip(MISSING)
    server.start()
    try:
        yield server
    finally:
        server.kill()
