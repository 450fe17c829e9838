"""Hot reload under load: nothing dropped, each request on the snapshot in force."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app.server import Server
from proxy.config.loader import load_config, parse_config
from proxy.rollout.machine import Action, State
from tests.support.configs import route_yaml
from tests.support.ports import free_port
from tests.support.proxies import serve_subprocess
from tests.support.upstream import url_of
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "reload-token"


@contextlib.asynccontextmanager
async def served_from_file(upstreams, path, share):
    """A proxy started from a config file at `path` (one route "m" at `share`), and its text."""
    stable, candidate = upstreams
    text = config_text(url_of(stable), url_of(candidate), name="m", share=share)
    path.write_text(text)
    server = Server(load_config(path))
    await server.start()
    try:
        yield server, text
    finally:
        await server.stop()


def config_text(
    stable: str,
    candidate: str,
    *,
    name: str,
    share: float,
    extra: str = "",
    server: str = 'listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"',
) -> str:
    return (
        f"server: {{{server}}}\nstate: {{backend: memory}}\nroutes:\n"
        + route_yaml(stable, candidate, name=name, share=share)
        + extra
    )


@pytest.mark.logs_errors("reload refused")
async def test_fifty_reloads_under_load_drop_nothing(upstreams, client, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    stable, candidate = upstreams
    path = tmp_path / "grayscale.yaml"
    # Two valid configs that route every request differently, and broken ones.
    configs = {
        "a": config_text(url_of(stable), url_of(candidate), name="a", share=0.0),
        "b": config_text(url_of(stable), url_of(candidate), name="b", share=1.0),
    }
    broken = [
        configs["a"].replace("share", "shar").replace("ramp: {base: 0.0}", "ramp: {base: 2}"),
        configs["b"] + "  - this is: [not valid\n",
    ]
    path.write_text(configs["a"])
    server = Server(load_config(path))
    await server.start()
    swaps: list[tuple[float, str]] = [(0.0, "a")]  # (time the snapshot took over, its route)
    responses: list[tuple[float, float, int, str, str, str]] = []
    done = asyncio.Event()

    async def load(worker: int) -> None:
        i = 0
        while not done.is_set():
            i += 1
            sent = time.monotonic()
            async with client.get(
                server.proxy_url + "/v1/predict", headers={"X-User-Id": f"w{worker}-{i}"}
            ) as resp:
                body = await resp.json()
                responses.append(
                    (
                        sent,
                        time.monotonic(),
                        resp.status,
                        resp.headers["X-Grayscale-Route"],
                        resp.headers["X-Grayscale-Variant"],
                        body["upstream"],
                    )
                )

    workers = [asyncio.create_task(load(w)) for w in range(12)]
    results = []
    current = "a"
    try:
        for i in range(50):
            await asyncio.sleep(0.03)  # (traffic between two reloads: the point of the test)
            if i % 5 == 4:
                path.write_text(broken[i % 2])
                expected = None
            else:
                expected = current = "b" if current == "a" else "a"
                path.write_text(configs[expected])
            if i % 2:
                result = await server.reload("test")
                outcome = result.result
            else:
                async with client.post(
                    server.admin_url + "/reload", headers={"Authorization": f"Bearer {TOKEN}"}
                ) as resp:
                    outcome = (await resp.json())["result"]
                    assert resp.status == (422 if expected is None else 200)
            results.append(outcome)
            if outcome == "applied":
                swaps.append((time.monotonic(), expected or "?"))
        await asyncio.sleep(0.1)  # (traffic on the last config too)
    finally:
        done.set()
        await asyncio.gather(*workers)
        await server.stop()

    assert results.count("invalid") == 10
    assert results.count("applied") == 40
    seconds = responses[-1][1] - responses[0][0]
    print(f"\n{len(responses)} requests in {seconds:.1f} s ({len(responses) / seconds:.0f}/s)")
    assert len(responses) / seconds > 200
    assert all(status == 200 for _, _, status, *_ in responses)  # zero failed requests
    for sent, received, _, route, variant, upstream in responses:
        assert variant == upstream == ("stable" if route == "a" else "candidate")
        in_force = [r for at, r in swaps if at <= sent][-1]
        during = {r for at, r in swaps if sent < at < received}
        assert route in {in_force} | during, (sent, route, in_force, during)
    assert {r[3] for r in responses} == {"a", "b"}


@pytest.mark.logs_errors("reload refused")
async def test_invalid_file_keeps_the_running_config_and_says_why(
    upstreams, client, tmp_path, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    path = tmp_path / "grayscale.yaml"
    async with served_from_file(upstreams, path, 1.0) as (server, good):
        path.write_text(good.replace("ramp: {base: 1.0}", "ramp: {base: 1.0, slop: 2}"))
        async with client.post(
            server.admin_url + "/reload", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            assert resp.status == 422
            body = await resp.json()
        assert body["result"] == "invalid"
        assert body["errors"] == [
            f"{path}:9: routes[0].ramp.slop: unknown field (expected one of: start, base, slope, "
            "per, max)"
        ]
        async with client.get(server.proxy_url + "/x", headers={"X-User-Id": "u"}) as resp:
            assert resp.headers["X-Grayscale-Variant"] == "candidate"  # the old config serves
        async with client.get(server.admin_url + "/status") as resp:
            config = (await resp.json())["config"]
        assert config["last_reload"]["result"] == "invalid"
        assert config["last_reload"]["errors"] == body["errors"]
        assert config["hash"] == load_config_digest(good)
        async with client.get(server.admin_url + "/metrics") as resp:
            families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
        reloads = {
            s.labels["result"]: s.value
            for s in families["grayscale_config_reloads"].samples
            if s.name.endswith("_total")
        }
        assert reloads == {"success": 0, "failure": 1}
        async with client.post(server.admin_url + "/reload") as resp:
            assert resp.status == 401  # reloading needs the token


def load_config_digest(text: str) -> str:
    return parse_config(text).digest


async def test_configmap_style_symlink_swap_is_picked_up(upstreams, client, tmp_path):
    stable, candidate = upstreams
    # The layout Kubernetes uses for a mounted ConfigMap: the file is a link into ..data, a link
    # to a timestamped folder; an update writes a new folder and swaps ..data atomically.
    for version, share in (("v1", 0.0), ("v2", 1.0)):
        (tmp_path / version).mkdir()
        (tmp_path / version / "grayscale.yaml").write_text(
            config_text(url_of(stable), url_of(candidate), name="m", share=share)
        )
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "grayscale.yaml").symlink_to("..data/grayscale.yaml")
    server = Server(load_config(tmp_path / "grayscale.yaml"), watch=True)
    await server.start()
    try:
        async with client.get(server.proxy_url + "/x", headers={"X-User-Id": "u"}) as resp:
            assert resp.headers["X-Grayscale-Variant"] == "stable"
        (tmp_path / "..data_tmp").symlink_to("v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        assert await eventually(lambda: server.last_reload is not None)
        assert server.last_reload is not None
        assert (server.last_reload.result, server.last_reload.trigger) == ("applied", "file")
        async with client.get(server.proxy_url + "/x", headers={"X-User-Id": "u"}) as resp:
            assert resp.headers["X-Grayscale-Variant"] == "candidate"
    finally:
        await server.stop()


async def test_rollout_state_survives_reloads_unless_the_candidate_changes(
    upstreams, client, tmp_path
):
    stable, candidate = upstreams
    path = tmp_path / "grayscale.yaml"
    text = config_text(url_of(stable), url_of(candidate), name="m", share=0.5).replace(
        "ramp: {base: 0.5}", "ramp: {base: 0.5, slope: 0.01, per: 1h}"
    )
    path.write_text(text)
    server = Server(load_config(path))
    await server.start()
    try:
        started_at = server.controller.rollout("m").started_at
        await server.controller.act("m", Action.ROLLBACK, time.time(), actor="t", reason="bad")
        path.write_text(
            text.replace("slope: 0.01", "slope: 0.2") + "    segments:\n"
            '      - {name: s, when: {"header:X-Beta": ["1"]}, variant: candidate}\n'
        )
        assert (await server.reload("test")).result == "applied"
        assert server.controller.state("m", time.time()) is State.ROLLED_BACK
        assert server.controller.rollout("m").started_at == started_at
        for i in range(30):
            async with client.get(
                server.proxy_url + "/x", headers={"X-User-Id": f"u{i}", "X-Beta": "1"}
            ) as resp:
                assert resp.headers["X-Grayscale-Variant"] == "stable"
        # A new candidate is a new rollout, fresh and ramping.
        path.write_text(path.read_text().replace(url_of(candidate), url_of(candidate) + "/v2"))
        assert (await server.reload("test")).result == "applied"
        assert server.controller.state("m", time.time()) is State.RAMPING
        assert server.controller.rollout("m").started_at > started_at
    finally:
        await server.stop()


async def test_listener_changes_need_a_restart_and_say_so(upstreams, client, tmp_path):
    path = tmp_path / "grayscale.yaml"
    async with served_from_file(upstreams, path, 0.0) as (server, text):
        new_port = free_port()
        path.write_text(
            text.replace('listen: "127.0.0.1:0",', f'listen: "127.0.0.1:{new_port}",').replace(
                "ramp: {base: 0.0}", "ramp: {base: 1.0}"
            )
        )
        result = await server.reload("test")
        assert result.result == "applied"
        assert result.restart_required == ("server.listen",)
        async with client.get(server.proxy_url + "/x", headers={"X-User-Id": "u"}) as resp:
            assert resp.headers["X-Grayscale-Variant"] == "candidate"  # the rest applied
        try:
            async with client.get(f"http://127.0.0.1:{new_port}/x"):
                raise AssertionError("nothing should listen on the new port")
        except aiohttp.ClientConnectorError:
            pass


async def test_listener_timeouts_apply_at_the_reload(upstreams, tmp_path):
    path = tmp_path / "grayscale.yaml"
    async with served_from_file(upstreams, path, 0.0) as (server, text):
        assert (server.listener.body_timeout, server.listener.send_timeout) == (60.0, 60.0)
        path.write_text(
            text.replace(
                'admin_listen: "127.0.0.1:0"',
                'admin_listen: "127.0.0.1:0", client_body_timeout: 7s, send_timeout: 9s',
            )
        )
        result = await server.reload("test")
        assert (result.result, result.restart_required) == ("applied", ())
        assert (server.listener.body_timeout, server.listener.send_timeout) == (7.0, 9.0)


async def test_sighup_reloads_a_running_proxy(upstreams, client, tmp_path):
    stable, candidate = upstreams
    path = tmp_path / "grayscale.yaml"
    text = config_text(url_of(stable), url_of(candidate), name="m", share=0.0)
    path.write_text(text)
    served = await serve_subprocess(path)
    try:
        path.write_text(text.replace("ramp: {base: 0.0}", "ramp: {base: 1.0}"))
        served.process.send_signal(signal.SIGHUP)
        line = b""
        while b"applied" not in line:
            line = await served.next_line()
            assert line, "grayscale serve ended its log without applying the config"
        assert b"(signal)" in line or b"(file)" in line
        async with client.get(served.proxy_url + "/x", headers={"X-User-Id": "u"}) as resp:
            assert resp.headers["X-Grayscale-Variant"] == "candidate"
    finally:
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), timeout=20) == 0


async def test_a_route_that_leaves_the_config_leaves_the_metrics(upstreams, client, tmp_path):
    stable, candidate = upstreams
    path = tmp_path / "grayscale.yaml"
    kept = route_yaml(url_of(stable), url_of(candidate), name="kept", prefix="/kept", share=0.0)
    gone = route_yaml(url_of(stable), url_of(candidate), name="gone", prefix="/gone", share=0.0)
    header = 'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
    header += "state: {backend: memory}\nroutes:\n"
    path.write_text(header + kept + gone)
    server = Server(load_config(path))
    await server.start()

    async def requests_by_route() -> dict[str, float]:
        async with client.get(server.admin_url + "/metrics") as resp:
            families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
        found: dict[str, float] = {}
        for sample in families["grayscale_requests"].samples:
            route = sample.labels["route"]
            found[route] = found.get(route, 0) + sample.value
        return found

    try:
        for prefix in ("/kept", "/kept", "/gone"):
            async with client.get(server.proxy_url + prefix) as resp:
                assert resp.status == 200
        assert await requests_by_route() == {"kept": 2, "gone": 1}
        path.write_text(header + kept)
        assert (await server.reload("test")).result == "applied"
        assert await requests_by_route() == {"kept": 2}  # the kept route's counts go on
    finally:
        await server.stop()
