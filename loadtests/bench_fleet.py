"""Grayscale as a fleet, side by side in one run: two workers against one process, and the
per-request cost of sharing state and observations through Redis; then what one replica asks
of Redis, for the capacity estimate in docs/replicas.md.

    .venv/bin/python loadtests/bench_fleet.py [--duration 5] [--rounds 3] [--connections 32]

Needs `redis-server` (Debian package `redis-server`); uses `wrk` and `nginx` when installed, as
bench_proxy.py does. Each configuration runs in turn, round after round; the table shows medians
over rounds, the CPU of the whole process tree (supervisor and workers) and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_proxy import (
    WRK_SCRIPT,
    Run,
    cpu_seconds,
    free_port,
    grayscale_yaml,
    measure,
    process,
    serve,
    tree_cpu,
    upstream_peers,
    wait_for_port,
)
from redis import Redis

from proxy.analysis.window import LocalObservations
from proxy.fleet.decider import Decider
from proxy.fleet.observations import PooledObservations
from proxy.fleet.redis_connection import connect
from proxy.rollout.machine import Rollout
from proxy.rollout.redis_store import RedisStore
from proxy.runtime.tasks import cancel_and_wait

ONE = "one process, file state"
TWO = "two workers, file state"
ANALYSED = "analysis, file state"
POOLED = "analysis, redis (pooled)"
ANALYSIS = "    analysis: {interval: 5s, window: 30s, min_requests: 50}\n"


def config(
    path: Path, port: int, upstreams: tuple[int, int], state: str, *, workers: int, analysis: bool
) -> Path:
    """A Grayscale config for one configuration of the benchmark."""
    text = grayscale_yaml(
        port, upstreams, route_extra="    ramp: {base: 0.1}\n" + (ANALYSIS if analysis else "")
    )
    text = text.replace("state: {backend: memory}", f"state: {state}")
    text = text.replace("}\n", f", workers: {workers}}}\n", 1)
    path.write_text(text)
    return path


def redis_demand(
    redis: Redis, redis_pid: int, load: Callable[[float], object], seconds: float
) -> dict[str, float]:
    """What the attached replica asks of Redis while `load()` runs for `seconds`: commands per
    second by name, and Redis's CPU per second."""
    redis.config_resetstat()
    cpu_before, started = cpu_seconds(redis_pid), time.monotonic()
    load(seconds)
    elapsed = time.monotonic() - started
    cpu = (cpu_seconds(redis_pid) - cpu_before) / elapsed
    stats = redis.info("commandstats")
    rates = {
        name.removeprefix("cmdstat_"): fields["calls"] / elapsed
        for name, fields in stats.items()
        if not name.startswith(("cmdstat_config", "cmdstat_info"))
    }
    usec = sum(
        fields["usec"]
        for name, fields in stats.items()
        if not name.startswith(("cmdstat_config", "cmdstat_info"))
    )
    return {"cpu_ms_per_s": cpu * 1000, "exec_ms_per_s": usec / elapsed / 1000, **rates}


