"""A real `grayscale serve` process: draining on SIGTERM, and memory under a slow reader."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from tests.support.configs import route_yaml
from tests.support.proxies import serve_subprocess
from tests.support.upstream import url_of
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


async def serve(
    tmp_path: Path, stable: TestServer, candidate: TestServer, server: str = ""
) -> tuple[asyncio.subprocess.Process, str, str]:
    """Start `grayscale serve` on free ports; the process, proxy URL and admin URL."""
    config = tmp_path / "grayscale.yaml"
    config.write_text(
        f'server: {{listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"{server}}}\n'
        "state: {backend: memory}\nroutes:\n"
        + route_yaml(url_of(stable), url_of(candidate), share=0.5, timeout="60s")
    )
    served = await serve_subprocess(config)
    return served.process, served.proxy_url, served.admin_url


async def test_sigterm_lets_100_streams_in_flight_finish(upstreams, tmp_path):
    stable, candidate = upstreams
    process, proxy_url, admin_url = await serve(tmp_path, stable, candidate, ", drain_timeout: 20s")
    started = asyncio.Event()
    first_events = 0
    connector = aiohttp.TCPConnector(limit=0)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def stream(i: int) -> bytes:
            nonlocal first_events
            async with session.get(
                proxy_url + "/ticks/1.5?every=0.1", headers={"X-User-Id": f"u{i}"}
            ) as resp:
                first = await resp.content.readuntil(b"\n\n")
                first_events += 1
                if first_events == 100:
                    started.set()
                return first + await resp.read()

        streams = [asyncio.create_task(stream(i)) for i in range(100)]
        await asyncio.wait_for(started.wait(), timeout=20)
        process.send_signal(signal.SIGTERM)

        async def draining() -> bool:  # (not ready for new work)
            async with session.get(admin_url + "/readyz") as resp:
                return resp.status == 503

        assert await eventually(draining, within=5)
        bodies = await asyncio.gather(*streams, return_exceptions=True)
    code = await asyncio.wait_for(process.wait(), timeout=30)
    assert code == 0
    failures = [b for b in bodies if not isinstance(b, bytes)]
    assert not failures, failures[:3]
    assert all(b.startswith(b"data: tick-0") and b.endswith(b"data: [DONE]\n\n") for b in bodies)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_memory_stays_bounded_while_a_client_reads_100_mb_slowly(upstreams, tmp_path):
    stable, candidate = upstreams
    process, proxy_url, _ = await serve(tmp_path, stable, candidate)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy_url + "/x") as resp:  # warm up
                await resp.read()
            baseline = peak = rss_kib(process.pid)
            received = 0
            async with session.get(proxy_url + "/bulk/100") as resp:
                while chunk := await resp.content.read(256 * 1024):
                    received += len(chunk)
                    await asyncio.sleep(0.004)  # a reader far slower than the upstream
                    peak = max(peak, rss_kib(process.pid))
        assert received == 100 * 1024 * 1024
        growth_mib = (peak - baseline) / 1024
        print(f"\nproxy RSS {baseline / 1024:.0f} MiB, peak +{growth_mib:.1f} MiB for 100 MiB")
        assert growth_mib < 20
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
