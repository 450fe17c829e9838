"""Watching a `grayscale serve` process while it is attacked: how long its event loop stalls
(the slowest answer to `/healthz`, asked every 20 ms on the admin listener, which shares the
loop with the data plane) and how far its memory grows (peak RSS over the baseline, read from
/proc every 5 ms by a task of its own: a stalled process cannot hide its peak)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

EVERY = 0.02  # seconds between two probes


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@dataclass
class Watch:
    """What the probes saw: the slowest `/healthz` answer (seconds) and the peak RSS growth."""

    stall: float = 0.0
    baseline_kib: int = 0
    peak_kib: int = 0

    @property
    def grown_mib(self) -> float:
        return (self.peak_kib - self.baseline_kib) / 1024


@contextlib.asynccontextmanager
async def watching(pid: int, admin_url: str) -> AsyncIterator[Watch]:
    """Probe the process until the block ends."""
    watch = Watch(baseline_kib=rss_kib(pid))
    watch.peak_kib = watch.baseline_kib

    async def probe(session: aiohttp.ClientSession) -> None:
        while True:
            started = time.monotonic()
            async with session.get(admin_url + "/healthz") as response:
                await response.read()
            watch.stall = max(watch.stall, time.monotonic() - started)
            await asyncio.sleep(EVERY)

    async def sample() -> None:
        while True:
            watch.peak_kib = max(watch.peak_kib, rss_kib(pid))
            await asyncio.sleep(0.005)

    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(probe(session)), loop.create_task(sample())]
        try:
            yield watch
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
