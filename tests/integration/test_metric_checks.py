"""Custom metric checks end to end: the proxy asks a real Prometheus, which scrapes an exporter
the test sets; a broken limit rolls the candidate back, missing data or a broken query never
does, and an unreachable or misbehaving server is inconclusive with its reason."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from proxy.app.server import Server
from proxy.config.loader import parse_config
from proxy.rollout.machine import State
from tests.support.configs import route_yaml
from tests.support.ports import free_port
from tests.support.prometheus_server import Exporter, PrometheusServer
from tests.support.upstream import url_of

INTERVAL = 0.5


def config(stable: str, candidate: str, prometheus: str, metrics: list[dict[str, Any]]) -> str:
    analysis = {
        "interval": f"{INTERVAL * 1000:.0f}ms",
        "window": "2s",
        "min_requests": 60,
        "failures_before_rollback": 3,
        "prometheus": json.loads(prometheus) if prometheus.startswith("{") else {"url": prometheus},
        "metrics": metrics,
    }
    return (
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        "state: {backend: memory}\nroutes:\n"
        + route_yaml(stable, candidate)
        + f"    analysis: {json.dumps(analysis)}\n    ejection: false\n"
    )


async def started(text: str) -> Server:
    server = Server(parse_config(text, "metrics.yaml"))
    await server.start()
    return server


def last_checks(server: Server) -> dict[str, dict[str, Any]]:
    verdict = server.analyzer.routes["models"].last
    assert verdict is not None
    return {check.name: check.to_json() for check in verdict.checks}


async def rounds(server: Server, count: int) -> list[dict[str, Any]]:
    """Wait for `count` more verdicts; the newest first."""
    history = server.analyzer.routes["models"].history
    seen = len(history)
    for _ in range(int(count * INTERVAL / 0.05) + 100):
        if len(history) >= min(seen + count, history.maxlen or 0):
            break
        await asyncio.sleep(0.05)
    return list(history)


async def test_a_candidate_whose_metric_falls_below_its_limit_is_rolled_back(
    upstreams: tuple[TestServer, TestServer],
    prometheus: tuple[PrometheusServer, Exporter],
    client: aiohttp.ClientSession,
):
    server_, exporter = prometheus
    stable, candidate = upstreams
    series = 'model_quality{{route="models",variant="{}"}}'
    exporter.set(series.format("stable"), 0.9)
    exporter.set(series.format("candidate"), 0.9)
    query = (
        "avg_over_time(model_quality{"
        'route="{{route}}", variant="{{variant}}", instance=~"{{host}}:.*"}[{{window}}])'
    )
    text = config(
        url_of(stable),
        url_of(candidate),
        server_.url,
        [{"name": "quality", "query": query, "min_ratio": 0.9}],
    )
    server = await started(text)
    try:
        await rounds(server, 1)
        quality = last_checks(server)["metric:quality"]
        assert quality["result"] == "pass", quality
        assert quality["candidate"] == {
            "query": (
                'avg_over_time(model_quality{route="models", variant="candidate", '
                'instance=~"127.0.0.1:.*"}[2s])'
            ),
            "value": 0.9,
            "problem": None,
            "failed": False,
        }
        assert quality["stable"]["value"] == 0.9
        assert server.controller.state("models", time.time()) is State.RAMPING
        async with client.get(server.admin_url + "/metrics") as answer:
            families = {f.name: f for f in text_string_to_metric_families(await answer.text())}
        values = {
            sample.labels["variant"]: sample.value
            for sample in families["grayscale_analysis_metric_value"].samples
        }
        assert values == {"stable": 0.9, "candidate": 0.9}

        exporter.set(series.format("candidate"), 0.5)
        began = time.monotonic()
        for _ in range(200):
            if server.controller.state("models", time.time()) is State.ROLLED_BACK:
                break
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - began
        print(f"\nrolled back {elapsed:.2f} s after the candidate's quality fell")
        last = server.controller.rollout("models").last
        assert last is not None and last.actor == "analysis"
        assert last.reason.startswith(
            "analysis: metric:quality candidate / stable = "
        ) and last.reason.endswith("is below min_ratio 0.9"), last.reason
        # The 2 s average has to fall below 0.81 (about 0.5 s of the new value after a scrape),
        # then three failed verdicts 0.5 s apart.
        assert elapsed < 2 + 3 * INTERVAL + 1.5, elapsed
    finally:
        await server.stop()
        exporter.remove(series.format("stable"))
        exporter.remove(series.format("candidate"))


async def test_missing_data_is_inconclusive_broken_queries_are_errors_and_neither_rolls_back(
    upstreams: tuple[TestServer, TestServer],
    prometheus: tuple[PrometheusServer, Exporter],
    caplog: pytest.LogCaptureFixture,
):
    server_, exporter = prometheus
    stable, candidate = upstreams
    for shard in ("1", "2"):
        exporter.set(f'model_shard_load{{shard="{shard}"}}', 0.3)
    metrics = [
        {"name": "absent", "query": 'no_such_series{variant="{{variant}}"}', "max": 1},
        {"name": "syntax", "query": "sum(model_shard_load", "max": 1},
        {"name": "several", "query": "model_shard_load", "max_increase": 0.1},
        {"name": "nan", "query": "0 / 0 * sum(model_shard_load)", "max": 1},
    ]
    caplog.set_level(logging.INFO, "grayscale.analysis")
    server = await started(config(url_of(stable), url_of(candidate), server_.url, metrics))
    try:
        history = await rounds(server, 6)
        assert len(history) >= 6
        assert server.controller.state("models", time.time()) is State.RAMPING
        checks = last_checks(server)
        problems = {
            name: check["candidate"]["problem"]
            for name, check in checks.items()
            if name.startswith("metric:")
        }
        assert problems["metric:absent"] == "no data"
        assert problems["metric:syntax"].startswith("bad_data: invalid parameter"), problems
        assert problems["metric:several"] == (
            "2 series: the query must return one (aggregate it, e.g. with sum or avg)"
        )
        assert problems["metric:nan"] == "not a finite number: 'NaN'"
        words = {name: check["result"] for name, check in checks.items()}
        assert (words["metric:absent"], words["metric:nan"]) == ("inconclusive", "inconclusive")
        assert (words["metric:syntax"], words["metric:several"]) == ("error", "error")
        for record in history:  # (a query that cannot be answered: the verdict is an error)
            assert record["result"] == "error" and record["action"] == "hold"
            assert "fail" not in {c["result"] for c in record["checks"]}
        assert checks["metric:several"]["note"] == (
            "cannot measure candidate (2 series: the query must return one "
            "(aggregate it, e.g. with sum or avg))"
        )
    finally:
        await server.stop()
        for shard in ("1", "2"):
            exporter.remove(f'model_shard_load{{shard="{shard}"}}')
    logged = [
        (r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("metric")
    ]
    # Once per query when its problem appears, not every round; "no data" only at info.
    warned = sorted(message for level, message in logged if level == "WARNING")
    assert len(warned) == 6, warned  # syntax, several and nan, for each variant
    assert warned[0].startswith("metric nan: candidate query: not a finite number")
    assert ("INFO", "metric absent: candidate query: no data") in logged
    assert len(logged) == 8, logged


async def hanging(request: web.Request) -> web.Response:
    await asyncio.sleep(10)
    return web.json_response({})


async def test_an_unreachable_or_misbehaving_prometheus_is_an_error_with_its_reason(
    upstreams: tuple[TestServer, TestServer], monkeypatch: pytest.MonkeyPatch
):
    stable, candidate = upstreams
    monkeypatch.setenv("GS_TEST_PROM_TOKEN", "s3cret-token")
    seen: list[str | None] = []

    async def gateway_error(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/hang/api/v1/query", hanging)
    app.router.add_post("/html/api/v1/query", gateway_error)
    peer = TestServer(app, host="127.0.0.1")
    await peer.start_server()
    cases = {
        "closed": (f"http://127.0.0.1:{free_port()}", "cannot query http://127.0.0.1:"),
        "hang": (
            json.dumps({"url": url_of(peer) + "/hang", "timeout": "200ms"}),
            "no answer within 0.2 s",
        ),
        "html": (
            json.dumps({"url": url_of(peer) + "/html", "token_env": "GS_TEST_PROM_TOKEN"}),
            "HTTP 502 without a query API answer",
        ),
    }

    async def judged(name: str, source: str) -> tuple[dict[str, Any], State]:
        """The check's last result with Prometheus at `source`, and the route's state."""
        metrics = [{"name": name, "query": "up", "max": 1}]
        server = await started(config(url_of(stable), url_of(candidate), source, metrics))
        try:
            await rounds(server, 2)
            return last_checks(server)[f"metric:{name}"], server.controller.state(
                "models", time.time()
            )
        finally:
            await server.stop()

    try:  # (a proxy for each case, side by side)
        results = await asyncio.gather(
            *(judged(name, source) for name, (source, _) in cases.items())
        )
        for (_, problem), (check, state) in zip(cases.values(), results, strict=True):
            assert check["result"] == "error" and check["candidate"]["failed"] is True
            assert check["candidate"]["problem"].startswith(problem), check
            assert state is not State.ROLLED_BACK
        assert seen and set(seen) == {"Bearer s3cret-token"}
    finally:
        await peer.close()


async def test_a_token_variable_that_is_unset_is_a_problem_not_an_anonymous_query(
    upstreams: tuple[TestServer, TestServer], monkeypatch: pytest.MonkeyPatch
):
    stable, candidate = upstreams
    monkeypatch.delenv("GS_TEST_UNSET_TOKEN", raising=False)
    source = json.dumps(
        {"url": f"http://127.0.0.1:{free_port()}", "token_env": "GS_TEST_UNSET_TOKEN"}
    )
    text = config(
        url_of(stable), url_of(candidate), source, [{"name": "m", "query": "up", "max": 1}]
    )
    server = await started(text)
    try:
        await rounds(server, 1)
        check = last_checks(server)["metric:m"]
    finally:
        await server.stop()
    assert check["candidate"]["problem"] == "environment variable GS_TEST_UNSET_TOKEN is unset"
