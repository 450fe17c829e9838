"""A short throughput guard: Grayscale against the minimal aiohttp proxy, measured side by side.

Loose on purpose (noise must not make CI flaky): zero errors under concurrent load, and Grayscale
at least GUARD times the minimal proxy's throughput in the same run. The full comparison with
nginx and wrk is `loadtests/bench_proxy.py`.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
GUARD = 0.7
ANSWER = b'{"model": "bench", "predictions": [{"label": "positive", "score": 0.98}]}'


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


async def start(args: list[str], port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return process
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{args} did not listen on {port}")


async def load(url: str, seconds: float) -> tuple[int, int]:
    """(answers, errors) from 32 concurrent keep-alive clients posting 300 bytes."""
    done = errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(worker: int) -> None:
            nonlocal done, errors
            i = 0
            while time.monotonic() < deadline:
                i += 1
                try:
                    async with session.post(
                        url + "/v1/models/bench:predict",
                        data=b"a" * 300,
                        headers={"X-User-Id": f"u{worker}-{i}"},
                    ) as resp:
                        if await resp.read() == ANSWER and resp.status == 200:
                            done += 1
                        else:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        await asyncio.gather(*(client(w) for w in range(32)))
    return done, errors


async def test_throughput_guard(tmp_path):
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    base = str(upstream.make_url("")).rstrip("/")
    minimal_port, grayscale_port = free_port(), free_port()
    config = tmp_path / "grayscale.yaml"
    config.write_text(
        f'server: {{listen: "127.0.0.1:{grayscale_port}", admin_listen: "127.0.0.1:0"}}\n'
        "state: {backend: memory}\nroutes:\n  - name: bench\n    match: {path_prefix: /}\n"
        f'    stable: {{url: "{base}"}}\n    candidate: {{url: "{base}"}}\n'
        '    cohort: {keys: ["header:X-User-Id"]}\n    ramp: {base: 0.1}\n'
        "    analysis: {interval: 1s, window: 10s, min_requests: 50}\n"
    )
    processes = [
        await start(
            [sys.executable, "loadtests/minimal_proxy.py", str(minimal_port), base, base],
            minimal_port,
        ),
        await start(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config)], grayscale_port
        ),
    ]
    rates: dict[str, list[float]] = {"minimal": [], "grayscale": []}
    try:
        for _ in range(2):
            for name, port in (("minimal", minimal_port), ("grayscale", grayscale_port)):
                done, errors = await load(f"http://127.0.0.1:{port}", 1.5)
                assert errors == 0, (name, errors)
                rates[name].append(done / 1.5)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            await process.wait()
        await upstream.close()
    ratio = max(rates["grayscale"]) / max(rates["minimal"])
    print(
        f"\nminimal {max(rates['minimal']):.0f}/s, grayscale {max(rates['grayscale']):.0f}/s, "
        f"ratio {ratio:.2f}"
    )
    assert ratio >= GUARD
