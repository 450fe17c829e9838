"""Grayscale against direct, nginx and a minimal aiohttp proxy, side by side in one run.

    .venv/bin/python loadtests/bench_proxy.py [--duration 5] [--rounds 3] [--quick]
                                              [--baseline DIR] [--pure-baseline]

Uses `wrk` and `nginx` (Debian packages `wrk`, `nginx-light`) when installed: nginx as the
upstreams and as the split_clients reference, wrk as the load generator. Without them the
upstreams and the load generator are the raw-protocol ones of `loadgen.py` and the nginx row is
left out. Each configuration runs in turn, round after round, so
machine noise hits all of them alike; the table shows medians over rounds and ratios. Results go
to `loadtests/results/<time>.json` as well. With `--baseline DIR` (another checkout of the
project, e.g. `git worktree add /tmp/before <commit>`), that version's Grayscale runs in the same
rounds too, so a change's cost is measured side by side; `--baseline . --pure-baseline` runs
this checkout's sources as the baseline, to measure its compiled build (`make compiled`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from loadgen import load

from proxy.runtime.event_loop import loop_factory

ROOT = Path(__file__).resolve().parents[1]
ANSWER = json.dumps(
    {"model": "bench", "predictions": [{"label": "positive", "score": 0.98}], "padding": "x" * 120}
)  # 215 bytes, like a small model's JSON answer
WRK_SCRIPT = """
math.randomseed(os.time())
wrk.method = "POST"
wrk.body = string.rep("a", 300)
wrk.headers["Content-Type"] = "application/json"
request = function()
  wrk.headers["X-User-Id"] = "user-" .. math.random(1, 1000000)
  return wrk.format(nil, "/v1/models/bench:predict")
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of process `pid` (all its threads), or of one `thread` of it."""
    stat = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """A process and its descendants (a supervisor and its workers, nginx's master and its
    workers)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids += tree_pids(int(child))
    return pids


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process and its descendants."""
    return sum(cpu_seconds(each) for each in tree_pids(pid))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def process(args: list[str], port: int, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    try:
        wait_for_port(port)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def serve(
    config: Path,
    port: int,
    root: Path = ROOT,
    prefix: tuple[str, ...] = (),
    pure: bool = False,
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """`grayscale serve --config CONFIG` of the checkout at `root`, listening on `port`; `prefix`
    goes before the command (e.g. `taskset -c 0`); `pure`: its Python sources, should it be
    compiled."""
    env = {**os.environ, "GRAYSCALE_PURE": "1"} if pure else None
    return process(
        [*prefix, sys.executable, "-m", "proxy", "serve", "--config", str(config)],
        port,
        cwd=root,
        env=env,
    )


def nginx_file(folder: Path, name: str, http: str) -> Path:
    """An nginx config of one worker (pid and error log in `folder`) whose `http` block holds
    `http`; no access log, keep-alive connections kept for a million requests."""
    conf = folder / f"{name}.conf"
    conf.write_text(f"""
worker_processes 1;
worker_rlimit_nofile 20000;
pid {folder}/{name}.pid;
error_log {folder}/{name}-error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 1000000;
{http}}}
""")
    return conf


def nginx_answer(port: int, extra: str = "") -> str:
    """An nginx server on `port` answering every request `return 200` with `ANSWER`."""
    return f"""  server {{
    listen 127.0.0.1:{port};{extra}
    location / {{ return 200 '{ANSWER}'; }}
  }}
