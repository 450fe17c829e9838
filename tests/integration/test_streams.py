"""Token streams through the proxy: time to first token (not first byte), output tokens from the
final usage frame, and a stream that breaks after its 200 counted as an error of its variant,
which the analysis rolls back."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app.server import Server
from proxy.config.loader import parse_config
from proxy.rollout.machine import State
from tests.support.openai_server import ModelServer
from tests.support.upstream import serving

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
async def pair() -> AsyncIterator[tuple[ModelServer, ModelServer, str, str]]:
    stable, candidate = ModelServer("stable"), ModelServer("candidate")
    async with serving(stable.app(), candidate.app()) as (stable_url, candidate_url):
        yield stable, candidate, stable_url, candidate_url


async def serve(stable: str, candidate: str, share: float, analysis: str = "") -> Server:
    server = Server(
        parse_config(
            'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
            "state: {backend: memory}\n"
            "routes:\n"
            "  - name: chat\n"
            "    match: {path_prefix: /v1/}\n"
            f'    stable: {{url: "{stable}"}}\n'
            f'    candidate: {{url: "{candidate}"}}\n'
            '    cohort: {keys: ["header:X-User-Id"]}\n'
            f"    ramp: {{base: {share}}}\n"
            "    ejection: false\n" + analysis,
            "test.yaml",
        )
    )
    await server.start()
    return server


async def chat(
    client: aiohttp.ClientSession, server: Server, user: str, stream: bool = True
) -> str:
    """Ask for a completion; the text received (a broken stream gives what came before)."""
    async with client.post(
        f"{server.proxy_url}/v1/chat/completions",
        json={**CHAT, "stream": stream},
        headers={"X-User-Id": user},
    ) as response:
        assert response.status == 200
        if not stream:
            return str((await response.json())["choices"][0]["message"]["content"])
        text = ""
        try:
            async for line in response.content:
                if line.startswith(b"data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        text += choice["delta"].get("content") or ""
        except aiohttp.ClientPayloadError:
            text += "<broken>"
        return text


async def metrics(client: aiohttp.ClientSession, server: Server) -> dict[str, float]:
    """The chat route's samples (histogram buckets left out), keyed `name:variant:other`."""
    async with client.get(f"{server.admin_url}/metrics") as response:
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("route") == "chat" and "variant" in labels and "le" not in labels:
                other = labels.get("reason") or labels.get("code_class") or ""
                key = f"{sample.name}:{labels['variant']}:{other}"
                samples[key] = sample.value
    return samples


async def test_time_to_first_token_waits_for_content_and_tokens_come_from_usage(pair):
    stable, _, stable_url, candidate_url = pair
    stable.first_token_delay = 0.3  # the role-only frame comes at once, the first token later
    server = await serve(stable_url, candidate_url, share=0.0)
    try:
        async with aiohttp.ClientSession() as client:
            assert await chat(client, server, "u1") == "Hello, world!"
            assert await chat(client, server, "u2", stream=False) == "Hello, world!"
            seen = await metrics(client, server)
    finally:
        await server.stop()
    # The stream: first byte at once (the role frame), first token after 0.3 s. The whole
    # answer: both when its body came, after 0.3 s.
    assert seen["grayscale_time_to_first_token_seconds_count:stable:"] == 2
    ttft = seen["grayscale_time_to_first_token_seconds_sum:stable:"]
    ttfb = seen["grayscale_upstream_time_to_first_byte_seconds_sum:stable:"]
    assert 0.6 <= ttft < 0.9, ttft
    assert 0.3 <= ttfb < 0.6, ttfb  # 0.3 s of it is the whole answer's; the stream's was ~0
    assert seen["grayscale_output_tokens_total:stable:"] == 8  # 4 streamed + 4 whole
    assert seen["grayscale_output_tokens_total:candidate:"] == 0


async def test_a_stream_cut_after_its_200_is_a_candidate_error_and_is_rolled_back(pair):
    _, candidate, stable_url, candidate_url = pair
    candidate.reset_after = 2  # two tokens, then the connection drops
    analysis = (
        "    analysis: {interval: 300ms, window: 3s, min_requests: 30, "
        "failures_before_rollback: 2}\n"
    )
    server = await serve(stable_url, candidate_url, share=0.5, analysis=analysis)
    rng = random.Random(7)
    texts: list[str] = []
    try:
        async with aiohttp.ClientSession() as client:

            async def user() -> None:
                deadline = time.monotonic() + 8
                while time.monotonic() < deadline:
                    if server.controller.state("chat", time.time()) is State.ROLLED_BACK:
                        return
                    texts.append(await chat(client, server, f"user-{rng.randrange(10**6)}"))

            await asyncio.gather(*(user() for _ in range(8)))
            seen = await metrics(client, server)
            after = [await chat(client, server, f"late-{i}") for i in range(20)]
    finally:
        await server.stop()
    assert "Hello,<broken>" in texts  # the client saw the stream break, not a clean end
    assert seen["grayscale_upstream_errors_total:candidate:reset"] > 0
    assert seen["grayscale_requests_total:candidate:error"] > 0
    assert server.controller.state("chat", time.time()) is State.ROLLED_BACK
    assert after == ["Hello, world!"] * 20  # every user on stable since


async def test_the_analysis_judges_time_to_first_token(pair):
    _, candidate, stable_url, candidate_url = pair
    candidate.first_token_delay = 0.2  # its first byte (the role frame) is as quick as stable's
    analysis = (
        "    analysis: {interval: 300ms, window: 5s, min_requests: 20, latency: ttft, "
        "max_latency_ratio: 3, failures_before_rollback: 2}\n"
    )
    server = await serve(stable_url, candidate_url, share=0.5, analysis=analysis)
    rng = random.Random(8)
    try:
        async with aiohttp.ClientSession() as client:

            async def user() -> None:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if server.controller.state("chat", time.time()) is State.ROLLED_BACK:
                        return
                    await chat(client, server, f"user-{rng.randrange(10**6)}")

            # (some 300 requests of each variant prove it: 24 users send them in 3 s)
            await asyncio.gather(*(user() for _ in range(24)))
    finally:
        await server.stop()
    rollout = server.controller.rollout("chat")
    assert server.controller.state("chat", time.time()) is State.ROLLED_BACK
    assert rollout.last is not None and "latency" in (rollout.last.reason or ""), rollout.last
