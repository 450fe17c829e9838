"""`grayscale serve` replicas as subprocesses, for tests of many proxies acting as one: each
`Replica` keeps everything its process logged; `Replicas` starts them and stops them all."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.support.paths import ROOT

TOKEN = "fleet-test-token-0123456789abcdef0123456789"


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


class Replicas:
    """Starts `grayscale serve --config PATH` processes (with `env` added to the environment)
    and waits until each listens; `stop` stops every one."""

    def __init__(self) -> None:
        self.started: list[Replica] = []

    async def start(self, config: Path, env: dict[str, str] | None = None) -> Replica:
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
        self.started.append(replica)
        listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        replica._reader = asyncio.get_running_loop().create_task(replica._read(listening))
        line = await asyncio.wait_for(listening, 20)
        replica.proxy_url, replica.admin_url = re.findall(r"http://127\.0\.0\.1:\d+", line)
        return replica

    async def stop(self) -> None:
        await asyncio.gather(*(replica.stop() for replica in self.started))
