"""`GET /status` has one shape, pinned here key by key (a route without analysis, ejection or
shadow has the same keys, `null`), and segments say what they serve after a rollback; `GET
/routes/{name}/timeline` holds the analysis rounds per variant under the rules of `/status`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from proxy.app.server import Server
from tests.integration.conftest import ROOT, ProxyFactory, route_yaml, url_of

TOKEN = "status-document-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

TOP = {"config", "state", "routes"}
CONFIG = {"hash", "source", "last_reload"}
STATE = {
    "backend",
    "healthy",
    "error",
    "unreadable_at_start",
    "clock_offset_seconds",
    "clock_error",
}
ROUTE = {
    "name",
    "path_prefix",
    "state",
    "share",
    "share_override",
    "stable",
    "candidate",
    "rollout",
    "ramp",
    "segments",
    "last_transition",
    "history",
    "requests",
    "error_rate",
    "analysis",
    "ejection",
    "shadow",
}
ROLLOUT = {"started_at", "run", "held_seconds"}
RAMP = {"start", "base", "slope", "per_seconds", "max", "reaches_max_at"}
SEGMENT = {"name", "variant", "share", "forced"}
TRANSITION = {"action", "at", "actor", "before", "after", "reason", "share"}
CLASSES = {"2xx", "3xx", "4xx", "5xx", "error"}
ANALYSIS = {
    "method",
    "confidence",
    "latency_quantile",
    "interval_seconds",
    "window_seconds",
    "min_requests",
    "failures_before_rollback",
    "consecutive_failures",
    "max_errors_in_a_row",
    "on_error",
    "errors_in_a_row",
    "alarm",
    "holding",
    "action",
    "why",
    "analysis_number",
    "last_verdict",
    "counts",
}
EJECTION = {"ejected", "until", "ejections", "consecutive_errors"}
SHADOW = {
    "share",
    "comparisons",
    "dropped",
    "in_flight",
    "bytes_in_flight",
    "agreement",
    "agreement_interval",
}
TIMELINE = {
    "route",
    "analysis",
    "interval_seconds",
    "covers_seconds",
    "method",
    "latency_quantile",
    "capacity",
    "points",
}
POINT = {"at", "state", "share", "result", "stable", "candidate"}
FIGURES = {"requests", "errors", "latency_seconds"}


def two_routes(stable: str, candidate: str) -> str:
    """`models`: analysed, with segments, the default ejection and a shadow; `plain`: none."""
    models = route_yaml(
        stable,
        candidate,
        prefix="/m",
        share=0.3,
        extra=(
            "    segments:\n"
            '      - {name: staff, when: {"header:X-Group": [staff]}, variant: candidate}\n'
            '      - {name: beta, when: {"header:X-Group": [beta]}, ramp: {base: 0.6}}\n'
            "    analysis: {interval: 100ms, method: fixed, window: 5s, min_requests: 5}\n"
            "    shadow: {share: 0.5}\n"
        ),
    )
    plain = route_yaml(
        stable, candidate, name="plain", prefix="/p", share=0.1, extra="    ejection: false\n"
    )
    return models + plain


async def status(client: aiohttp.ClientSession, server: Server, **headers: str) -> dict[str, Any]:
    async with client.get(server.admin_url + "/status", headers=headers) as answer:
        assert answer.status == 200
        document: dict[str, Any] = await answer.json()
        return document


async def timeline(client: aiohttp.ClientSession, server: Server, name: str) -> dict[str, Any]:
    async with client.get(f"{server.admin_url}/routes/{name}/timeline") as answer:
        assert answer.status == 200
        found: dict[str, Any] = await answer.json()
        return found


async def traffic(client: aiohttp.ClientSession, server: Server, count: int) -> None:
    for i in range(count):
        async with client.get(server.proxy_url + "/m/x", headers={"X-User-Id": f"u{i}"}) as r:
            await r.read()


async def test_every_route_has_the_same_keys_whatever_it_has(
    upstreams, start_proxy: ProxyFactory, client, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    stable, candidate = upstreams
    server = await start_proxy(two_routes(url_of(stable), url_of(candidate)))
    await traffic(client, server, 20)
    document = await status(client, server)
    assert set(document) == TOP
    assert set(document["config"]) == CONFIG and set(document["state"]) == STATE
    models, plain = document["routes"]
    for route in (models, plain):
        assert set(route) == ROUTE, route["name"]
        assert set(route["rollout"]) == ROLLOUT  # (no salt without the token)
        assert set(route["ramp"]) == RAMP
        assert set(route["requests"]) == set(route["error_rate"]) == {"stable", "candidate"}
        assert set(route["requests"]["stable"]) == CLASSES
        assert route["last_transition"] is None and route["history"] == []
    assert [set(segment) for segment in models["segments"]] == [SEGMENT, SEGMENT]
    assert set(models["analysis"]) == ANALYSIS
    assert set(models["ejection"]) == EJECTION
    assert set(models["shadow"]) == SHADOW
    assert (plain["segments"], plain["analysis"], plain["ejection"], plain["shadow"]) == (
        [],
        None,
        None,
        None,
    )
    privileged = await status(client, server, **AUTH)
    assert set(privileged["routes"][0]["rollout"]) == ROLLOUT | {"salt"}

    async with client.post(
        server.admin_url + "/routes/plain/pause", json={"reason": "look"}, headers=AUTH
    ) as answer:
        assert answer.status == 200
    (_, plain) = (await status(client, server))["routes"]
    assert set(plain["last_transition"]) == TRANSITION
    assert plain["history"] == [plain["last_transition"]]


async def test_after_a_rollback_or_a_promotion_every_segment_serves_that_variant(
    upstreams, start_proxy: ProxyFactory, client, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    stable, candidate = upstreams
    server = await start_proxy(two_routes(url_of(stable), url_of(candidate)))
    (models, _) = (await status(client, server))["routes"]
    assert models["segments"] == [
        {"name": "staff", "variant": "candidate", "share": 1.0, "forced": None},
        {"name": "beta", "variant": None, "share": 0.6, "forced": None},
    ]
    for action, state, share in (("rollback", "rolled_back", 0.0), ("promote", "promoted", 1.0)):
        async with client.post(
            f"{server.admin_url}/routes/models/{action}", json={}, headers=AUTH
        ) as answer:
            assert answer.status == 200
        (models, _) = (await status(client, server))["routes"]
        assert models["segments"] == [
            {"name": "staff", "variant": "candidate", "share": share, "forced": state},
            {"name": "beta", "variant": None, "share": share, "forced": state},
        ]
        # ... as the data plane does: a staff request goes where the state says.
        async with client.get(
            server.proxy_url + "/m/x", headers={"X-Group": "staff", "X-User-Id": "s1"}
        ) as r:
            assert r.headers["X-Grayscale-Variant"] == ("stable" if share == 0.0 else "candidate")
        if action == "rollback":
            async with client.post(
                f"{server.admin_url}/routes/models/resume", json={}, headers=AUTH
            ) as answer:
                assert answer.status == 200


async def test_the_command_lines_status_table_reads_the_document(
    upstreams, start_proxy: ProxyFactory, client, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    stable, candidate = upstreams
    server = await start_proxy(two_routes(url_of(stable), url_of(candidate)))
    await traffic(client, server, 40)
    await until(lambda: server.analyzer.routes["models"].last is not None)
    async with client.post(
        server.admin_url + "/routes/plain/rollback", json={"reason": "slow"}, headers=AUTH
    ) as answer:
        assert answer.status == 200
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "status",
        "--admin",
        server.admin_url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await command.communicate()
    assert command.returncode == 0, err.decode()
    header, models, plain = out.decode().splitlines()
    assert header.split() == [
        "ROUTE",
        "STATE",
        "SHARE",
        "STABLE",
        "ERR",
        "CANDIDATE",
        "ERR",
        "VERDICT",
        "LAST",
        "CHANGE",
    ]
    assert models.split()[:3] == ["models", "ramping", "30.00%"]
    assert sum(map(int, models.split()[3:6:2])) == 40  # the two variants' requests
    assert models.split()[7].rstrip(",") in ("pass", "inconclusive", "suspect")
    assert plain.split()[:3] == ["plain", "rolled_back", "0.00%"]
    assert plain.endswith("(slow)") and "rollback by token:" in plain


async def test_the_timeline_holds_each_round_per_variant_and_the_share_after_a_rollback(
    upstreams, start_proxy: ProxyFactory, client, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    stable, candidate = upstreams
    server = await start_proxy(two_routes(url_of(stable), url_of(candidate)))
    await traffic(client, server, 60)
    rounds = server.analyzer.routes["models"].timeline.points

    def judged(point: Any) -> bool:
        return point.stable is not None and point.candidate.requests > 0

    await until(lambda: any(judged(p) for p in rounds))
    found = await timeline(client, server, "models")
    assert set(found) == TIMELINE and found["analysis"] is True
    assert (found["method"], found["covers_seconds"], found["interval_seconds"]) == (
        "fixed",
        5.0,
        0.1,
    )
    assert found["capacity"] == 720  # an hour at 100 ms is more than the cap
    point = next(p for p in found["points"] if p["stable"] is not None)
    assert set(point) == POINT and set(point["stable"]) == set(point["candidate"]) == FIGURES
    assert point["state"] == "ramping" and point["share"] == 0.3
    seen = point["stable"]["requests"] + point["candidate"]["requests"]
    assert 0 < seen <= 60 and point["candidate"]["latency_seconds"] > 0
    assert point["result"] in ("pass", "inconclusive", "suspect")
    times = [p["at"] for p in found["points"]]
    assert times == sorted(times)

    async with client.post(
        server.admin_url + "/routes/models/rollback", json={}, headers=AUTH
    ) as answer:
        assert answer.status == 200
    await until(lambda: rounds[-1].state == "rolled_back")
    last = (await timeline(client, server, "models"))["points"][-1]
    assert last | {"at": 0} == {
        "at": 0,
        "state": "rolled_back",
        "share": 0.0,
        "result": None,
        "stable": None,
        "candidate": None,
    }
    assert await timeline(client, server, "plain") == {
        "route": "plain",
        "analysis": False,
        "points": [],
    }
    async with client.get(server.admin_url + "/routes/nothing/timeline") as answer:
        assert answer.status == 404 and (await answer.json())["error"] == "unknown_route"


async def test_the_timeline_needs_the_token_when_reads_are_protected(
    upstreams, start_proxy: ProxyFactory, client, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    stable, candidate = upstreams
    server = await start_proxy(
        two_routes(url_of(stable), url_of(candidate))
        + "admin: {token_env: GRAYSCALE_ADMIN_TOKEN, protect_reads: true}\n"
    )
    url = server.admin_url + "/routes/models/timeline"
    async with client.get(url) as answer:
        assert answer.status == 401
    async with client.get(url, headers={"Authorization": "Bearer wrong"}) as answer:
        assert answer.status == 403
    async with client.get(url, headers=AUTH) as answer:
        assert answer.status == 200 and (await answer.json())["route"] == "models"
    async with client.post(url, headers=AUTH) as answer:
        assert answer.status == 405  # read-only


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until `condition()` holds (checked every 20 ms), or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"not true within {within} s")
        await asyncio.sleep(0.02)
