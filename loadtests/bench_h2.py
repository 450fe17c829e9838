"""HTTP/2 (h2c) and gRPC through Grayscale, against direct and nginx, side by side in one run.

    .venv/bin/python loadtests/bench_h2.py [--duration 4] [--rounds 3] [--quick]

h2c: `h2load -c32 -m10 -D SECONDS` (prior knowledge) against nginx answering `return 200` on an
`http2` listener (direct), nginx 1.22 as an h2c proxy to a plain HTTP/1.1 listener with
keep-alive, and Grayscale (`server.http2`) with its upstream over HTTP/1.1 and over h2c
(`http2: true`). gRPC unary: a grpcio asyncio client (a few channels, each its own connection,
many calls in flight) against a grpcio server with a generic handler (bytes, no protoc), direct,
through nginx `grpc_pass` and through Grayscale (upstream `http2: true`). Each configuration runs
in turn, round after round; the table shows medians over rounds, the proxy process's CPU per
request, and ratios. Results go to `loadtests/results/<time>-h2.json` as well. Needs `nginx`
and `h2load` (Debian: nginx-light, nghttp2-client); without h2load the h2c rows are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc  # type: ignore[import-untyped]
from bench_proxy import ANSWER, ROOT, cpu_seconds, free_port, process, serve

PAYLOAD = b"p" * 100  # a gRPC request message
REPLY = b"r" * 200  # and its answer
METHOD = "/bench.Bench/Unary"


def nginx_conf(folder: Path, ports: dict[str, int]) -> Path:
    """nginx: the h2c and HTTP/1.1 fixed-answer upstreams, the h2c proxy, the gRPC proxy."""
    conf = folder / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  http2_max_concurrent_streams 256;
  upstream plain {{ server 127.0.0.1:{ports["h1_upstream"]}; keepalive 64; }}
  upstream grpc_upstream {{ server 127.0.0.1:{ports["grpc_upstream"]}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{ports["h2_upstream"]} http2;
    location / {{ return 200 '{ANSWER}'; }}
  }}
  server {{
    listen 127.0.0.1:{ports["h1_upstream"]};
    location / {{ return 200 '{ANSWER}'; }}
  }}
  server {{
    listen 127.0.0.1:{ports["nginx_h2"]} http2;
    location / {{
      proxy_pass http://plain;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{ports["nginx_grpc"]} http2;
    location / {{ grpc_pass grpc://grpc_upstream; }}
  }}
}}
""")
    return conf


def grayscale_conf(folder: Path, ports: dict[str, int]) -> Path:
    """Grayscale with h2c on its port; one route per upstream kind, features off."""

    def route(name: str, prefix: str, port: int, http2: bool) -> str:
        url = f'url: "http://127.0.0.1:{port}"' + (", http2: true" if http2 else "")
        return (
            f"  - name: {name}\n    match: {{path_prefix: {prefix}}}\n"
            f"    stable: {{{url}}}\n    candidate: {{{url}}}\n"
            '    cohort: {keys: ["header:X-User-Id"], salt: "s"}\n    ramp: {base: 0.1}\n'
        )

    conf = folder / "grayscale-h2.yaml"
    conf.write_text(
        f'server: {{listen: "127.0.0.1:{ports["grayscale"]}", '
        f'admin_listen: "127.0.0.1:{free_port()}", http2: true, http2_max_streams: 256}}\n'
        "state: {backend: memory}\nroutes:\n"
        + route("h1", "/h1/", ports["h1_upstream"], http2=False)
        + route("h2", "/h2/", ports["h2_upstream"], http2=True)
        + route("grpc", "/bench.Bench/", ports["grpc_upstream"], http2=True)
    )
    return conf


