"""Several worker processes serving the same ports on one host: the supervisor that starts,
signals and restarts them, and the metrics they report as one.

Invariants
- Every worker is a whole proxy (data plane and admin API) bound to the same ports with
  SO_REUSEPORT, so the kernel spreads connections over them. Workers share rollout state as
  replicas do (Redis, or the state file under its lock): an action through any of them holds
  for all; the config loader refuses what they cannot share.
- SIGTERM or SIGINT to the supervisor drains every worker; SIGHUP, or a reload through any
  worker's admin API (which asks the supervisor), reloads every worker. A worker dies with its
  supervisor (Linux: PR_SET_PDEATHSIG).
- A worker that exits on its own is logged and started again, after a pause that doubles while
  it keeps dying young (0.5 s to 30 s).
- `/metrics` and `/status` counts, from whichever worker answers, count every request once
  (see `proxy.telemetry.host_metrics`); a dead worker's file is renamed `dead-<pid>`, so its
  counters stay in the sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from proxy.config.model import Config, Listen

log = logging.getLogger("grayscale.workers")

ENV = "GRAYSCALE_WORKER"  # set by the supervisor in each worker's environment


@dataclass(frozen=True, slots=True)
class Worker:
    """What a worker knows of its place: its number, how many there are, the supervisor's
    folder and process id, and the ports every worker binds."""

    index: int
    count: int
    folder: str
    supervisor: int
    listen: tuple[str, int]
    admin_listen: tuple[str, int]

    @classmethod
    def from_env(cls) -> Worker | None:
        """This process's place, when a supervisor started it."""
        value = os.environ.get(ENV)
        if not value:
            return None
        fields = json.loads(value)
        fields["listen"] = tuple(fields["listen"])
        fields["admin_listen"] = tuple(fields["admin_listen"])
        return cls(**fields)

    def config(self, config: Config) -> Config:
        """`config` with the ports the supervisor chose (a port 0 in the file is one port
        for all the workers)."""
        server = replace(
            config.server, listen=Listen(*self.listen), admin_listen=Listen(*self.admin_listen)
        )
        return replace(config, server=server)

    def ask_for_reload(self) -> None:
        """Have the supervisor reload every worker."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.supervisor, signal.SIGHUP)


def die_with_parent() -> None:
    """Have the kernel stop this process when its parent dies (Linux only; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --- the supervisor --------------------------------------------------------------------------


def _reserve(listen: Listen) -> tuple[socket.socket | None, tuple[str, int]]:
    """For port 0, a port for every worker: bound (not listening) with SO_REUSEPORT, so that
    nobody else takes it while the workers bind it too."""
    if listen.port != 0:
        return None, (listen.host, listen.port)
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((listen.host, 0))
    return sock, (listen.host, sock.getsockname()[1])


async def supervise(config: Config, argv: list[str]) -> int:
    """Run `config.server.workers` workers (`python -m proxy ARGV` each) until SIGTERM/SIGINT;
    the exit status."""
    loop = asyncio.get_running_loop()
    count = config.server.workers
    folder = tempfile.mkdtemp(prefix="grayscale-workers-")
    reserved, listen = _reserve(config.server.listen)
    reserved_admin, admin_listen = _reserve(config.server.admin_listen)
    place = {
        "count": count,
        "folder": folder,
        "supervisor": os.getpid(),
        "listen": listen,
        "admin_listen": admin_listen,
    }
    stopping = asyncio.Event()
    processes: dict[int, asyncio.subprocess.Process] = {}
    # One key for the request ids of every worker, so that any of them reads any id.
    secret_env = config.outcomes.secret_env
    shared = {secret_env: os.environ.get(secret_env) or secrets.token_hex(32)}

    def forward(sig: signal.Signals) -> None:
        for process in processes.values():
            if process.returncode is None:
                process.send_signal(sig)

    def stop() -> None:
        stopping.set()
        forward(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, forward, signal.SIGHUP)

    async def keep(index: int) -> None:
        pause = 0.5
        while not stopping.is_set():
            started = time.monotonic()
            env = {**os.environ, **shared, ENV: json.dumps({"index": index, **place})}
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy", *argv, env=env
            )
            processes[index] = process
            code = await process.wait()
            with contextlib.suppress(OSError):  # its counters stay in the host's totals
                os.replace(
                    Path(folder, f"worker-{process.pid}.json"),
                    Path(folder, f"dead-{process.pid}.json"),
                )
            if stopping.is_set():
                return
            pause = 0.5 if time.monotonic() - started > 10 else min(pause * 2, 30.0)
            log.warning(
                "worker %d (pid %d) exited with status %s; starting it again in %.1f s",
                index,
                process.pid,
                code,
                pause,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)

    log.info("starting %d workers on %s:%d (admin %s:%d)", count, *listen, *admin_listen)
    try:
        await asyncio.gather(*(keep(index) for index in range(count)))
    finally:
        for sock in (reserved, reserved_admin):
            if sock is not None:
                sock.close()
        shutil.rmtree(folder, ignore_errors=True)
    log.info("every worker stopped")
    return 0
