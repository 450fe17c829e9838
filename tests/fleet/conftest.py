"""Fixtures for tests of many proxies acting as one: a real Redis, and `grayscale serve`
replicas as subprocesses."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.fleet.redis_server import MISSING, RedisServer
from tests.integration.conftest import ROOT

TOKEN = "fleet-test-token-0123456789abcdef0123456789"


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


@dataclass
class Replica:
    """One `grayscale serve` process, its addresses and everything it logged."""

    process: asyncio.subprocess.Process
    proxy_url: str = ""
    admin_url: str = ""
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def _read(self, listening: asyncio.Future[str]) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if "proxy listening" in line and not listening.done():
                listening.set_result(line)
        if not listening.done():
            listening.set_exception(RuntimeError("grayscale serve exited:\n" + "".join(self.lines)))

    def logged(self, text: str) -> list[str]:
        """The lines that contain `text`."""
        return [line for line in self.lines if text in line]

    async def action(
        self, session: aiohttp.ClientSession, route: str, action: str, **body: object
    ) -> tuple[int, dict[str, object]]:
        async with session.post(
            f"{self.admin_url}/routes/{route}/{action}",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            return response.status, await response.json()

    async def status(self, session: aiohttp.ClientSession) -> dict[str, object]:
        async with session.get(f"{self.admin_url}/status") as response:
            assert response.status == 200
            result: dict[str, object] = await response.json()
            return result

    async def stop(self) -> None:
        """SIGTERM; it must drain and exit 0 by itself (a process killed by the test is let
        be)."""
        hung = False
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                hung = True
                self.process.kill()
                await self.process.wait()
            assert not hung and self.process.returncode == 0, "".join(self.lines[-20:])
        if self._reader is not None:
            await self._reader


ReplicaFactory = Callable[..., Awaitable[Replica]]  # (config, env=None)


@pytest.fixture
async def replicas() -> AsyncIterator[ReplicaFactory]:
    """Start `grayscale serve --config PATH` processes (with `env` added to the environment);
    all are stopped after the test."""
    started: list[Replica] = []

    async def start(config: Path, env: dict[str, str] | None = None) -> Replica:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--config",
            str(config),
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "GRAYSCALE_ADMIN_TOKEN": TOKEN, **(env or {})},
        )
        replica = Replica(process)
        started.append(replica)
        listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        replica._reader = asyncio.get_running_loop().create_task(replica._read(listening))
        line = await asyncio.wait_for(listening, 20)
        replica.proxy_url, replica.admin_url = re.findall(r"http://127\.0\.0\.1:\d+", line)
        return replica

    yield start
    await asyncio.gather(*(replica.stop() for replica in started))