async def replicas_demand(redis_url: str, redis_pid: int, count: int, seconds: float) -> float:
    """Redis's CPU (ms per second) while `count` replicas with one analysed route each keep
    up their part: the state store following its record (subscribed, re-read every second), the
    decider's lease, and a flush a second of observations (a busy route: about 90 latency
    buckets and both variants change each second, with the weights of a 10 % share: 0.1 for
    stable's requests, 0.9 for the candidate's). One of them decides and reads the pool."""
    members = []
    rng = random.Random(1)
    for i in range(count):
        client = connect(redis_url)
        local = LocalObservations({"bench": 60.0})
        store = RedisStore(client, "sim")
        await store.follow({"bench": "identity"}, lambda name, rollout: False, _nothing)
        decider = Decider(client, "sim", f"replica-{i}")
        members.append((client, local, PooledObservations(local, client, "sim"), store, decider))
    if members:
        await members[0][3].change("bench", "identity", lambda _: Rollout("identity", time.time()))

    async def play(local: LocalObservations, pool: PooledObservations, decider: Decider) -> None:
        await asyncio.sleep(rng.random())  # spread over the second, as real replicas are
        while True:
            now = time.time()
            for variant, weight in (("stable", 0.1), ("candidate", 0.9)):
                window = local.windows["bench"][variant]
                for _ in range(200):
                    window.add(now, weight, False, rng.uniform(0.01, 0.2))
            await pool.flush(now)
            if await decider.attempt():
                await pool.samples("bench", now)
            await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(play(local, pool, d)) for _, local, pool, _, d in members]
    await asyncio.sleep(2)  # all under way
    before, started = cpu_seconds(redis_pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu = (cpu_seconds(redis_pid) - before) / (time.monotonic() - started) * 1000
    for task in tasks:
        await cancel_and_wait(task)
    for client, _, _, store, _ in members:
        await store.close()
        await client.aclose()
    return cpu


async def _nothing() -> None:
    """No recovery to make in the simulation."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--replicas",
        type=int,
        nargs="*",
        default=[0, 100, 300],
        help="fleet sizes for the Redis capacity measure (simulated replicas)",
    )
    args = parser.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server not found: apt-get install redis-server")
    folder = Path(tempfile.mkdtemp(prefix="grayscale-fleet-bench-"))
    script = folder / "post.lua"
    script.write_text(WRK_SCRIPT)
    upstreams = (free_port(), free_port())
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    peers, _ = upstream_peers(folder, upstreams, free_port())
    results: dict[str, list[Run]] = {}
    with contextlib.ExitStack() as stack:
        for peer in peers:
            stack.enter_context(peer)
        redis_proc = stack.enter_context(
            process(
                [server, "--port", str(redis_port), "--save", "", "--appendonly", "no"], redis_port
            )
        )
        plans = {
            ONE: (f"{{path: {folder / 'one.json'}}}", 1, False),
            TWO: (f"{{path: {folder / 'two.json'}}}", 2, False),
            ANALYSED: (f"{{path: {folder / 'analysed.json'}}}", 1, True),
            POOLED: (f'{{backend: redis, url: "{redis_url}"}}', 1, True),
        }
        targets: dict[str, tuple[int, int]] = {}
        for i, (name, (state, workers, analysis)) in enumerate(plans.items()):
            port = free_port()
            path = config(
                folder / f"c{i}.yaml", port, upstreams, state, workers=workers, analysis=analysis
            )
            proc = stack.enter_context(serve(path, port))
            wait_for_port(port)
            time.sleep(0.5 * workers)  # every worker listening
            targets[name] = (port, proc.pid)

        def run(name: str, seconds: float) -> Run:
            port, pid = targets[name]
            before, started = tree_cpu(pid), time.monotonic()
            result = measure(
                port, name, seconds=seconds, connections=args.connections, script=script, pid=None
            )
            result.cpu_percent = (tree_cpu(pid) - before) / (time.monotonic() - started) * 100
            return result

        for name in targets:  # warm up
            run(name, 1)
        for round_no in range(args.rounds):
            for name in targets:
                result = run(name, args.duration)
                results.setdefault(name, []).append(result)
                print(
                    f"round {round_no + 1} {name:<26} {result.requests_per_second:>9.0f} req/s",
                    file=sys.stderr,
                )
        client = Redis.from_url(redis_url)
        idle = redis_demand(client, redis_proc.pid, time.sleep, 10)
        busy = redis_demand(client, redis_proc.pid, lambda s: run(POOLED, s), 10)
        connections = len(client.client_list()) - 1  # the pooled proxy's; not this one
        client.close()
        for _, pid in targets.values():  # the proxies leave the machine
            os.kill(pid, signal.SIGSTOP)
        fleet = {
            n: asyncio.run(replicas_demand(redis_url, redis_proc.pid, n, 10)) for n in args.replicas
        }
        for _, pid in targets.values():
            os.kill(pid, signal.SIGCONT)

    def med(name: str, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in results[name]))

    def us_per_request(name: str) -> float:
        return statistics.median(
            (r.cpu_percent or 0) / 100 / r.requests_per_second * 1e6 for r in results[name]
        )

    lines = [
        f"{'configuration':<28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU %':>7}"
        f"{'us/req':>8}{'errors':>8}"
    ]
    for name, runs in results.items():
        lines.append(
            f"{name:<28}{med(name, 'requests_per_second'):>9.0f}{med(name, 'p50_ms'):>9.2f}"
            f"{med(name, 'p99_ms'):>9.2f}{med(name, 'cpu_percent'):>7.0f}"
            f"{us_per_request(name):>8.1f}{sum(r.errors for r in runs):>8}"
        )
    two = med(TWO, "requests_per_second") / med(ONE, "requests_per_second")
    pooled = med(POOLED, "requests_per_second") / med(ANALYSED, "requests_per_second")
    cost = us_per_request(POOLED) / us_per_request(ANALYSED) - 1
    lines += [
        "",
        f"two workers against one process: {two:.2f}x throughput",
        f"redis (shared state, pooled observations, lease) against the file: {pooled:.3f}x "
        f"throughput, {cost:+.1%} CPU per request",
        "",
        "what one replica with one analysed route asks of Redis (per second):",
    ]
    for label, demand in (
        ("idle", idle),
        (f"at {med(POOLED, 'requests_per_second'):.0f} req/s", busy),
    ):
        commands = ", ".join(
            f"{name} {rate:.1f}"
            for name, rate in sorted(demand.items())
            if name not in ("cpu_ms_per_s", "exec_ms_per_s")
        )
        total = sum(v for k, v in demand.items() if k not in ("cpu_ms_per_s", "exec_ms_per_s"))
        lines.append(
            f"  {label}: {total:.1f} commands ({commands}); Redis CPU {demand['cpu_ms_per_s']:.2f}"
            f" ms, of which executing commands {demand['exec_ms_per_s']:.3f} ms"
        )
    lines.append(f"  connections held by the replica (one process): {connections}")
    lines += ["", "Redis CPU with a simulated fleet (one analysed route per replica):"]
    for n, cpu in fleet.items():
        lines.append(f"  {n:>5} replicas: {cpu:7.1f} ms per second")
    if len(fleet) > 1:
        sizes = sorted(fleet)
        slope = (fleet[sizes[-1]] - fleet[sizes[0]]) / (sizes[-1] - sizes[0])
        lines.append(
            f"  {slope:.3f} ms of Redis CPU per replica per second: one Redis core at 50 % "
            f"serves about {500 / slope:,.0f} such replicas"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
