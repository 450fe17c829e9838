"""The issue-27 workload side by side: nginx, HAProxy and Grayscale pinned to one core, CPU per
request of every proxy; `--growth`: how the costs grow; `--suspects`: why figures differ.

    .venv/bin/python loadtests/bench_workload.py [--rounds 5] [--duration 4] [--quick]
    .venv/bin/python loadtests/bench_workload.py --growth [--duration 3]
    .venv/bin/python loadtests/bench_workload.py --suspects [--rounds 3] [--duration 3]

The workload: `wrk -t1 -c32` posts 300 bytes with an `X-User-Id` drawn at random from a fixed
set of users (10,000), keep-alive, to a proxy that splits the users 2 ways, sticky by that
header, to two upstream ports of one nginx answering `return 200` with a 215-byte JSON body.
Each proxy runs pinned to CPU 0 (`taskset`), wrk and the upstream nginx to CPU 1. The proxies:
nginx 1.22 `split_clients` (1 worker, upstream keep-alive), HAProxy `balance hdr(X-User-Id)`
(`nbthread 1`, `http-reuse always`), Grayscale with its features off (no analysis, no access
log) and Grayscale with analysis and a 10 % sampled access log. Every proxy's CPU (user +
system of all threads of the process and its children, from /proc) is divided by the requests
wrk completed; the table holds medians over rounds and ratios to nginx.

`--growth` loads Grayscale (features off) with 1/10/100/1,000 routes, 0/10/100 segments that do
not match, 32/256/2,000 connections (nginx and HAProxy too; answers counted by status and by the
variant that served them, and users seen on both variants) and 1 KB/100 KB/10 MB answers (files
served by the upstream nginx; nginx too), one short cell each: req/s, CPU us/request, peak RSS,
p99 and each row's ratio to the first of its group. `--suspects` measures Grayscale and nginx
under the differences between this workload and bench_proxy.py's. nginx and HAProxy are
installed with apt-get when missing (their rows are left out if that fails). Results go to
`loadtests/results/<time>-workload.json` as well.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from bench_proxy import (
    ROOT,
    cpu_seconds,
    free_port,
    grayscale_conf,
    grayscale_route,
    grayscale_yaml,
    nginx_answer,
    nginx_file,
    nginx_split,
    parse_wrk,
    process,
    rss_mib,
    serve,
    tree_cpu,
    tree_pids,
    wrk_command,
)

PATH = "/v1/models/bench:predict"
NGINX = "nginx split_clients"
HAPROXY = "haproxy balance hdr(X-User-Id)"
OFF = "grayscale, features off"
ON = "grayscale, analysis + 10% access log"
OFF_PURE = "grayscale pure, features off"  # GRAYSCALE_PURE=1 beside a compiled build
ON_PURE = "grayscale pure, analysis + 10% log"
SIZES = {"1 KB": 1024, "100 KB": 100 * 1024, "10 MB": 10 * 1024 * 1024}

LUA = """
math.randomseed(os.time())
wrk.method = "{method}"
{body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Tier"] = "free"
request = function()
  wrk.headers["X-User-Id"] = "user-" .. math.random(1, {users})
  return wrk.format(nil, "{path}")
end
"""
# Counting every answer by status and variant (and users seen on both variants) makes wrk read
# each answer's headers, so it is used where that matters: the connections rows.
LUA_COUNT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; variants = {}; owner = {}; flips = 0 end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local variant = headers["X-Variant"] or headers["x-variant"]
  if variant then
    variants[variant] = (variants[variant] or 0) + 1
    local user = headers["X-User"] or headers["x-user"]
    if user then
      local seen = owner[user]
      if seen == nil then owner[user] = variant elseif seen ~= variant then flips = flips + 1 end
    end
  end
end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for k, n in pairs(thread:get("statuses")) do io.write("status ", k, " ", n, "\\n") end
    for k, n in pairs(thread:get("variants")) do io.write("variant ", k, " ", n, "\\n") end
    io.write("flips ", thread:get("flips"), "\\n")
  end
end
"""


@dataclass(frozen=True)
class Workload:
    """What the load looks like and where everything runs."""

    label: str
    pin: bool = True  # proxy on CPU 0, wrk and upstreams on CPU 1
    users: int = 10_000  # X-User-Id drawn from user-1 .. user-N
    share: float = 0.5  # of users sent to the candidate
    method: str = "POST"  # POST: 300 bytes; GET: no body
    upstream: str = "nginx"  # or "python": loadgen.py's raw-protocol upstream
    connections: int = 32


ISSUE = Workload("issue 27: pinned, POST 300 B, 10k users, 50 % split, nginx upstreams")


@dataclass
class Cell:
    """One wrk run against one proxy."""

    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_us: float | None = None  # the proxy's CPU per request
    main_thread_us: float | None = None  # the main thread's alone
    peak_rss_mib: float | None = None
    mb_per_second: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    variants: dict[str, int] = field(default_factory=dict)
    flips: int = 0  # answers from the other variant than a user's first


@dataclass
class Target:
    name: str
    port: int
    pid: int
    python: bool  # a Grayscale process: its main thread is measured too


def prefixes(workload: Workload) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The command prefixes pinning the proxy and the load (wrk, upstreams)."""
    if workload.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ("taskset", "-c", "0"), ("taskset", "-c", "1")
    return (), ()


def lua(folder: Path, workload: Workload, path: str = PATH, count: bool = False) -> Path:
    body = 'wrk.body = string.rep("a", 300)' if workload.method == "POST" else ""
    text = LUA.format(method=workload.method, body=body, users=workload.users, path=path)
    script = folder / f"load-{abs(hash((workload, path, count)))}.lua"
    script.write_text(text + (LUA_COUNT if count else ""))
    return script


def ensure_installed() -> set[str]:
    """The reference proxies available, installing the missing ones with apt-get."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    packages = {"nginx": "nginx-light", "haproxy": "haproxy"}
    missing = [name for name in packages if shutil.which(name) is None]
    if missing:
        print(f"not installed: {', '.join(missing)}; trying apt-get install", file=sys.stderr)
        subprocess.run(
            ["apt-get", "install", "-y", *(packages[name] for name in missing)], check=False
        )
    found = {name for name in packages if shutil.which(name) is not None}
    for name in sorted(set(packages) - found):
        print(f"{name} could not be installed: its rows are left out", file=sys.stderr)
    if "nginx" not in found:
        raise SystemExit("the upstreams are nginx: install nginx-light")
    return found


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted != resource.RLIM_INFINITY and wanted < 8192:
        print(f"open files limited to {wanted}: 2,000 connections may fail", file=sys.stderr)


def upstream_nginx(folder: Path, ports: tuple[int, int]) -> Path:
    """The upstreams: two ports of one nginx answering `return 200` (and files under /files/),
    each saying which variant it is and echoing the user (for counting in wrk)."""
    files = folder / "files"
    files.mkdir(exist_ok=True)
    for path in (folder, files):  # nginx's workers run as nobody
        path.chmod(0o755)
    for size in SIZES.values():
        (files / str(size)).write_bytes(b"x" * size)
        (files / str(size)).chmod(0o644)
    servers = ""
    for variant, port in zip("ab", ports, strict=True):
        extra = (
            f"\n    add_header X-Variant {variant} always;"
            "\n    add_header X-User $http_x_user_id always;"
            f"\n    location /files/ {{ root {folder}; }}"
        )
        servers += nginx_answer(port, extra)
    return nginx_file(folder, "upstreams", "  default_type application/json;\n" + servers)


def haproxy_conf(folder: Path, upstreams: tuple[int, int], port: int) -> Path:
    conf = folder / "haproxy.cfg"
    conf.write_text(f"""
global
  maxconn 8000
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend proxy
  bind 127.0.0.1:{port}
  default_backend variants
backend variants
  balance hdr(X-User-Id)
  http-reuse always
  server a 127.0.0.1:{upstreams[0]}
  server b 127.0.0.1:{upstreams[1]}
""")
    return conf


@contextlib.contextmanager
def upstreams_running(folder: Path, workload: Workload) -> Iterator[tuple[int, int]]:
    """The two upstream ports, served by nginx (or loadgen.py) pinned with the load."""
    _, load_pin = prefixes(workload)
    ports = (free_port(), free_port())
    with contextlib.ExitStack() as stack:
        if workload.upstream == "python":
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            loadgen = str(ROOT / "loadtests" / "loadgen.py")
            for port in ports:
                stack.enter_context(
                    process([*load_pin, sys.executable, loadgen, str(port)], port, env=env)
                )
        else:
            conf = upstream_nginx(folder, ports)
            stack.enter_context(
                process([*load_pin, "nginx", "-c", str(conf), "-g", "daemon off;"], ports[1])
            )
        yield ports


def start_proxy(
    stack: contextlib.ExitStack,
    name: str,
    folder: Path,
    *,
    upstreams: tuple[int, int],
    workload: Workload,
    config: Path | None = None,
    port: int | None = None,
) -> Target:
    """Start one proxy pinned to its core; `config` (listening on `port`) replaces Grayscale's
    usual one."""
    pin, _ = prefixes(workload)
    port = port or free_port()
    if name == NGINX:
        split = nginx_split(upstreams, port, f"{workload.share:.0%}")
        conf = nginx_file(folder, f"proxy-{port}", split)
        command = [*pin, "nginx", "-c", str(conf), "-g", "daemon off;"]
        proc = stack.enter_context(process(command, port))
    elif name == HAPROXY:
        command = [*pin, "haproxy", "-db", "-f", str(haproxy_conf(folder, upstreams, port))]
        proc = stack.enter_context(process(command, port))
    else:
        if config is None:
            config = grayscale_conf(
                folder / f"g{port}", upstreams, port, name in (ON, ON_PURE), workload.share
            )
        pure = name in (OFF_PURE, ON_PURE)
        proc = stack.enter_context(serve(config, port, prefix=pin, pure=pure))
    return Target(name, port, proc.pid, python=name not in (NGINX, HAPROXY))


def tree_rss(pid: int) -> float:
    return sum(rss_mib(each) for each in tree_pids(pid))


def run_cell(
    target: Target,
    script: Path,
    workload: Workload,
    seconds: float,
    *,
    connections: int | None = None,
    timeout: float = 2.0,
) -> Cell:
    """Load `target` with wrk (pinned with the load) and measure the proxy meanwhile."""
    _, load_pin = prefixes(workload)
    command = [
        *load_pin,
        *wrk_command(target.port, seconds, connections or workload.connections, script, timeout),
    ]
    before, main_before = tree_cpu(target.pid), cpu_seconds(target.pid, target.pid)
    peak = tree_rss(target.pid)
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as wrk:
        while wrk.poll() is None:
            time.sleep(0.1)
            peak = max(peak, tree_rss(target.pid))
        out = wrk.stdout.read() if wrk.stdout else ""
    used, main_used = (
        tree_cpu(target.pid) - before,
        cpu_seconds(target.pid, target.pid) - main_before,
    )
    run = parse_wrk(out, target.name)
    done = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    cell = Cell(target.name, run.requests_per_second, run.p50_ms, run.p99_ms, run.errors, done)
    if done:
        cell.cpu_us = used / done * 1e6
        cell.main_thread_us = main_used / done * 1e6 if target.python else None
    cell.peak_rss_mib = peak
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", out)
    if transfer:
        scale = {"B": 1e-6, "KB": 1024 / 1e6, "MB": 1024**2 / 1e6, "GB": 1024**3 / 1e6}
        cell.mb_per_second = float(transfer[1]) * scale[transfer[2]]
    for key, number in re.findall(r"^status (\d+) (\d+)$", out, re.MULTILINE):
        cell.statuses[key] = int(number)
    for key, number in re.findall(r"^variant (\S+) (\d+)$", out, re.MULTILINE):
        cell.variants[key] = int(number)
    flips = re.search(r"^flips (\d+)$", out, re.MULTILINE)
    cell.flips = int(flips[1]) if flips else 0
    return cell


def med(cells: list[Cell], attribute: str) -> float:
    values = [getattr(c, attribute) for c in cells if getattr(c, attribute) is not None]
    return float(statistics.median(values)) if values else math.nan


def side_by_side(
    folder: Path, workload: Workload, names: list[str], rounds: int, seconds: float
) -> dict[str, list[Cell]]:
    """Each proxy in `names` loaded in turn, round after round (after a 1 s warm-up each)."""
    results: dict[str, list[Cell]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        upstreams = stack.enter_context(upstreams_running(folder, workload))
        targets = [
            start_proxy(stack, name, folder, upstreams=upstreams, workload=workload)
            for name in names
        ]
        script = lua(folder, workload)
        for target in targets:
            run_cell(target, script, workload, 1)
        for round_no in range(rounds):
            for target in targets:
                cell = run_cell(target, script, workload, seconds)
                results[target.name].append(cell)
                print(
                    f"  round {round_no + 1} {target.name:<38}{cell.requests_per_second:>9.0f} "
                    f"req/s {cell.cpu_us or 0:>6.1f} us/req",
                    file=sys.stderr,
                )
    return results


def comparison_table(results: dict[str, list[Cell]]) -> list[str]:
    nginx_cpu = med(results[NGINX], "cpu_us") if NGINX in results else math.nan
    nginx_rps = med(results[NGINX], "requests_per_second") if NGINX in results else math.nan
    lines = [
        f"{'configuration':<38}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'us/req':>8}"
        f"{'main thr':>9}{'x nginx CPU':>12}{'x nginx req/s':>14}{'errors':>8}  us/req by round"
    ]
    for name, cells in results.items():
        rps, cpu, main = (
            med(cells, a) for a in ("requests_per_second", "cpu_us", "main_thread_us")
        )
        rounds = " ".join(f"{c.cpu_us:.0f}" for c in cells if c.cpu_us is not None)
        lines.append(
            f"{name:<38}{rps:>8.0f}{med(cells, 'p50_ms'):>8.2f}{med(cells, 'p99_ms'):>8.2f}"
            f"{cpu:>8.1f}{'-' if math.isnan(main) else f'{main:.1f}':>9}"
            f"{cpu / nginx_cpu:>12.2f}{rps / nginx_rps:>14.3f}"
            f"{sum(c.errors for c in cells):>8}  {rounds}"
        )
    return lines


def compiled() -> bool:
    """Whether the checkout's modules are compiled (`make compiled`)."""
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "compiled" in out


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- growth ---------------------------------------------------------------------------------


def routes_yaml(port: int, upstreams: tuple[int, int], routes: int, segments: int) -> str:
    """`routes` routes of distinct prefixes (`/r0000/`...), the last one with `segments`
    segments that never match (X-Tier is `free`), all at a 50 % ramp."""
    text = ""
    for index in range(routes):
        extra = "    ramp: {base: 0.5}\n"
        if segments and index == routes - 1:
            extra += "    segments:\n" + "".join(
                f'      - {{name: s{i}, when: {{"header:X-Tier": [tier-{i}]}}, '
                "variant: candidate}\n"
                for i in range(segments)
            )
        text += grayscale_route(
            f"r{index:04d}", upstreams, prefix=f"/r{index:04d}/", route_extra=extra
        )
    return grayscale_yaml(port, upstreams, routes=text)


@dataclass
class Row:
    group: str
    label: str
    value: float  # the quantity that grows (routes, segments, connections, bytes)
    cell: Cell


def growth(folder: Path, found: set[str], rounds: int, seconds: float) -> list[Row]:
    """Each group's rows: `rounds` short wrk runs each, the run of median CPU per request."""
    rows: list[Row] = []
    workload = ISSUE

    def one(group: str, label: str, value: float, load: Callable[[float], Cell]) -> None:
        cells = [load(duration) for duration in [1] + [seconds] * rounds][1:]  # warm-up first
        cell = sorted(cells, key=lambda c: c.cpu_us or 0)[len(cells) // 2]  # the median's run
        rows.append(Row(group, label, value, cell))
        print(
            f"  {group:<12}{label:<40}{cell.requests_per_second:>9.0f} req/s "
            f"{cell.cpu_us or 0:>7.1f} us/req  {cell.statuses or cell.errors}",
            file=sys.stderr,
        )

    with upstreams_running(folder, workload) as upstreams:
        for group, values in (("routes", (1, 10, 100, 1000)), ("segments", (0, 10, 100))):
            for value in values:
                routes, segments = (value, 0) if group == "routes" else (1, value)
                port = free_port()
                config = folder / f"growth-{group}-{value}.yaml"
                config.write_text(routes_yaml(port, upstreams, routes, segments))
                path = f"/r{routes - 1:04d}{PATH}"
                with contextlib.ExitStack() as stack:
                    target = start_proxy(
                        stack,
                        OFF,
                        folder,
                        upstreams=upstreams,
                        workload=workload,
                        config=config,
                        port=port,
                    )
                    load = partial(run_cell, target, lua(folder, workload, path), workload)
                    one(group, f"{value:,} {group}", value, load)
        names = [name for name, tool in ((NGINX, "nginx"), (HAPROXY, "haproxy")) if tool in found]
        with contextlib.ExitStack() as stack:
            targets = [
                start_proxy(stack, n, folder, upstreams=upstreams, workload=workload)
                for n in [*names, OFF]
            ]
            counting = lua(folder, workload, count=True)
            for connections in (32, 256, 2000):
                for target in targets:
                    label = f"{connections:,} connections, {target.name}"
                    load = partial(
                        run_cell, target, counting, workload, connections=connections, timeout=10
                    )
                    one("connections", label, connections, load)
            get = replace(workload, method="GET")
            for size_name, size in SIZES.items():
                script = lua(folder, get, f"/files/{size}")
                for target in targets:
                    if target.name in (OFF, NGINX):
                        label = f"{size_name} answers, {target.name}"
                        load = partial(run_cell, target, script, workload, timeout=30)
                        one("answers", label, size, load)
    return rows


def growth_table(rows: list[Row]) -> list[str]:
    lines = [
        f"{'group':<12}{'row':<52}{'req/s':>8}{'MB/s':>8}{'p99 ms':>9}{'us/req':>8}"
        f"{'RSS MiB':>8}{'growth CPU':>11}{'growth RSS':>11}  answers"
    ]
    firsts: dict[tuple[str, str], Row] = {}
    for row in rows:
        proxy = row.cell.name
        first = firsts.setdefault((row.group, proxy), row)
        cell, base = row.cell, first.cell
        answers = (
            " ".join(f"{k}:{n}" for k, n in sorted(cell.statuses.items()))
            if cell.statuses
            else f"errors:{cell.errors}"
        )
        if cell.variants:
            answers += " | " + " ".join(f"{k}:{n}" for k, n in sorted(cell.variants.items()))
            answers += f" | users on both: {cell.flips}"
        lines.append(
            f"{row.group:<12}{row.label:<52}{cell.requests_per_second:>8.0f}"
            f"{cell.mb_per_second or 0:>8.1f}{cell.p99_ms:>9.2f}{cell.cpu_us or 0:>8.1f}"
            f"{cell.peak_rss_mib or 0:>8.0f}{(cell.cpu_us or 0) / (base.cpu_us or 1):>10.2f}x"
            f"{(cell.peak_rss_mib or 0) / (base.peak_rss_mib or 1):>10.2f}x  {answers}"
        )
    lines.append("")
    lines += growth_statements(rows, firsts)
    return lines


def growth_statements(rows: list[Row], firsts: dict[tuple[str, str], Row]) -> list[str]:
    """Per group and proxy: CPU per request from the first row to the last, and the exponent
    of its growth against the quantity (0: flat, 1: linear)."""
    lines = []
    for (group, proxy), first in firsts.items():
        last = [r for r in rows if r.group == group and r.cell.name == proxy][-1]
        if last is first or not first.cell.cpu_us or not last.cell.cpu_us:
            continue
        ratio = last.cell.cpu_us / first.cell.cpu_us
        step = (last.cell.cpu_us - first.cell.cpu_us) / (last.value - first.value)
        unit = {"answers": "KB", "routes": "route", "segments": "segment"}.get(group, "connection")
        if group == "answers":
            step *= 1024  # per KB
        verdict = "flat" if ratio < 1.25 else "grows"
        lines.append(
            f"{group} ({proxy}): CPU/request {first.cell.cpu_us:.1f} -> {last.cell.cpu_us:.1f} us, "
            f"{ratio:.2f}x from {first.value:,.0f} to {last.value:,.0f}: {verdict}, "
            f"{step:+.3f} us per added {unit}"
        )
    return lines


# -- suspects ---------------------------------------------------------------------------------


SUSPECTS = [
    ISSUE,
    replace(ISSUE, label="not pinned (all on 2 cores, as bench_proxy.py)", pin=False),
    replace(ISSUE, label="GET, no body", method="GET"),
    replace(ISSUE, label="1,000,000 users, 10 % split (bench_proxy's)", users=1_000_000, share=0.1),
    replace(ISSUE, label="Python upstream (loadgen.py)", upstream="python"),
    Workload(
        "bench_proxy.py's workload: not pinned, 1M users, 10 %",
        pin=False,
        users=1_000_000,
        share=0.1,
    ),
]


def python_build() -> list[str]:
    """The interpreter's build, and a pure-Python timing against Debian's python3.11."""
    import sysconfig  # noqa: PLC0415

    flags = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    lines = [
        f"interpreter: {sys.version.split()[0]} {sys.executable}, "
        f"{'PGO' if '--enable-optimizations' in flags else 'no PGO'}, "
        f"{'LTO' if '--with-lto' in flags else 'no LTO'}, "
        f"{'debug build' if sysconfig.get_config_var('Py_DEBUG') else 'release build'}, "
        f"CFLAGS {sysconfig.get_config_var('OPT')}"
    ]
    snippet = (
        "h={b'host':b'x',b'content-length':b'300'}\n"
        "for i in range(20000):\n"
        " d={k.lower():v for k,v in h.items()}; s=b'HTTP/1.1 200 OK\\r\\n'.split(b' ',2)\n"
        " t=f'{i}:{s[1]}'; l=[x for x in range(10) if x&1]"
    )
    timings = {}
    for python in (sys.executable, "/usr/bin/python3.11"):
        if not Path(python).exists():
            continue
        out = subprocess.run(
            [python, "-m", "timeit", "-n", "5", "-r", "5", snippet],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        found = re.search(r"([\d.]+) (msec|sec|usec) per loop", out)
        if found:
            scale = {"usec": 1e-3, "msec": 1.0, "sec": 1e3}[found[2]]
            timings[python] = float(found[1]) * scale
    if len(timings) == 2:
        ours, debian = timings.values()
        lines.append(
            f"pure-Python loop: this interpreter {ours:.1f} ms, Debian's python3.11 "
            f"{debian:.1f} ms: {ours / debian:.2f}x"
        )
    return lines


def suspects(folder: Path, found: set[str], rounds: int, seconds: float) -> list[str]:
    names = [NGINX, OFF] if "nginx" in found else [OFF]
    lines = [
        f"{'workload':<58}{'nginx us':>9}{'gray us':>9}{'main thr':>9}{'x nginx':>8}"
        f"{'nginx r/s':>10}{'gray r/s':>9}"
    ]
    for workload in SUSPECTS:
        print(f"{workload.label} (load average {load_average()})", file=sys.stderr)
        results = side_by_side(folder, workload, names, rounds, seconds)
        nginx = med(results[NGINX], "cpu_us") if NGINX in results else math.nan
        ours, main = med(results[OFF], "cpu_us"), med(results[OFF], "main_thread_us")
        lines.append(
            f"{workload.label:<58}{nginx:>9.1f}{ours:>9.1f}{main:>9.1f}"
            f"{ours / nginx:>8.2f}"
            f"{med(results.get(NGINX, []), 'requests_per_second'):>10.0f}"
            f"{med(results[OFF], 'requests_per_second'):>9.0f}"
        )
    return [*lines, "", *python_build()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument(
        "--rounds", type=int, help="5; with --suspects 3; with --growth 1 (runs per cell)"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--growth", action="store_true", help="the growth table (about 3 minutes)")
    mode.add_argument(
        "--suspects", action="store_true", help="what makes bench_proxy.py's figures differ"
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 2.0, 1
    found = ensure_installed()
    raise_open_files()
    folder = Path(tempfile.mkdtemp(prefix="grayscale-workload-"))
    began = load_average()
    build_compiled = compiled()
    report: dict[str, object] = {"args": vars(args), "compiled": build_compiled}
    if args.growth:
        rows = growth(folder, found, args.rounds or 1, args.duration)
        lines = growth_table(rows)
        report["growth"] = [asdict(row) for row in rows]
    elif args.suspects:
        lines = suspects(folder, found, args.rounds or 3, args.duration)
    else:
        names = [n for n, tool in ((NGINX, "nginx"), (HAPROXY, "haproxy")) if tool in found]
        names += [OFF, ON, OFF_PURE, ON_PURE] if build_compiled else [OFF, ON]
        results = side_by_side(folder, ISSUE, names, args.rounds or 5, args.duration)
        lines = [f"{ISSUE.label}; wrk -t1 -c{ISSUE.connections}, proxies on CPU 0", ""]
        lines += comparison_table(results)
        report["runs"] = {k: [asdict(c) for c in v] for k, v in results.items()}
    build = "compiled (make compiled)" if build_compiled else "pure Python (make pure)"
    lines.append(f"\nGrayscale's build: {build}")
    lines.append(f"load average {began} before, {load_average()} after")
    print("\n".join(lines))
    report["table"] = lines
    out = ROOT / "loadtests" / "results"
    out.mkdir(exist_ok=True)
    path = out / time.strftime("%Y%m%d-%H%M%S-workload.json")
    path.write_text(json.dumps(report, indent=2))
    print(f"results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
