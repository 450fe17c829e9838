"""Replicas from one config file: each `grayscale serve` on its own `--listen/--admin-listen`,
with its own environment under `--expand-env`; a reload keeps both."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy.app.server import Server
from proxy.config.loader import load_config
from proxy.config.model import Listen, LoadOptions
from tests.support.configs import route_yaml
from tests.support.ports import free_port
from tests.support.proxies import Served, serve_subprocess
from tests.support.upstream import url_of

ROOT = Path(__file__).resolve().parents[2]


def shared_file(path: Path, busy: int, stable: str, candidate: str, base: str) -> None:
    """One route whose ramp's base is `base`, behind listeners on `busy` (which --listen and
    --admin-listen must replace)."""
    route = route_yaml(stable, candidate, share=0.0)
    path.write_text(
        f'server: {{listen: "127.0.0.1:{busy}", admin_listen: "127.0.0.1:{busy}"}}\n'
        "state: {backend: memory}\n"
        "routes:\n" + route.replace("ramp: {base: 0.0}", f"ramp: {{base: {base}}}")
    )


async def variant(session: aiohttp.ClientSession, served: Served) -> str:
    async with session.get(served.proxy_url + "/x", headers={"X-User-Id": "u"}) as resp:
        assert resp.status == 200
        return str((await resp.json())["upstream"])


async def lines_until_applied(served: Served) -> list[bytes]:
    """The log lines up to the one saying a changed config was applied."""
    lines = [await served.next_line()]
    while b"applied" not in lines[-1]:
        assert lines[-1], b"".join(lines)  # (the end of its log: it exited)
        lines.append(await served.next_line())
    return lines


async def stop(served: Served) -> None:
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), timeout=20) == 0


async def test_two_replicas_of_one_file_each_on_its_addresses_and_environment(
    upstreams, tmp_path, monkeypatch
):
    stable, candidate = upstreams
    path = tmp_path / "grayscale.yaml"
    replicas: list[Served] = []
    with socket.socket() as busy:  # the file's port: taken, so only the overrides can serve
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        shared_file(path, port, url_of(stable), url_of(candidate), '"${GS_SHARE}"')
        try:
            for share, next_share in (("0", "1"), ("1", "0")):
                monkeypatch.setenv("GS_SHARE", share)
                monkeypatch.setenv("GS_NEXT_SHARE", next_share)
                listen, admin = free_port(), free_port()
                served = await serve_subprocess(
                    path,
                    "--expand-env",
                    f"--listen=127.0.0.1:{listen}",
                    f"--admin-listen=127.0.0.1:{admin}",
                )
                replicas.append(served)
                assert (served.proxy_url, served.admin_url) == (
                    f"http://127.0.0.1:{listen}",
                    f"http://127.0.0.1:{admin}",
                )
            monkeypatch.setenv("GS_NEXT_SHARE", "test's own value, read by neither replica")
            async with aiohttp.ClientSession() as session:
                assert [await variant(session, r) for r in replicas] == ["stable", "candidate"]

                # The file changes: each replica reads it with its own environment, and stays
                # on its own addresses.
                shared_file(path, port, url_of(stable), url_of(candidate), '"${GS_NEXT_SHARE}"')
                for served in replicas:
                    served.process.send_signal(signal.SIGHUP)  # (or its watcher sees the file)
                    lines = await lines_until_applied(served)
                    assert not [line for line in lines if b"restart" in line], lines
                assert [await variant(session, r) for r in replicas] == ["candidate", "stable"]
                for served in replicas:
                    async with session.get(served.admin_url + "/readyz") as resp:
                        assert resp.status == 200
        finally:
            for served in replicas:
                await stop(served)


async def test_a_reload_keeps_the_command_lines_addresses(upstreams, client, tmp_path):
    stable, candidate = upstreams
    path = tmp_path / "grayscale.yaml"
    shared_file(path, 1, url_of(stable), url_of(candidate), "0.0")
    options = LoadOptions(listen=Listen("127.0.0.1", 0), admin_listen=Listen("127.0.0.1", 0))
    server = Server(load_config(path, options))
    await server.start()
    try:
        shared_file(path, 1, url_of(stable), url_of(candidate), "1.0")
        result = await server.reload("test")
        assert (result.result, result.restart_required) == ("applied", ())
        assert server.config.options == options
        assert server.config.server.listen == Listen("127.0.0.1", 0)
        async with client.get(server.proxy_url + "/x", headers={"X-User-Id": "u"}) as resp:
            assert (await resp.json())["upstream"] == "candidate"
    finally:
        await server.stop()


def check(path: Path, *options: str, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", *options, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, **environ},
        check=False,
    )


@pytest.mark.parametrize("quoted", [True, False])
def test_check_expands_the_environment_only_when_asked(tmp_path, monkeypatch, quoted):
    monkeypatch.delenv("GS_SHARE", raising=False)
    path = tmp_path / "grayscale.yaml"
    shared_file(path, 8080, "http://127.0.0.1:1", "http://127.0.0.1:2", '"${GS_SHARE}"')
    if not quoted:
        path.write_text(
            path.read_text().replace(
                'ramp: {base: "${GS_SHARE}"}', "ramp:\n      base: ${GS_SHARE}"
            )
        )
    assert check(path, "--expand-env", GS_SHARE="0.5").stdout == f"{path}: ok (1 route)\n"
    unset = check(path, "--expand-env")
    assert unset.returncode == 1
    assert unset.stderr.splitlines() == [
        f"{path}:{9 if quoted else 10}: routes[0].ramp.base: environment variable GS_SHARE is not "
        "set (or give a default: ${GS_SHARE:-default})"
    ]
    as_written = check(path, GS_SHARE="0.5")
    assert as_written.returncode == 1
    assert "routes[0].ramp.base: expected a finite number" in as_written.stderr