"""


def nginx_split(upstream_ports: tuple[int, int], proxy_port: int, candidate: str = "10%") -> str:
    """nginx as the reference proxy on `proxy_port`: `split_clients` on X-User-Id sends
    `candidate` of the users to the second port, upstream keep-alive."""
    return f"""  upstream stable {{ server 127.0.0.1:{upstream_ports[0]}; keepalive 64; }}
  upstream candidate {{ server 127.0.0.1:{upstream_ports[1]}; keepalive 64; }}
  split_clients "${{http_x_user_id}}" $variant {{ {candidate} candidate; * stable; }}
  server {{
    listen 127.0.0.1:{proxy_port};
    location / {{
      proxy_pass http://$variant;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
"""


def nginx_conf(folder: Path, upstream_ports: tuple[int, int], proxy_port: int) -> Path:
    """One nginx: the two fixed-answer upstreams and the split_clients proxy."""
    servers = nginx_answer(upstream_ports[0]) + nginx_answer(upstream_ports[1])
    return nginx_file(folder, "nginx", servers + nginx_split(upstream_ports, proxy_port))


def grayscale_route(
    name: str,
    upstreams: tuple[int, int],
    *,
    prefix: str = "/",
    upstream_extra: str = "",
    route_extra: str = "",
) -> str:
    """One route of a Grayscale config: `prefix` to the two upstream ports, split by X-User-Id."""
    return (
        f"  - name: {name}\n    match: {{path_prefix: {prefix}}}\n"
        f'    stable: {{url: "http://127.0.0.1:{upstreams[0]}"{upstream_extra}}}\n'
        f'    candidate: {{url: "http://127.0.0.1:{upstreams[1]}"{upstream_extra}}}\n'
        '    cohort: {keys: ["header:X-User-Id"], salt: "s"}\n' + route_extra
    )


def grayscale_yaml(
    port: int,
    upstreams: tuple[int, int],
    *,
    sections: str = "",
    routes: str | None = None,
    route: str = "bench",
    **route_options: str,
) -> str:
    """A Grayscale config listening on `port` with one route to the two upstream ports (named
    `route`, made by `grayscale_route` with `route_options`), or with the `routes` given."""
    if routes is None:
        routes = grayscale_route(route, upstreams, **route_options)
    return (
        f'server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{free_port()}"}}\n'
        f"state: {{backend: memory}}\n{sections}routes:\n" + routes
    )


def grayscale_conf(
    folder: Path, upstreams: tuple[int, int], port: int, features: bool, share: float = 0.1
) -> Path:
    """The benchmark's Grayscale config: features off, or analysis and a sampled access log;
    `share` of the users go to the candidate."""
    folder.mkdir(exist_ok=True)
    conf = folder / ("grayscale-on.yaml" if features else "grayscale-off.yaml")
    ramp = f"    ramp: {{base: {share}}}\n"
    if features:
        text = grayscale_yaml(
            port,
            upstreams,
            sections=f"access_log: {{path: {folder / 'access.log'}, sample: 0.1}}\n",
            route_extra=ramp + "    analysis: {interval: 5s, window: 30s, min_requests: 50}\n",
        )
    else:
        text = grayscale_yaml(port, upstreams, route_extra=ramp)
    conf.write_text(text)
    return conf


DIRECT_NGINX = "direct (nginx return 200)"
DIRECT_PYTHON = "direct (Python upstream)"
NGINX = "nginx split_clients proxy"
MINIMAL = "minimal aiohttp proxy"
OFF = "grayscale, features off"
ON = "grayscale, all features"
BASE_OFF = "baseline, features off"
BASE_ON = "baseline, all features"


@dataclass
class Run:
    """One load run against one configuration."""

    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_percent: float | None


def _ms(text: str) -> float:
    found = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if found is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk_command(
    port: int, seconds: float, connections: int, script: Path, timeout: float = 2.0
) -> list[str]:
    """`wrk -t1` with `connections` for `seconds` against `port`, running the Lua `script`."""
    return [
        *("wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"),
        *("--timeout", f"{timeout:g}s", "-s", str(script), f"http://127.0.0.1:{port}"),
    ]


def _wrk(port: int, name: str, seconds: float, connections: int, script: Path) -> Run:
    command = wrk_command(port, seconds, connections, script)
    return parse_wrk(
        subprocess.run(command, capture_output=True, text=True, check=True).stdout, name
    )


def parse_wrk(out: str, name: str) -> Run:
    """The rate, p50, p99 and errors (non-2xx/3xx answers, socket errors) of wrk's output."""
    try:
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
        # the distribution's lines only: "52.50%" may end a line of the thread stats too
        p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)[1])  # type: ignore[index]
        p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)[1])  # type: ignore[index]
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"cannot read wrk's output for {name}: {exc}\n{out}") from None
    errors = 0
    for match in re.finditer(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out):
        if match[1]:
            errors += int(match[1])
        elif match[2]:
            errors += sum(int(n) for n in re.findall(r"\d+", match[2]))
    return Run(name, rps, p50, p99, errors, None)


def _python_load(port: int, name: str, seconds: float, connections: int) -> Run:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(load(port, seconds, connections=connections))
    p50, p99 = result.quantile(0.5) * 1000, result.quantile(0.99) * 1000
    return Run(name, result.rate, p50, p99, result.errors, None)


