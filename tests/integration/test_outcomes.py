"""Outcomes end to end: the application reports what users did with each answer by its request
id; the proxy counts it for the variant that served it and rolls back a candidate whose users
click less."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app.server import Server
from proxy.config.loader import parse_config
from proxy.rollout.machine import State
from tests.support.configs import route_yaml
from tests.support.upstream import url_of

TOKEN = "outcomes-token-0123456789abcdef0123456789"
ADMIN = "admin-token-0123456789abcdef0123456789abcd"


@pytest.fixture
async def proxy_with_outcomes(upstreams, monkeypatch) -> AsyncIterator[Server]:
    monkeypatch.setenv("GRAYSCALE_OUTCOMES_TOKEN", TOKEN)
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", ADMIN)
    stable, candidate = upstreams
    route = route_yaml(url_of(stable), url_of(candidate))
    server = Server(
        parse_config(
            'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
            "state: {backend: memory}\n"
            "outcomes: {max_batch: 500}\n"
            f"routes:\n{route}"
            "    analysis: {interval: 300ms, window: 10s, min_requests: 150, "
            "failures_before_rollback: 2, "
            "outcomes: [{name: click, max_decrease: 0.05}]}\n"
            "    ejection: false\n",
            "test.yaml",
        )
    )
    await server.start()
    yield server
    await server.stop()


async def ask(client: aiohttp.ClientSession, server: Server, user: str) -> tuple[str, str]:
    """(variant, request id) of one request."""
    async with client.get(f"{server.proxy_url}/v1/p", headers={"X-User-Id": user}) as answer:
        assert answer.status == 200
        return answer.headers["X-Grayscale-Variant"], answer.headers["X-Grayscale-Request-Id"]


async def report(
    client: aiohttp.ClientSession, server: Server, body: object, token: str = TOKEN
) -> tuple[int, dict[str, object]]:
    async with client.post(
        f"{server.admin_url}/outcomes", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as answer:
        return answer.status, await answer.json()


async def outcome_series(client: aiohttp.ClientSession, server: Server) -> dict[str, float]:
    async with client.get(f"{server.admin_url}/metrics") as answer:
        text = await answer.text()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("grayscale_outcome", "grayscale_outcomes_not_taken")):
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


async def test_outcomes_are_joined_to_the_variant_that_served_each_request(
    proxy_with_outcomes, client
):
    server = proxy_with_outcomes
    served = [await ask(client, server, f"user-{i}") for i in range(40)]
    assert {variant for variant, _ in served} == {"stable", "candidate"}
    assert len({request_id for _, request_id in served}) == 40
    batch: list[dict[str, object]] = [
        {"request_id": rid, "name": "click"} for variant, rid in served if variant == "stable"
    ]
    batch += [
        {"request_id": rid, "name": "rating", "value": 3.5}
        for variant, rid in served
        if variant == "candidate"
    ]
    batch += [{"request_id": "forged", "name": "click"}]
    status, results = await report(client, server, batch)
    assert status == 200
    assert results == {
        "accepted": 40,
        "unknown": 1,
        "expired": 0,
        "stale": 0,
        "not_compared": 0,
        "too_many_names": 0,
    }
    stable_count = sum(variant == "stable" for variant, _ in served)
    series = await outcome_series(client, server)
    assert series["grayscale_outcome_value_count{name=click,route=models,variant=stable}"] == (
        stable_count
    )
    assert series["grayscale_outcome_value_sum{name=rating,route=models,variant=candidate}"] == (
        3.5 * (40 - stable_count)
    )
    assert "grayscale_outcome_value_count{name=click,route=models,variant=candidate}" not in series
    assert series["grayscale_outcomes_not_taken_total{reason=unknown}"] == 1


async def test_reporting_needs_its_token_and_a_bad_batch_records_nothing(
    proxy_with_outcomes, client
):
    server = proxy_with_outcomes
    _, request_id = await ask(client, server, "u1")
    good = {"request_id": request_id, "name": "click"}
    async with client.post(f"{server.admin_url}/outcomes", json=good) as answer:
        assert answer.status == 401
    assert (await report(client, server, good, token="wrong"))[0] == 403
    assert (await report(client, server, good, token=ADMIN))[0] == 200  # the admin token too
    status, refused = await report(client, server, [good, {"request_id": request_id}])
    assert status == 422 and refused["errors"] == [
        "[1].name: expected letters, digits and _ . : - (at most 64)"
    ]
    async with client.post(
        f"{server.admin_url}/outcomes",
        data=b"{not json",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as answer:
        assert answer.status == 400
    async with client.post(
        f"{server.admin_url}/outcomes",
        data=b"[" + b" " * (1024 * 1024) + b"]",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as answer:
        assert answer.status == 413
    status, _ = await report(client, server, [good] * 501)
    assert status == 422
    series = await outcome_series(client, server)
    counted = sum(v for k, v in series.items() if k.startswith("grayscale_outcome_value_count"))
    assert counted == 1  # the one good report, with the admin token


async def test_a_candidate_whose_users_click_less_is_rolled_back(proxy_with_outcomes, client):
    server = proxy_with_outcomes
    rng = random.Random(5)
    clicks = {"stable": 0.30, "candidate": 0.05}  # the candidate's answers are worse

    async def user() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if server.controller.state("models", time.time()) is State.ROLLED_BACK:
                return
            variant, request_id = await ask(client, server, f"user-{rng.randrange(10**6)}")
            if rng.random() < clicks[variant]:
                assert (await report(client, server, {"request_id": request_id, "name": "click"}))[
                    0
                ] == 200

    await asyncio.gather(*(user() for _ in range(8)))
    rollout = server.controller.rollout("models")
    assert server.controller.state("models", time.time()) is State.ROLLED_BACK
    assert rollout.last is not None and "outcome:click" in (rollout.last.reason or "")
    verdict = server.analyzer.routes["models"].last
    assert verdict is not None
    (check,) = [c for c in verdict.checks if c.name == "outcome:click"]
    assert check.stable["mean"] > check.candidate["mean"]


async def test_a_value_outside_its_checks_range_refuses_the_batch_and_counts_nothing(
    proxy_with_outcomes, client
):
    server = proxy_with_outcomes
    _, first = await ask(client, server, "user-1")
    _, second = await ask(client, server, "user-2")
    before = await outcome_series(client, server)
    status, body = await report(
        client,
        server,
        [
            {"request_id": first, "name": "click"},
            {"request_id": second, "name": "click", "value": 3},  # a click is 0 or 1
        ],
    )
    assert status == 422
    assert body["error"] == "invalid_outcomes"
    assert body["errors"] == [
        "[1].value: 3 is outside the range of 'click' on route 'models' (analysis.outcomes: [0, 1])"
    ]
    assert await outcome_series(client, server) == before  # nothing of the batch was counted
    # A name without a check has no range to keep.
    status, body = await report(
        client, server, [{"request_id": second, "name": "rating", "value": 3}]
    )
    assert (status, body["accepted"]) == (200, 1)
