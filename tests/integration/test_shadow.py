"""Shadow comparison through a real proxy: copies of stable's requests go to the candidate after
the user's answer, never slowing it; the answers are compared; a gate holds the ramp until they
agree enough."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.app.server import Server
from proxy.config.loader import parse_config
from proxy.rollout.machine import State
from tests.support.upstream import serving
from tests.support.waiting import eventually


@dataclass
class Scorer:
    """A sentiment model: `negation_aware` ones read "not good" as negative."""

    negation_aware: bool
    hang: bool = False
    copies: int = 0

    def app(self) -> web.Application:
        async def answer(request: web.Request) -> web.Response:
            text = (await request.json())["text"]
            if request.headers.get("X-Grayscale-Shadow") == "1":
                self.copies += 1
            if self.hang:
                await asyncio.sleep(60)
            negative = "bad" in text or (self.negation_aware and "not" in text)
            return web.json_response({"label": "negative" if negative else "positive"})

        app = web.Application()
        app.router.add_post("/v1/predict", answer)
        return app


@pytest.fixture
async def scorers() -> AsyncIterator[tuple[Scorer, Scorer, str, str]]:
    stable, candidate = Scorer(negation_aware=False), Scorer(negation_aware=True)
    async with serving(stable.app(), candidate.app()) as (stable_url, candidate_url):
        yield stable, candidate, stable_url, candidate_url


async def serve(stable: str, candidate: str, shadow: str, ramp: str = "{base: 0.2}") -> Server:
    server = Server(
        parse_config(
            'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
            "state: {backend: memory}\n"
            "routes:\n"
            "  - name: scorer\n"
            "    match: {path_prefix: /v1/}\n"
            f'    stable: {{url: "{stable}"}}\n'
            f'    candidate: {{url: "{candidate}"}}\n'
            '    cohort: {keys: ["header:X-User-Id"]}\n'
            f"    ramp: {ramp}\n" + (f"    shadow: {shadow}\n" if shadow else ""),
            "test.yaml",
        )
    )
    await server.start()
    return server


async def predict(
    client: aiohttp.ClientSession, server: Server, text: str, user: str
) -> tuple[str, str, float]:
    """The label a user got, the variant that answered, and how long it took (seconds)."""
    started = time.perf_counter()
    async with client.post(
        f"{server.proxy_url}/v1/predict", json={"text": text}, headers={"X-User-Id": user}
    ) as answer:
        assert answer.status == 200
        label = (await answer.json())["label"]
        variant = answer.headers["X-Grayscale-Variant"]
    return label, variant, time.perf_counter() - started


async def shadow_status(client: aiohttp.ClientSession, server: Server) -> dict[str, Any]:
    async with client.get(f"{server.admin_url}/status") as answer:
        route = (await answer.json())["routes"][0]
    return {**route["shadow"], "state": route["state"], "share_now": route["share"]}


async def until_compared(client: aiohttp.ClientSession, server: Server, n: int) -> dict[str, Any]:
    """The shadow's status once it has compared `n` answers."""
    seen: dict[str, Any] = {}

    async def compared() -> bool:
        nonlocal seen
        seen = await shadow_status(client, server)
        return bool(sum(seen["comparisons"].values()) >= n)

    assert await eventually(compared, within=6), f"fewer than {n} comparisons: {seen}"
    return seen


async def until_settled(client: aiohttp.ClientSession, server: Server) -> dict[str, Any]:
    """The shadow's status once no copy is in flight any more."""
    seen: dict[str, Any] = {}

    async def settled() -> bool:
        nonlocal seen
        seen = await shadow_status(client, server)
        return bool(seen["in_flight"] == 0)

    assert await eventually(settled, within=5), f"copies still in flight: {seen}"
    return seen


async def test_the_agreement_rate_on_a_seeded_set_of_equal_and_different_answers(scorers, client):
    _, candidate, stable_url, candidate_url = scorers
    server = await serve(stable_url, candidate_url, "{share: 1.0, compare: {json: [label]}}")
    rng = random.Random(11)
    texts = [rng.choice(["good film", "bad film", "not good film", "fine"]) for _ in range(200)]
    try:
        served = [await predict(client, server, text, f"user-{i}") for i, text in enumerate(texts)]
        copied = [
            text for text, (_, variant, _) in zip(texts, served, strict=True) if variant == "stable"
        ]
        seen = await until_compared(client, server, len(copied))
        async with client.get(f"{server.admin_url}/metrics") as answer:
            metrics = await answer.text()
    finally:
        await server.stop()
    # Every request stable answered was copied (share 1.0), and the candidate differs exactly
    # on the negations it reads differently.
    differ = sum("not" in text for text in copied)
    assert 100 < len(copied) < 200 and candidate.copies == len(copied)
    assert seen["comparisons"] == {"agree": len(copied) - differ, "differ": differ, "error": 0}
    assert seen["agreement"] == (len(copied) - differ) / len(copied)
    low, high = seen["agreement_interval"]
    assert low < seen["agreement"] < high and high - low < 0.2
    samples = {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "grayscale_shadow_comparisons_total"
    }
    assert samples == {"agree": len(copied) - differ, "differ": differ}