@dataclass
class Run:
    """One load run against one configuration."""

    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_seconds: float | None  # the proxy's CPU (user + system) over the run
    requests: int


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def h2load_run(url: str, name: str, seconds: float, folder: Path) -> Run:
    """`h2load -c32 -m10 -D seconds` against `url`; latencies from its per-request log."""
    log = folder / "h2load.log"
    log.unlink(missing_ok=True)  # (h2load appends to it)
    out = subprocess.run(
        [
            *("h2load", "-c32", "-m10", "-D", str(max(1, round(seconds)))),
            *("-H", "x-user-id: u1", "--log-file", str(log), url),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 60,
    ).stdout
    found = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    took = re.search(r"finished in ([\d.]+)s", out)
    if found is None or took is None:
        raise SystemExit(f"cannot read h2load's output for {name}:\n{out}")
    done, succeeded = int(found[1]), int(found[2])
    durations = []
    for line in log.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] == "200":
            durations.append(int(fields[2]) / 1000)
    return Run(
        name,
        succeeded / float(took[1]),
        _quantile(durations, 0.5),
        _quantile(durations, 0.99),
        done - succeeded,
        None,
        succeeded,
    )


async def _grpc_load(target: str, seconds: float, channels: int, in_flight: int) -> Run:
    options = [("grpc.use_local_subchannel_pool", 1)]  # (one connection per channel)
    opened = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def caller(index: int) -> None:
        nonlocal errors
        call = opened[index % channels].unary_unary(METHOD)
        metadata = (("x-user-id", f"u{index}"),)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                await call(PAYLOAD, metadata=metadata, timeout=10)
            except grpc.RpcError:
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    try:
        for channel in opened:
            await asyncio.wait_for(channel.channel_ready(), 10)
        began = time.monotonic()
        await asyncio.gather(*(caller(i) for i in range(in_flight)))
        took = time.monotonic() - began
    finally:
        for channel in opened:
            await channel.close()
    return Run(
        "",
        len(latencies) / took,
        _quantile(latencies, 0.5),
        _quantile(latencies, 0.99),
        errors,
        None,
        len(latencies),
    )


def grpc_run(target: str, name: str, seconds: float, channels: int, in_flight: int) -> Run:
    run = asyncio.run(_grpc_load(target, seconds, channels, in_flight))
    run.name = name
    return run


