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
- `/metrics` and `/status` counts, from whichever worker answers, count every request once:
  each worker writes its figures to its own file in the supervisor's folder every `SHARE_EVERY`
  (and the one answering, at once), and the answer sums the files. A dead worker's counters stay
  in the sum (its file is renamed `dead-<pid>`), so totals never go down; its gauges leave it.
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from proxy.config.model import Config, Listen
from proxy.metrics import CODE_CLASSES, VARIANTS

log = logging.getLogger("grayscale.workers")

ENV = "GRAYSCALE_WORKER"  # set by the supervisor in each worker's environment
SHARE_EVERY = 0.5  # seconds between writes of a worker's figures
SUMMED_GAUGES = frozenset({"grayscale_in_flight_requests"})
LOWEST_GAUGES = frozenset({"grayscale_state_store_healthy"})  # healthy only if all are


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


# --- metrics of the whole host ---------------------------------------------------------------


class HostMetrics:
    """The figures of every worker on the host, summed; this worker's own shared with them."""

    def __init__(self, registry: CollectorRegistry, worker: Worker):
        self.worker = worker
        self._registry = registry
        self._folder = Path(worker.folder)
        self._own = self._folder / f"worker-{os.getpid()}.json"
        self._task: asyncio.Task[None] | None = None

    def share(self) -> None:
        """Write this worker's figures for the others (atomically: write, then rename)."""
        document = [
            {
                "name": family.name,
                "type": family.type,
                "help": family.documentation,
                "samples": [[s.name, s.labels, s.value] for s in family.samples],
            }
            for family in self._registry.collect()
        ]
        temp = self._own.with_suffix(".tmp")
        temp.write_text(json.dumps(document))
        os.replace(temp, self._own)

    def families(self) -> list[Metric]:
        """Every worker's figures, merged (this worker's as of now)."""
        self.share()
        live: list[list[dict[str, Any]]] = []
        dead: list[list[dict[str, Any]]] = []
        for path in self._folder.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                (live if path.name.startswith("worker-") else dead).append(
                    json.loads(path.read_text())
                )
        return merge(live, dead)

    def exposition(self) -> bytes:
        """The Prometheus text of the whole host."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(self.families()))
        return generate_latest(registry)

    def counts(self, families: Iterable[Metric], route: str) -> dict[str, dict[str, int]]:
        """Requests per variant and code class on the whole host, for `/status`."""
        counts = {variant: dict.fromkeys(CODE_CLASSES, 0) for variant in VARIANTS}
        for family in families:
            if family.name != "grayscale_requests":
                continue
            for sample in family.samples:
                if sample.labels.get("route") == route and sample.name.endswith("_total"):
                    by_class = counts.get(sample.labels["variant"])
                    if by_class is not None and sample.labels["code_class"] in by_class:
                        by_class[sample.labels["code_class"]] = int(sample.value)
        return counts

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._share_often())

    async def stop(self) -> None:
        """Stop sharing, after a last write (the supervisor keeps it when this worker ends)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(OSError):
            self.share()

    async def _share_often(self) -> None:
        while True:
            await asyncio.sleep(SHARE_EVERY)
            try:
                self.share()
            except OSError as exc:
                log.warning("cannot share this worker's metrics: %s", exc)


def merge(live: list[list[dict[str, Any]]], dead: list[list[dict[str, Any]]]) -> list[Metric]:
    """Sum the figures of workers: counters and histograms of every worker, dead or alive;
    gauges of the live ones (summed for requests in flight, the lowest for health, else the
    highest: the share, the state and the like are the same in every worker)."""
    families: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for documents, alive in ((live, True), (dead, False)):
        for document in documents:
            for family in document:
                name, kind = family["name"], family["type"]
                if kind == "gauge" and not alive:
                    continue
                families.setdefault(name, (kind, family["help"]))
                merged = values.setdefault(name, {})
                for sample_name, labels, value in family["samples"]:
                    key = (sample_name, tuple(sorted(labels.items())))
                    if key not in merged:
                        merged[key] = value
                    elif sample_name.endswith("_created"):
                        merged[key] = min(merged[key], value)
                    elif kind != "gauge" or name in SUMMED_GAUGES:
                        merged[key] += value
                    elif name in LOWEST_GAUGES:
                        merged[key] = min(merged[key], value)
                    else:
                        merged[key] = max(merged[key], value)
    result = []
    for name, (kind, documentation) in families.items():
        metric = Metric(name, documentation, kind)
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
        result.append(metric)
    return result


class _Fixed(Collector):
    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


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