async def test_a_shadow_upstream_that_hangs_does_not_change_the_users_latency(scorers, client):
    _, candidate, stable_url, candidate_url = scorers
    candidate.hang = True
    plain = await serve(stable_url, candidate_url, "", ramp="{base: 0}")
    shadowed = await serve(
        stable_url, candidate_url, "{share: 1.0, max_in_flight: 8, timeout: 1s}", ramp="{base: 0}"
    )
    latencies: dict[str, list[float]] = {"plain": [], "shadowed": []}
    try:
        for i in range(60):  # alternating, so both see the same machine
            for name, server in (("plain", plain), ("shadowed", shadowed)):
                label, variant, took = await predict(client, server, "good", f"user-{i}")
                assert (label, variant) == ("positive", "stable")
                latencies[name].append(took)
        seen = await shadow_status(client, shadowed)
        assert seen["in_flight"] == 8 and seen["dropped"] == 52  # bounded, the rest dropped
        seen = await until_settled(client, shadowed)  # (their timeout: 1 s)
    finally:
        await plain.stop()
        await shadowed.stop()
    plain_p50 = statistics.median(latencies["plain"])
    shadowed_p50 = statistics.median(latencies["shadowed"])
    print(
        f"\nuser latency p50: {plain_p50 * 1000:.2f} ms plain, {shadowed_p50 * 1000:.2f} ms with a "
        f"hanging shadow; max {max(latencies['shadowed']) * 1000:.1f} ms"
    )
    assert shadowed_p50 < plain_p50 * 1.5 + 0.002
    assert max(latencies["shadowed"]) < 0.5  # never waits for the hanging candidate (60 s)
    assert seen["comparisons"] == {"agree": 0, "differ": 0, "error": 8}
    assert seen["in_flight"] == 0


async def test_the_gate_holds_the_ramp_until_enough_comparisons_agree(scorers, client):
    _, candidate, stable_url, candidate_url = scorers
    shadow = "{share: 1.0, compare: {json: [label]}, min_agreement: 0.95, min_comparisons: 40}"
    server = await serve(stable_url, candidate_url, shadow, ramp="{base: 0.5}")
    try:
        # Waiting at its start: nobody gets the candidate, whatever the ramp's base says.
        for i in range(60):
            _, variant, _ = await predict(client, server, "not good" if i % 3 else "fine", f"u{i}")
            assert variant == "stable"
        seen = await until_compared(client, server, 60)
        assert seen["agreement"] < 0.95 and seen["gate"]["open"] is False
        assert seen["gate"]["recent_comparisons"] == 40
        assert (seen["state"], seen["share_now"]) == ("pending", 0.0)
        # The candidate is fixed to answer as stable does: the last 40 comparisons agree, and
        # the gate opens.
        candidate.negation_aware = False
        for i in range(100):
            await predict(client, server, "fine", f"v{i}")
            if (await shadow_status(client, server))["gate"]["open"]:
                break
        seen = await shadow_status(client, server)
        assert seen["gate"]["open"] is True and seen["gate"]["recent_agreement"] >= 0.95
        assert await eventually(
            lambda: server.controller.state("scorer", time.time()) is State.RAMPING, within=2
        )
        variants = [(await predict(client, server, "fine", f"w{i}"))[1] for i in range(200)]
        assert 60 < variants.count("candidate") < 140  # the ramp's base: half the users
    finally:
        await server.stop()


async def test_shadow_copies_are_bounded_in_bytes_as_well_as_in_number(scorers, client):
    _, candidate, stable_url, candidate_url = scorers
    candidate.hang = True
    shadow = "{share: 1.0, max_in_flight: 64, max_bytes_in_flight: 3145728, timeout: 1s}"
    server = await serve(stable_url, candidate_url, shadow, ramp="{base: 0}")
    text = "good" + " " * (900 * 1024)  # a 900 KiB request: a copy holds it until it is done
    try:
        for i in range(16):
            async with client.post(
                f"{server.proxy_url}/v1/predict",
                json={"text": text},
                headers={"X-User-Id": f"u{i}"},
            ) as answer:
                assert answer.status == 200
        seen = await shadow_status(client, server)
        assert seen["in_flight"] == 3 and seen["dropped"] == 13  # (64 by number alone)
        assert 2700 * 1024 < seen["bytes_in_flight"] <= 3 * 1024 * 1024
        seen = await until_settled(client, server)  # (their timeout: 1 s)
        assert (seen["in_flight"], seen["bytes_in_flight"]) == (0, 0)
    finally:
        await server.stop()
