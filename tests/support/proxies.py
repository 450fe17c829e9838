"""Proxies for tests: in this process (`Proxies`, behind the `start_proxy` fixture), or as a
`grayscale serve` subprocess (`serve_subprocess`)."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from proxy.app.server import Server
from proxy.config.loader import parse_config
from tests.support.configs import proxy_config
from tests.support.paths import ROOT

ProxyFactory = Callable[..., Awaitable[Server]]  # (routes, server_fields="")


class Proxies:
    """Proxies started in this process from `routes:` bodies (see `proxy_config`); `stop` stops
    every one."""

    def __init__(self) -> None:
        self.started: list[Server] = []

    async def start(self, routes: str, server_fields: str = "") -> Server:
        server = Server(parse_config(proxy_config(routes, server_fields), "test.yaml"))
        await server.start()
        self.started.append(server)
        return server

    async def stop(self) -> None:
        for server in self.started:
            await server.stop()


@dataclass
class Served:
    """A `grayscale serve` process and where it listens."""

    process: asyncio.subprocess.Process
    proxy_url: str
    admin_url: str

    async def next_line(self) -> bytes:
        """The process's next line on stderr."""
        assert self.process.stderr is not None
        return await asyncio.wait_for(self.process.stderr.readline(), timeout=20)


async def serve_subprocess(config: str | Path, *options: str) -> Served:
    """Start `grayscale serve --config CONFIG OPTIONS` and wait until it listens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(config),
        *options,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    served = Served(process, "", "")
    lines: list[bytes] = []
    line = b""
    while b"proxy listening" not in line:
        line = await served.next_line()
        if not line:  # (the end of its output: it exited, or is exiting, without listening)
            await asyncio.wait_for(process.wait(), timeout=10)
            said = b"".join(lines).decode(errors="replace")
            raise RuntimeError(f"grayscale serve exited ({process.returncode}):\n{said}")
        lines.append(line)
    served.proxy_url, served.admin_url = re.findall(r"http://127\.0\.0\.1:\d+", line.decode())
    return served
