"""Admin API, metrics, durable rollout state and the access log, through real servers."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app.server import Server
from proxy.config.loader import parse_config
from proxy.routing import bucket, threshold
from tests.integration.conftest import free_port, route_yaml, url_of

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin_token(monkeypatch):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def get_metrics(client: aiohttp.ClientSession, proxy: Server) -> Samples:
    async with client.get(proxy.admin_url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return samples(await resp.text())


async def send(
    client: aiohttp.ClientSession, proxy: Server, users: list[str], path: str = "/v1/x"
) -> None:
    for uid in users:
        async with client.get(proxy.proxy_url + path, headers={"X-User-Id": uid}) as resp:
            await resp.read()


async def test_metrics_count_requests_per_variant(upstreams, start_proxy, client):
    stable, candidate = upstreams
    routes = route_yaml(url_of(stable), url_of(candidate), share=0.4, extra="    ejection: false\n")
    proxy = await start_proxy(routes)
    users = [f"user-{i}" for i in range(300)]
    await send(client, proxy, users)
    await send(client, proxy, users[:20], path="/status/503")
    async with client.get(proxy.proxy_url + "/v1/anonymous") as resp:
        assert resp.status == 200  # no cohort key: stable
    expected = sum(bucket("models-salt", u) < threshold(0.4) for u in users)
    expected_5xx = sum(bucket("models-salt", u) < threshold(0.4) for u in users[:20])
    m = await get_metrics(client, proxy)

    def requests(variant: str, code_class: str) -> float:
        key = (("code_class", code_class), ("route", "models"), ("variant", variant))
        return m.get(("grayscale_requests_total", key), 0.0)

    assert requests("candidate", "2xx") == expected
    assert requests("stable", "2xx") == 300 - expected + 1  # + the keyless request
    assert requests("candidate", "5xx") == expected_5xx
    assert requests("stable", "5xx") == 20 - expected_5xx
    count = m[
        (
            "grayscale_request_duration_seconds_count",
            (("route", "models"), ("variant", "candidate")),
        )
    ]
    assert count == expected + expected_5xx
    ttfb = m[
        (
            "grayscale_upstream_time_to_first_byte_seconds_count",
            (("route", "models"), ("variant", "stable")),
        )
    ]
    assert ttfb == 300 - expected + 1 + 20 - expected_5xx
    assert m[("grayscale_in_flight_requests", (("route", "models"), ("variant", "stable")))] == 0
    assert m[("grayscale_candidate_share", (("route", "models"),))] == pytest.approx(0.4)
    states = {dict(k[1])["state"]: v for k, v in m.items() if k[0] == "grayscale_rollout_state"}
    assert states == {
        "pending": 0,
        "ramping": 1,
        "complete": 0,
        "paused": 0,
        "promoted": 0,
        "rolled_back": 0,
    }
    assert m[("grayscale_config_info", (("hash", proxy.config.digest),))] == 1
    assert any(k[0] == "grayscale_build_info" for k in m)


async def test_unmatched_requests_are_counted(upstreams, start_proxy, client):
    stable, candidate = upstreams
    proxy = await start_proxy(route_yaml(url_of(stable), url_of(candidate), prefix="/v1"))
    for _ in range(3):
        async with client.get(proxy.proxy_url + "/v2/x") as resp:
            assert resp.status == 404
    m = await get_metrics(client, proxy)
    assert m[("grayscale_unmatched_requests_total", ())] == 3


async def test_upstream_errors_are_counted_by_reason(upstreams, start_proxy, client):
    _, candidate = upstreams
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = await start_proxy(route_yaml(dead, url_of(candidate), share=0.0, timeout="300ms"))
    await send(client, proxy, ["a", "b", "c"])
    m = await get_metrics(client, proxy)
    labels = (("code_class", "error"), ("route", "models"), ("variant", "stable"))
    assert m[("grayscale_requests_total", labels)] == 3
    reason = (("reason", "connect"), ("route", "models"), ("variant", "stable"))
    assert m[("grayscale_upstream_errors_total", reason)] == 3


async def test_fallbacks_count_the_candidate_failure_and_the_stable_answer(
    upstreams, start_proxy, client
):
    stable, _ = upstreams
    dead = f"http://127.0.0.1:{free_port()}"
    routes = route_yaml(url_of(stable), dead, share=1.0, extra="    ejection: false\n")
    proxy = await start_proxy(routes)
    await send(client, proxy, ["a", "b", "c"])
    m = await get_metrics(client, proxy)
    served = (("code_class", "2xx"), ("route", "models"), ("variant", "stable"))
    assert m[("grayscale_requests_total", served)] == 3
    failed = (("reason", "connect"), ("route", "models"), ("variant", "candidate"))
    assert m[("grayscale_upstream_errors_total", failed)] == 3
    assert m[("grayscale_fallbacks_total", (("reason", "connect"), ("route", "models")))] == 3


async def test_metric_labels_never_carry_users_or_paths(proxy, client):
    await send(client, proxy, ["user-secret-42"], path="/v1/secret-path?user=user-secret-42")
    async with client.get(proxy.admin_url + "/metrics") as resp:
        text = await resp.text()
    assert "user-secret-42" not in text and "secret-path" not in text


async def test_health_ready_and_status(proxy, client):
    async with client.get(proxy.admin_url + "/healthz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    async with client.get(proxy.admin_url + "/readyz") as resp:
        assert resp.status == 200
    await send(client, proxy, [f"u{i}" for i in range(10)])
    async with client.get(proxy.admin_url + "/status") as resp:
        status = await resp.json()
    (route,) = status["routes"]
    assert (route["name"], route["state"], route["share"]) == ("models", "ramping", 0.5)
    assert route["ramp"]["base"] == 0.5
    assert (
        sum(route["requests"]["stable"].values()) + sum(route["requests"]["candidate"].values())
        == 10
    )
    assert route["error_rate"]["stable"] in (0.0, None)
    assert route["last_transition"] is None


async def test_mutations_need_the_token(upstreams, start_proxy, client, admin_token):
    stable, candidate = upstreams
    proxy = await start_proxy(route_yaml(url_of(stable), url_of(candidate)))
    url = proxy.admin_url + "/routes/models/pause"
    async with client.post(url) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with client.post(url, headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "forbidden"
    async with client.post(url, headers={"Authorization": f"Basic {TOKEN}"}) as resp:
        assert resp.status == 401
    async with client.post(url, headers=AUTH) as resp:
        assert resp.status == 200
        assert (await resp.json())["after"] == "paused"
    async with client.post(url, headers=AUTH) as resp:
        assert resp.status == 409
        body = await resp.json()
        assert (body["error"], body["state"]) == ("illegal_transition", "paused")
    async with client.post(proxy.admin_url + "/routes/nope/pause", headers=AUTH) as resp:
        assert resp.status == 404


async def test_a_token_that_is_not_utf8_is_just_wrong(upstreams, start_proxy, admin_token):
    stable, candidate = upstreams
    proxy = await start_proxy(route_yaml(url_of(stable), url_of(candidate)))
    host, port = proxy.admin_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /routes/models/pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 403 ")


async def test_without_a_configured_token_mutations_are_refused(proxy, client, monkeypatch):
    async with client.post(proxy.admin_url + "/routes/models/rollback", headers=AUTH) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "admin_token_not_configured"


async def test_reads_can_be_protected(upstreams, start_proxy, client, admin_token):
    stable, candidate = upstreams
    routes = route_yaml(url_of(stable), url_of(candidate))
    text = (
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        "admin: {protect_reads: true}\nstate: {backend: memory}\nroutes:\n" + routes
    )
    server = Server(parse_config(text))
    await server.start()
    try:
        for path in ("/status", "/metrics"):
            async with client.get(server.admin_url + path) as resp:
                assert resp.status == 401
            async with client.get(server.admin_url + path, headers=AUTH) as resp:
                assert resp.status == 200
        async with client.get(server.admin_url + "/healthz") as resp:
            assert resp.status == 200
    finally:
        await server.stop()


async def variants(client: aiohttp.ClientSession, proxy: Server, users: list[str]) -> list[str]:
    found = []
    for uid in users:
        async with client.get(proxy.proxy_url + "/x", headers={"X-User-Id": uid}) as resp:
            found.append(resp.headers["X-Grayscale-Variant"])
    return found


async def test_promote_rollback_share_and_resume_steer_traffic(
    upstreams, start_proxy, client, admin_token, caplog
):
    stable, candidate = upstreams
    proxy = await start_proxy(route_yaml(url_of(stable), url_of(candidate), share=0.5))
    users = [f"user-{i}" for i in range(200)]
    before = await variants(client, proxy, users)
    assert set(before) == {"stable", "candidate"}
    base = proxy.admin_url + "/routes/models"

    caplog.set_level(logging.INFO, logger="grayscale.audit")
    async with client.post(base + "/promote", headers=AUTH) as resp:
        assert (await resp.json())["share"] == 1.0
    assert set(await variants(client, proxy, users)) == {"candidate"}

    async with client.post(base + "/rollback", headers=AUTH, json={"reason": "p95 doubled"}) as r:
        body = await r.json()
    assert (body["before"], body["after"], body["reason"]) == (
        "promoted",
        "rolled_back",
        "p95 doubled",
    )
    assert set(await variants(client, proxy, users)) == {"stable"}

    async with client.post(base + "/resume", headers=AUTH) as resp:
        assert (await resp.json())["after"] == "ramping"
    assert await variants(client, proxy, users) == before  # same users, same buckets

    async with client.post(base + "/share", headers=AUTH, json={"share": 0.1}) as resp:
        assert (await resp.json())["after"] == "paused"
    after = await variants(client, proxy, users)
    moved = [u for u, v, w in zip(users, before, after, strict=True) if v != w]
    assert all(b == "candidate" for b, a in zip(before, after, strict=True) if a == "candidate")
    assert moved and after.count("candidate") < before.count("candidate")
    for bad in ({"share": 2}, {"share": "x"}, {}, [1]):
        async with client.post(base + "/share", headers=AUTH, json=bad) as resp:
            assert resp.status == 400

    audit = [r.getMessage() for r in caplog.records if r.name == "grayscale.audit"]
    assert audit[0].startswith("promote models by token:")
    assert "rollback models by token:" in audit[1] and "(p95 doubled)" in audit[1]
    assert "set_share models" in audit[3] and "at share 0.1" in audit[3]
    assert all(TOKEN not in line for line in audit)
    async with client.get(proxy.admin_url + "/status") as resp:
        last = (await resp.json())["routes"][0]["last_transition"]
    assert (last["action"], last["share"]) == ("set_share", 0.1)


async def test_restart_keeps_paused_and_rolled_back(upstreams, client, tmp_path, admin_token):
    stable, candidate = upstreams
    routes = route_yaml(url_of(stable), url_of(candidate), share=0.5, name="a", prefix="/a")
    routes += route_yaml(url_of(stable), url_of(candidate), share=0.5, name="b", prefix="/b")
    text = (
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        f"state: {{backend: file, path: {tmp_path / 'state.json'}}}\nroutes:\n" + routes
    )

    first = Server(parse_config(text))
    await first.start()
    async with client.post(
        first.admin_url + "/routes/a/share", headers=AUTH, json={"share": 0.25}
    ) as resp:
        assert resp.status == 200
    async with client.post(
        first.admin_url + "/routes/b/rollback", headers=AUTH, json={"reason": "errors"}
    ) as resp:
        assert resp.status == 200
    await first.stop()

    second = Server(parse_config(text))
    await second.start()
    try:
        async with client.get(second.admin_url + "/status") as resp:
            routes_status = {r["name"]: r for r in (await resp.json())["routes"]}
        assert (routes_status["a"]["state"], routes_status["a"]["share"]) == ("paused", 0.25)
        assert (routes_status["b"]["state"], routes_status["b"]["share"]) == ("rolled_back", 0.0)
        assert routes_status["b"]["last_transition"]["reason"] == "errors"
        for i in range(50):
            async with client.get(
                second.proxy_url + "/b/x", headers={"X-User-Id": f"u{i}"}
            ) as resp:
                assert resp.headers["X-Grayscale-Variant"] == "stable"
    finally:
        await second.stop()
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["rollouts"]["b"]["status"] == "rolled_back"


async def test_access_log_hashes_users_and_never_writes_raw_ids(
    upstreams, client, tmp_path, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_LOG_SECRET", "log-secret")
    stable, candidate = upstreams
    log_path = tmp_path / "access.jsonl"
    text = (
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        f"state: {{backend: memory}}\naccess_log: {{path: {log_path}}}\nroutes:\n"
        + route_yaml(url_of(stable), url_of(candidate), share=0.5)
    )
    server = Server(parse_config(text))
    await server.start()
    users = [f"alice-{i}@example.com" for i in range(40)]
    try:
        for uid in users:
            async with client.post(
                server.proxy_url + f"/v1/p?user={uid}",
                headers={
                    "X-User-Id": uid,
                    "Authorization": "Bearer upstream-key",
                    "Cookie": f"uid={uid}",
                },
                data=b"body-" + uid.encode(),
            ) as resp:
                await resp.read()
    finally:
        await server.stop()
    text_log = log_path.read_text()
    lines = [json.loads(line) for line in text_log.splitlines()]
    assert len(lines) == 40
    for uid in users:
        assert uid not in text_log
    assert "upstream-key" not in text_log and "body-" not in text_log
    assert len({line["user"] for line in lines}) == 40
    first = lines[0]
    assert set(first) == {
        "time",
        "request_id",
        "route",
        "method",
        "variant",
        "reason",
        "segment",
        "user",
        "status",
        "error",
        "duration_ms",
        "ttfb_ms",
        "ttft_ms",
        "output_tokens",
        "bytes_in",
        "bytes_out",
        "grpc_status",
    }
    assert (first["route"], first["method"], first["status"], first["reason"]) == (
        "models",
        "POST",
        200,
        "bucket",
    )
    assert first["bytes_in"] == len(b"body-" + users[0].encode())
    assert first["bytes_out"] > 0 and first["duration_ms"] >= first["ttfb_ms"] > 0


async def test_access_log_sampling(upstreams, client, tmp_path):
    stable, candidate = upstreams
    log_path = tmp_path / "access.jsonl"
    text = (
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        f"state: {{backend: memory}}\naccess_log: {{path: {log_path}, sample: 0.1}}\n"
        "routes:\n" + route_yaml(url_of(stable), url_of(candidate))
    )
    server = Server(parse_config(text))
    await server.start()
    try:
        await asyncio.gather(*(send(client, server, [f"u{i}"]) for i in range(1000)))
    finally:
        await server.stop()
    written = len(log_path.read_text().splitlines())
    assert 50 <= written <= 150  # 100 expected; 5 standard deviations either side
