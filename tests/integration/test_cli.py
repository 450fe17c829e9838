"""The `grayscale` command line, run as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.configs import demo_config, route_yaml
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.proxies import serve_subprocess
from tests.support.upstream import url_of
from tests.support.waiting import eventually_blocking


def grayscale(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


async def test_help_for_every_command():
    commands = ("serve", "check", "simulate", "demo", "selftest", "explain")
    env = dict(os.environ)
    results = await asyncio.gather(*(run_cli(command, "--help", env=env) for command in commands))
    for command, (code, out, _) in zip(commands, results, strict=True):
        assert code == 0
        assert f"usage: grayscale {command}" in out


def test_selftest_prints_the_figures_of_the_example_configs_analysed_route():
    result = grayscale(
        "selftest", "--config", "config/example.yaml", "--runs", "3", "--hours", "0.5"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("route sentiment: sequential analysis every 10s")
    assert lines[2].startswith("  equal candidates (A/A): 0 of 3 rolled back within 30.0m")
    assert "+5 points of errors: rolled back in median" in lines[3]
    wrong = grayscale("selftest", "--config", "config/example.yaml", "--route", "chat")
    assert wrong.returncode == 2 and "no route 'chat' with analysis" in wrong.stderr


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # (gone meanwhile)
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_selftest_workers_end_when_it_is_killed():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy",
            "selftest",
            "--config",
            "config/example.yaml",
            "--runs",
            "5000",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        workers: set[int] = set()

        def started() -> bool:
            nonlocal workers
            workers = {pid for pid in children(process.pid) if "spawn_main" in cmdline(pid)}
            return len(workers) >= 2

        assert eventually_blocking(started, 20, every=0.1), "no worker processes started"
        process.kill()  # (no chance to clean up: a CI step's timeout)
        process.wait()
        assert eventually_blocking(lambda: not any(alive(pid) for pid in workers), 10, every=0.1)
    finally:
        process.kill()


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_check_accepts_examples():
    result = grayscale("check", "config/example.yaml", "config/demo.yaml")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "config/example.yaml: ok (2 routes)",
        "config/demo.yaml: ok (2 routes)",
    ]


def test_check_reports_every_error_and_exits_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - name: x\n    match: {path_prefix: nope}\n    ramp: {base: 2}\n")
    result = grayscale("check", str(bad))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert f"{bad}:3: routes[0].match.path_prefix: must start with /" in lines
    assert f"{bad}:4: routes[0].ramp.base: expected a share between 0 and 1, got 2" in lines
    assert f"{bad}:2: routes[0].stable: missing required field" in lines


def test_simulate_days_are_days_whatever_the_step():
    hourly = grayscale(
        "simulate", "--config", "config/example.yaml", "--days", "0.5", "--step", "1h"
    )
    assert hourly.returncode == 0, hourly.stderr
    sentiment = hourly.stdout.split("route sentiment")[1].split("route chat")[0]
    rows = [line for line in sentiment.splitlines() if re.match(r"\s+\d+\s+2026-", line)]
    assert len(rows) == 13  # the start and 12 hourly rows: half a day
    both = grayscale("simulate", "--config", "config/example.yaml", "--days", "3", "--steps", "5")
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


def test_simulate_prints_shares_day_by_day():
    result = grayscale("simulate", "--config", "config/example.yaml", "--days", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "route sentiment" in out and "start 2026-12-01T00:00:00Z" in out
    sentiment = out.split("route sentiment")[1].split("route chat")[0]
    rows = [line.split() for line in sentiment.splitlines() if re.match(r"\s+\d+\s+2026-", line)]
    assert [r[1] for r in rows] == ["2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"]
    # day 2: base 0.001 + 2 * 0.05 = 10.10% by default; eu 2 * 0.02 = 4.00%; staff pinned.
    assert rows[2][2:4] == ["10.10%", "/"]
    assert "pinned candidate" in sentiment and "pinned stable" in sentiment
    assert " 4.00% /" in sentiment.splitlines()[4]
    gap_match = re.search(r"measured share: ([\d.]+)%", sentiment)
    assert gap_match is not None
    gap = float(gap_match[1])
    assert gap < 1.5  # 10,000 fixed ids: binomial noise is about 0.5 points at 50%


async def test_serve_forwards_and_stops_on_sigterm(tmp_path, upstreams):
    stable, candidate = upstreams
    config = tmp_path / "c.yaml"
    config.write_text(
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        f"state: {{path: {tmp_path / 'state.json'}}}\n"
        "routes:\n" + route_yaml(url_of(stable), url_of(candidate), share=1.0)
    )
    served = await serve_subprocess(config, "--log-format", "json")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(served.proxy_url + "/x", headers={"X-User-Id": "u"}) as resp:
                assert (await resp.json())["upstream"] == "candidate"
            async with session.get(served.admin_url + "/readyz") as resp:
                assert resp.status == 200
    finally:
        served.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(served.process.wait(), timeout=20)
    assert served.process.stderr is not None
    rest = await served.process.stderr.read()
    assert code == 0
    assert b'"message": "stopped"' in rest


def test_serve_refuses_a_busy_port(tmp_path):
    config = tmp_path / "c.yaml"
    routes = route_yaml("http://127.0.0.1:1", "http://127.0.0.1:2")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config.write_text(
            f'server: {{listen: "127.0.0.1:{port}"}}\nstate: {{backend: memory}}\nroutes:\n{routes}'
        )
        result = grayscale("serve", "--config", str(config))
    assert result.returncode == 1
    assert "address already in use" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_invalid_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: []\n")
    result = grayscale("serve", "--config", str(bad))
    assert result.returncode == 1
    assert "routes: at least one route is needed" in result.stderr


@pytest.mark.slow  # (the demo for 12 s: a rollback on the way)
@pytest.mark.timeout(90)
def test_demo_shows_the_split_and_the_automatic_rollback(tmp_path):
    config = demo_config(tmp_path)
    faster = config.read_text().replace("interval: 2s, window: 10s", "interval: 500ms, window: 3s")
    config.write_text(re.sub(r"min_requests: \d+", "min_requests: 12", faster))
    # (p95's upper bound needs a few hundred stable requests: passes come after 4 s or so, and
    # a candidate judged on 5 good seconds takes a few more to be proven worse)
    args = ("--duration", "12", "--rate", "150", "--degrade-after", "5")
    result = grayscale("demo", "--config", str(config), *args)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "-> candidate: " in out and '"model": "sentiment-v2"' in out  # pinned staff user
    assert re.search(r"sentiment\s+ramping\s+share", out)
    # (the honest words: not yet known on the good seconds, then worse; never a pass on thin data)
    assert re.search(r"verdict (inconclusive|suspect|pass): ", out)
    assert "goes bad after 5 s" in out and "behind every route: sentiment, chat" in out
    assert " INFO " not in out  # (the proxy's log goes to a file, apart from the table)
    assert re.search(
        r"\*\*\* sentiment ROLLED BACK by analysis: analysis: (error_rate|latency|outcome:click)",
        out,
    )
    assert re.search(r"sentiment\s+rolled_back\s+share\s+0.0%", out)
    assert re.search(r"candidate\s+\d+ \(p50 [ \d.]+ ms, clicks +\d+%", out)  # clicks reported
    assert re.search(r"shadow: \d+% of \d+ comparisons agree, \d+ errors; gate open", out)
    served_match = re.search(r"requests served: (.*)", out)
    assert served_match is not None
    served = served_match[1]
    assert "sentiment/stable" in served and "chat/" in served


async def test_demo_stops_cleanly_on_ctrl_c(tmp_path):
    config = demo_config(tmp_path)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "demo",
        "--config",
        str(config),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None

    async def first_report() -> None:
        assert process.stdout is not None
        while not re.search(rb"sentiment\s+\w+\s+share", line := await process.stdout.readline()):
            assert line, "the demo ended before its first report"

    try:
        await asyncio.wait_for(first_report(), timeout=20)
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), timeout=20)
    out = (await process.stdout.read()).decode()
    err = (await process.stderr.read()).decode()
    assert code == 0, err
    assert "demo stopped; requests served:" in out
    assert "Traceback" not in err


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_status_and_actions_against_a_running_proxy(upstreams, start_proxy, monkeypatch):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", "tok-123")
    stable, candidate = upstreams
    proxy = await start_proxy(route_yaml(url_of(stable), url_of(candidate), share=0.2))
    env = {**os.environ, "GRAYSCALE_ADMIN_URL": proxy.admin_url}
    async with aiohttp.ClientSession() as session:
        for i in range(30):
            async with session.get(proxy.proxy_url + "/x", headers={"X-User-Id": f"u{i}"}):
                pass

    code, out, _ = await run_cli("status", env=env)
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:5] == ["ROUTE", "STATE", "SHARE", "STABLE", "ERR"]
    cells = row.split()
    assert cells[:3] == ["models", "ramping", "20.00%"]
    assert int(cells[3]) + int(cells[5]) == 30

    code, out, _ = await run_cli("rollback", "models", "--reason", "latency", env=env)
    assert (code, out.strip()) == (0, "models: ramping -> rolled_back, share 0.00% (latency)")
    code, out, err = await run_cli("rollback", "models", env=env)
    assert code == 1 and "409: cannot roll back a rollout that is rolled back" in err
    code, out, _ = await run_cli("resume", "models", env=env)
    assert (code, out.strip()) == (
        0,
        "models: rolled_back -> ramping, share 20.00% "
        "(run 2 of this candidate, from the ramp's base, judged on fresh counts)",
    )
    await run_cli("rollback", "models", env=env)
    code, out, _ = await run_cli("resume", "models", "--keep-share", env=env)
    assert (code, out.strip()) == (
        0,
        "models: rolled_back -> ramping, share 20.00% "
        "(run 3 of this candidate, where it stopped, judged on fresh counts)",
    )
    code, out, _ = await run_cli("set-share", "models", "0.05", env=env)
    assert (code, out.strip()) == (0, "models: ramping -> paused, share 5.00%")
    code, out, _ = await run_cli("status", env=env)
    assert "set_share by token:" in out and "paused" in out

    no_token = {k: v for k, v in env.items() if k != "GRAYSCALE_ADMIN_TOKEN"}
    (code, _, err), (bad_code, _, bad_err), (gone_code, _, gone_err) = await asyncio.gather(
        run_cli("pause", "models", env=no_token),
        run_cli("pause", "models", env={**env, "GRAYSCALE_ADMIN_TOKEN": "bad"}),
        run_cli("status", "--admin", f"http://127.0.0.1:{free_port()}", env=env),
    )  # (none of them changes anything: run side by side)
    assert code == 2 and "set $GRAYSCALE_ADMIN_TOKEN" in err
    assert bad_code == 1 and "403" in bad_err
    assert gone_code == 1 and "cannot reach the admin API" in gone_err