def measure(
    port: int, name: str, *, seconds: float, connections: int, script: Path, pid: int | None
) -> Run:
    """Load `port` for `seconds`: with wrk (running `script`), or with loadgen.py's generator
    when wrk is not installed; with `pid`, the CPU that process used meanwhile."""
    before = cpu_seconds(pid) if pid else 0.0
    started = time.monotonic()
    if shutil.which("wrk") is not None:
        run = _wrk(port, name, seconds, connections, script)
    else:
        run = _python_load(port, name, seconds, connections)
    if pid:
        run.cpu_percent = (cpu_seconds(pid) - before) / (time.monotonic() - started) * 100
    return run


def upstream_peers(
    folder: Path, upstreams: tuple[int, int], nginx_proxy: int
) -> tuple[list[AbstractContextManager[subprocess.Popen[bytes]]], str]:
    """The upstreams (and with nginx, its split_clients proxy on `nginx_proxy`) to start, and
    the name of the direct configuration: nginx when installed, else loadgen.py's upstream."""
    peers: list[AbstractContextManager[subprocess.Popen[bytes]]]
    if shutil.which("nginx") is not None:
        conf = nginx_conf(folder, upstreams, nginx_proxy)
        peers = [process(["nginx", "-c", str(conf), "-g", "daemon off;"], nginx_proxy)]
        return peers, DIRECT_NGINX
    loadgen = str(ROOT / "loadtests" / "loadgen.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    peers = [process([sys.executable, loadgen, str(port)], port, env=env) for port in upstreams]
    return peers, DIRECT_PYTHON


async def sse_delays(proxy_url: str | None, upstream_url: str, events: int) -> dict[str, float]:
    """Median delay (ms) of SSE events from the upstream's write to the client's read."""
    async with aiohttp.ClientSession() as session:
        base = proxy_url or upstream_url
        delays: list[float] = []
        reads = 0
        async with session.get(f"{base}/sse/{events}", headers={"X-User-Id": "u"}) as resp:
            buffer = b""
            async for chunk in resp.content.iter_any():
                now = time.time_ns()
                reads += 1
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if event.startswith(b"data: ") and event[6:].isdigit():
                        delays.append((now - int(event[6:])) / 1e6)
        return {"median_ms": statistics.median(delays), "events": len(delays), "reads": reads}


async def sse_upstream(port: int) -> web.AppRunner:
    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(int(request.match_info["n"])):
            await response.write(f"data: {time.time_ns()}\n\n".encode())
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/sse/{n}", sse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def slow_clients(folder: Path, clients: int) -> dict[str, float]:
    """Grayscale's RSS while `clients` concurrent clients read 5 s event streams slowly."""
    upstream = free_port()
    port = free_port()
    conf = folder / "grayscale-slow.yaml"
    limit = f", max_connections: {clients * 2}"
    conf.write_text(grayscale_yaml(port, (upstream, upstream), route="slow", upstream_extra=limit))

    async def measure() -> dict[str, float]:
        runner = await sse_upstream(upstream)
        try:
            with serve(conf, port) as proc:
                baseline = peak = rss_mib(proc.pid)
                connector = aiohttp.TCPConnector(limit=0)
                async with aiohttp.ClientSession(connector=connector) as session:

                    async def reader(i: int) -> int:
                        url = f"http://127.0.0.1:{port}/sse/250"  # 250 events, 20 ms apart
                        async with session.get(url, headers={"X-User-Id": f"u{i}"}) as resp:
                            total = 0
                            while chunk := await resp.content.read(16):
                                total += len(chunk)
                                await asyncio.sleep(0.02)  # 0.8 KB/s: slower than the stream
                            return total

                    tasks = [asyncio.create_task(reader(i)) for i in range(clients)]
                    while not all(task.done() for task in tasks):
                        await asyncio.sleep(0.2)
                        peak = max(peak, rss_mib(proc.pid))
                    completed = sum(1 for t in tasks if not t.exception() and t.result() > 0)
        finally:
            await runner.cleanup()
        return {
            "clients": clients,
            "completed": completed,
            "baseline_mib": baseline,
            "peak_mib": peak,
        }

    return asyncio.run(measure())


def streaming(folder: Path) -> dict[str, float]:
    """Added delay per SSE event through Grayscale, and whether events were coalesced."""
    upstream = free_port()
    port = free_port()
    conf = folder / "grayscale-sse.yaml"
    conf.write_text(grayscale_yaml(port, (upstream, upstream), route="sse"))

    async def measure() -> dict[str, float]:
        runner = await sse_upstream(upstream)
        try:
            direct = await sse_delays(None, f"http://127.0.0.1:{upstream}", 200)
            with serve(conf, port):
                through = await sse_delays(f"http://127.0.0.1:{port}", "", 200)
        finally:
            await runner.cleanup()
        return {
            "direct_median_ms": direct["median_ms"],
            "grayscale_median_ms": through["median_ms"],
            "added_median_ms": through["median_ms"] - direct["median_ms"],
            "events": through["events"],
            "client_reads": through["reads"],
        }

    return asyncio.run(measure())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--memory-requests",
        type=int,
        default=200_000,
        help="requests for the memory-flatness check (0 skips it)",
    )
    parser.add_argument(
        "--slow-clients",
        type=int,
        default=1000,
        help="concurrent slow readers for the memory check (0 skips it)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, no memory checks")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout whose Grayscale runs alongside"
    )
    parser.add_argument(
        "--pure-baseline",
        action="store_true",
        help="run the baseline with GRAYSCALE_PURE=1: `--baseline . --pure-baseline` after "
        "`make compiled` measures the compiled build against its sources",
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.memory_requests, args.slow_clients = 2.0, 1, 0, 0
    have_wrk, have_nginx = shutil.which("wrk") is not None, shutil.which("nginx") is not None
    if not (have_wrk and have_nginx):
        print(
            "wrk or nginx not found (apt-get install wrk nginx-light): using loadgen.py's "
            "Python load generator and upstreams, without the nginx reference",
            file=sys.stderr,
        )

    folder = Path(tempfile.mkdtemp(prefix="grayscale-bench-"))
    script = folder / "post.lua"
    script.write_text(WRK_SCRIPT)
    upstream, upstream_b, nginx_proxy, minimal, on, off = (free_port() for _ in range(6))
    upstreams = (upstream, upstream_b)
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results: dict[str, list[Run]] = {}
    low_load: dict[str, Run] = {}
    memory: dict[str, float] = {}
    peers, direct_name = upstream_peers(folder, upstreams, nginx_proxy)

    def run_on(port: int, name: str, seconds: float, connections: int, pid: int | None) -> Run:
        return measure(port, name, seconds=seconds, connections=connections, script=script, pid=pid)

    with contextlib.ExitStack() as stack:
        for peer in peers:
            stack.enter_context(peer)
        minimal_proc = stack.enter_context(
            process(
                [
                    python,
                    str(ROOT / "loadtests" / "minimal_proxy.py"),
                    str(minimal),
                    f"http://127.0.0.1:{upstream}",
                    f"http://127.0.0.1:{upstream_b}",
                ],
                minimal,
                env=env,
            )
        )
        on_proc = stack.enter_context(serve(grayscale_conf(folder, upstreams, on, True), on))
        off_proc = stack.enter_context(serve(grayscale_conf(folder, upstreams, off, False), off))
        targets: dict[str, tuple[int, int | None]] = {direct_name: (upstream, None)}
        if direct_name == DIRECT_NGINX:
            targets[NGINX] = (nginx_proxy, None)
        targets |= {
            MINIMAL: (minimal, minimal_proc.pid),
            OFF: (off, off_proc.pid),
            ON: (on, on_proc.pid),
        }
        if args.baseline:
            for name, features in ((BASE_OFF, False), (BASE_ON, True)):
                port = free_port()
                conf = grayscale_conf(folder / "baseline", upstreams, port, features)
                proc = stack.enter_context(
                    serve(conf, port, args.baseline.resolve(), pure=args.pure_baseline)
                )
                targets[name] = (port, proc.pid)
        for name, (port, pid) in targets.items():  # warm up
            run_on(port, name, 1, args.connections, pid)
        for round_no in range(args.rounds):
            for name, (port, pid) in targets.items():
                run = run_on(port, name, args.duration, args.connections, pid)
                results.setdefault(name, []).append(run)
                print(
                    f"round {round_no + 1} {name:<28} {run.requests_per_second:>9.0f} req/s",
                    file=sys.stderr,
                )
        for name, (port, pid) in targets.items():
            low_load[name] = run_on(port, name, args.duration, 1, pid)
        if args.memory_requests:
            rate = statistics.median(r.requests_per_second for r in results[ON])
            seconds = max(5.0, args.memory_requests / rate)
            memory["before_mib"] = rss_mib(on_proc.pid)
            run_on(on, "memory", seconds / 2, args.connections, on_proc.pid)
            memory["half_mib"] = rss_mib(on_proc.pid)
            run_on(on, "memory", seconds / 2, args.connections, on_proc.pid)
            memory["after_mib"] = rss_mib(on_proc.pid)
            memory["requests"] = seconds * rate
    stream = streaming(folder)
    slow = slow_clients(folder, args.slow_clients) if args.slow_clients else {}

    def med(name: str, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in results[name]))

    def cpu_per_request(name: str) -> float | None:
        """Median CPU microseconds (user + system) the proxy spent per request."""
        costs = [
            r.cpu_percent / 100 / r.requests_per_second * 1e6
            for r in results[name]
            if r.cpu_percent is not None and r.requests_per_second
        ]
        return statistics.median(costs) if costs else None

    direct_rps = med(direct_name, "requests_per_second")
    nginx_rps = med(NGINX, "requests_per_second") if NGINX in results else None
    minimal_rps = med(MINIMAL, "requests_per_second")
    lines = [
        f"{'configuration':<28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU %':>7}{'us/req':>8}"
        f"{'x direct':>10}{'x nginx':>9}{'x minimal':>11}{'errors':>8}",
    ]
    for name, runs in results.items():
        rps = med(name, "requests_per_second")
        cpus = [r.cpu_percent for r in runs if r.cpu_percent is not None]
        cpu = f"{statistics.median(cpus):>7.0f}" if cpus else f"{'-':>7}"
        cost = cpu_per_request(name)
        cpu += f"{cost:>8.0f}" if cost else f"{'-':>8}"
        lines.append(
            f"{name:<28}{rps:>9.0f}{med(name, 'p50_ms'):>9.2f}{med(name, 'p99_ms'):>9.2f}{cpu}"
            f"{rps / direct_rps:>10.3f}"
            + (f"{rps / nginx_rps:>9.3f}" if nginx_rps else f"{'-':>9}")
            + f"{rps / minimal_rps:>11.2f}"
            f"{sum(r.errors for r in runs):>8}"
        )
    base = low_load[direct_name]
    lines += ["", "one connection (added latency over direct):"]
    for name, run in low_load.items():
        lines.append(
            f"  {name:<28} p50 {run.p50_ms:6.3f} ms (+{run.p50_ms - base.p50_ms:.3f})  "
            f"p99 {run.p99_ms:6.3f} ms (+{run.p99_ms - base.p99_ms:.3f})"
        )
    on_rps = med(ON, "requests_per_second")
    off_rps = med(OFF, "requests_per_second")
    lines += [
        "",
        f"features cost: {1 - on_rps / off_rps:.1%} of throughput, "
        f"{(cpu_per_request(ON) or 0) / (cpu_per_request(OFF) or 1) - 1:+.1%} CPU per request "
        "(metrics always on; analysis windows and a 10 % sampled access log on top)",
        f"streaming: {stream['events']} SSE events, median added delay "
        f"{stream['added_median_ms']:.3f} ms, {stream['client_reads']} client reads "
        f"({'not coalesced' if stream['client_reads'] >= stream['events'] else 'coalesced'})",
    ]
    for ours, theirs in ((OFF, BASE_OFF), (ON, BASE_ON)):
        if theirs in results:
            speed = med(ours, "requests_per_second") / med(theirs, "requests_per_second")
            cost = (cpu_per_request(ours) or 0) / (cpu_per_request(theirs) or 1) - 1
            lines.append(
                f"{ours} against the baseline: {speed:.3f}x throughput, {cost:+.1%} CPU per request"
            )
    if memory:
        growth = (memory["after_mib"] - memory["half_mib"]) / memory["half_mib"]
        lines.append(
            f"memory: RSS {memory['before_mib']:.0f} -> {memory['half_mib']:.0f} -> "
            f"{memory['after_mib']:.0f} MiB over {memory['requests']:,.0f} requests "
            f"(second half {growth:+.1%})"
        )
    if slow:
        lines.append(
            f"slow clients: {slow['completed']:.0f}/{slow['clients']:.0f} slow event-stream readers"
            f" completed; RSS {slow['baseline_mib']:.0f} MiB, peak {slow['peak_mib']:.0f} MiB"
        )
    print("\n".join(lines))
    out = ROOT / "loadtests" / "results"
    out.mkdir(exist_ok=True)
    path = out / time.strftime("%Y%m%d-%H%M%S.json")
    path.write_text(
        json.dumps(
            {
                "runs": {k: [asdict(r) for r in v] for k, v in results.items()},
                "low_load": {k: asdict(v) for k, v in low_load.items()},
                "streaming": stream,
                "memory": memory,
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            },
            indent=2,
        )
    )
    print(f"\nresults: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