def grpc_server(port: int) -> None:
    """A grpcio asyncio server answering `METHOD` with `REPLY` (bytes: no protoc)."""

    async def unary(request: bytes, context: object) -> bytes:
        return REPLY

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler(
            "bench.Bench", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def nginx_workers_cpu(master: int) -> float:
    """CPU seconds of nginx's workers (the master's children)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return sum(cpu_seconds(int(pid)) for pid in children)


DIRECT_H2 = "h2c direct (nginx return 200)"
NGINX_H2 = "h2c nginx, upstream HTTP/1.1"
GRAY_H1 = "h2c grayscale, upstream HTTP/1.1"
GRAY_H2 = "h2c grayscale, upstream h2c"
DIRECT_GRPC = "gRPC direct (grpcio server)"
NGINX_GRPC = "gRPC nginx grpc_pass"
GRAY_GRPC = "gRPC grayscale, upstream h2c"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--channels", type=int, default=4, help="gRPC channels (connections)")
    parser.add_argument("--in-flight", type=int, default=64, help="gRPC calls in flight")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    parser.add_argument("--grpc-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grpc_server:
        grpc_server(args.grpc_server)
        return
    if args.quick:
        args.duration, args.rounds = 2.0, 1
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is not installed (Debian: apt-get install nginx-light)")
    have_h2load = shutil.which("h2load") is not None
    if not have_h2load:
        print("h2load not found (apt-get install nghttp2-client): no h2c rows", file=sys.stderr)

    folder = Path(tempfile.mkdtemp(prefix="grayscale-bench-h2-"))
    names = ("h1_upstream", "h2_upstream", "grpc_upstream", "nginx_h2", "nginx_grpc", "grayscale")
    ports = {name: free_port() for name in names}
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'loadtests'}"}
    results: dict[str, list[Run]] = {}
    with contextlib.ExitStack() as stack:
        nginx = stack.enter_context(
            process(
                ["nginx", "-c", str(nginx_conf(folder, ports)), "-g", "daemon off;"],
                ports["nginx_grpc"],
            )
        )
        stack.enter_context(
            process(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--grpc-server",
                    str(ports["grpc_upstream"]),
                ],
                ports["grpc_upstream"],
                env=env,
            )
        )
        gray = stack.enter_context(serve(grayscale_conf(folder, ports), ports["grayscale"]))
        base = "http://127.0.0.1:"
        targets: dict[str, tuple[str, str, int | None]] = {}
        if have_h2load:
            targets |= {
                DIRECT_H2: ("h2", f"{base}{ports['h2_upstream']}/h2/predict", None),
                NGINX_H2: ("h2", f"{base}{ports['nginx_h2']}/h1/predict", -nginx.pid),
                GRAY_H1: ("h2", f"{base}{ports['grayscale']}/h1/predict", gray.pid),
                GRAY_H2: ("h2", f"{base}{ports['grayscale']}/h2/predict", gray.pid),
            }
        targets |= {
            DIRECT_GRPC: ("grpc", f"127.0.0.1:{ports['grpc_upstream']}", None),
            NGINX_GRPC: ("grpc", f"127.0.0.1:{ports['nginx_grpc']}", -nginx.pid),
            GRAY_GRPC: ("grpc", f"127.0.0.1:{ports['grayscale']}", gray.pid),
        }

        def run_on(name: str, seconds: float) -> Run:
            kind, target, pid = targets[name]
            used = (lambda: nginx_workers_cpu(-pid)) if pid and pid < 0 else None
            if pid and pid > 0:
                used = lambda: cpu_seconds(pid)  # noqa: E731
            before = used() if used else 0.0
            if kind == "h2":
                run = h2load_run(target, name, seconds, folder)
            else:
                run = grpc_run(target, name, seconds, args.channels, args.in_flight)
            if used:
                run.cpu_seconds = used() - before
            return run

        for name in targets:  # warm up
            run_on(name, 1)
        for round_no in range(args.rounds):
            for name in targets:
                run = run_on(name, args.duration)
                results.setdefault(name, []).append(run)
                print(
                    f"round {round_no + 1} {name:<34} {run.requests_per_second:>9.0f} req/s",
                    file=sys.stderr,
                )

    def med(name: str, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in results[name]))

    def cpu_per_request(name: str) -> float | None:
        costs = [r.cpu_seconds / r.requests * 1e6 for r in results[name] if r.cpu_seconds]
        return statistics.median(costs) if costs else None

    lines = [
        f"{'configuration':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'us/req':>8}"
        f"{'x direct':>10}{'x nginx':>9}{'errors':>8}"
    ]
    ratios: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        direct, reference = (
            (DIRECT_H2, NGINX_H2)
            if name.startswith("h2c")
            else (
                DIRECT_GRPC,
                NGINX_GRPC,
            )
        )
        rps = med(name, "requests_per_second")
        cost = cpu_per_request(name)
        ratios[name] = {
            "x_direct": rps / med(direct, "requests_per_second"),
            "x_nginx": rps / med(reference, "requests_per_second"),
        }
        lines.append(
            f"{name:<34}{rps:>9.0f}{med(name, 'p50_ms'):>9.2f}{med(name, 'p99_ms'):>9.2f}"
            + (f"{cost:>8.0f}" if cost else f"{'-':>8}")
            + f"{ratios[name]['x_direct']:>10.3f}{ratios[name]['x_nginx']:>9.3f}"
            + f"{sum(r.errors for r in runs):>8}"
        )
    print("\n".join(lines))
    out = ROOT / "loadtests" / "results"
    out.mkdir(exist_ok=True)
    path = out / time.strftime("%Y%m%d-%H%M%S-h2.json")
    path.write_text(
        json.dumps(
            {
                "runs": {k: [asdict(r) for r in v] for k, v in results.items()},
                "cpu_us_per_request": {k: cpu_per_request(k) for k in results},
                "ratios": ratios,
                "args": vars(args),
            },
            indent=2,
        )
    )
    print(f"\nresults: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
