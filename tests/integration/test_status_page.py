"""The status page, `GET /ui`, in a real headless Chromium against a running proxy: it shows each
route's name, state and share, charts of the last hour of analysis rounds per variant, each check's
bound against its limit, durations in words and times in UTC (whatever the browser's time zone),
follows a rollback made through the API without a reload (segments included), asks for the token
when reads are protected, and runs without a script error or a policy violation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.app.server import Server
from tests.integration.chromium import MISSING, Browser
from tests.integration.conftest import ProxyFactory, route_yaml, url_of

TOKEN = "status-page-test-token-0123456789abcdef"
ROUTE = '[data-route="models"]'
ZONE = "Asia/Kolkata"  # the browser's time zone: UTC + 5:30, so a local time shows as wrong


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    found = Browser.find(tmp_path / "chromium")
    if found is None:
        pytest.skip(MISSING)
    await found.start()
    try:
        yield found
    finally:
        await found.close()


def routes(stable: str, candidate: str) -> str:
    extra = (
        "    segments:\n"
        '      - {name: staff, when: {"header:X-Group": [staff]}, variant: candidate}\n'
        "    analysis: {interval: 200ms, method: fixed, window: 2s, min_requests: 5}\n"
    )
    return route_yaml(stable, candidate, share=0.2, extra=extra).replace(
        "    ramp: {base: 0.2}\n", "    ramp: {base: 0.2, slope: 0.1, per: 1h, max: 0.8}\n"
    )


async def traffic(client: aiohttp.ClientSession, server: Server, count: int) -> None:
    for i in range(count):
        async with client.get(server.proxy_url + "/p", headers={"X-User-Id": f"u{i % 200}"}) as r:
            await r.read()


@contextlib.asynccontextmanager
async def steady_traffic(client: aiohttp.ClientSession, server: Server) -> AsyncIterator[None]:
    """Requests from 200 users in turn, one after the other, while the block runs (at most
    20 000 of them)."""
    task = asyncio.create_task(traffic(client, server, 20_000))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def text(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent"


def texts(selector: str) -> str:
    return f"[...document.querySelectorAll({json.dumps(selector)})].map((n) => n.textContent)"


def chart(name: str) -> str:
    return f"{ROUTE} svg[data-chart={name}]"


async def test_the_page_charts_the_last_hour_and_shows_a_rollback_without_a_reload(
    upstreams, start_proxy: ProxyFactory, client, browser: Browser, *, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    stable, candidate = upstreams
    server = await start_proxy(routes(url_of(stable), url_of(candidate)))
    async with client.get(server.admin_url + "/ui") as page:
        assert page.status == 200 and page.content_type == "text/html"
        policy = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert page.headers["X-Frame-Options"] == "DENY"
    await browser.use_timezone(ZONE)
    await browser.open(server.admin_url + "/ui")
    await browser.until(f"{text(ROUTE + ' [data-field=state]')} === 'ramping'")
    assert await browser.evaluate(text(ROUTE + " h2")) == "models"
    assert await browser.evaluate(text(ROUTE + " [data-field=share]")) == "20.0 %"
    assert await browser.evaluate(texts(ROUTE + " [data-field=segments] li")) == [
        "staff: pinned to candidate"
    ]
    assert (
        await browser.evaluate(f"document.querySelectorAll('{ROUTE} svg.ramp polyline').length")
        == 1
    )

    async with steady_traffic(client, server):
        # Each chart gets lines of both variants (the share: the candidate's alone).
        for name in ("error_rate", "latency"):
            for variant in ("stable", "candidate"):
                await browser.until(
                    f"document.querySelector('{chart(name)} polyline.line.{variant}') !== null"
                )
            await browser.until(
                f"Number(document.querySelector('{chart(name)}').dataset.points) > 4"
            )
        await browser.until(
            f"Number(document.querySelector('{chart('share')}').dataset.points) > 1"
        )
        await browser.until(f"document.querySelector('{ROUTE} [data-check=latency]') !== null")
        await browser.until(f"{text(ROUTE + ' [data-check=error_rate]')}.includes('bound')")
    await browser.until(
        f"document.querySelectorAll('{ROUTE} [data-variant] td')[1].textContent !== '0'"
    )
    errors = await browser.evaluate(texts(ROUTE + " [data-check=error_rate] td"))
    assert errors[0] == "errors" and errors[3] == "limit +1.0 pt", errors
    assert re.fullmatch(
        r"candidate \u2212 stable (≤|≥|between) .* pt \(\d+\.\d+ % bounds?\)", errors[2]
    )
    latency = await browser.evaluate(texts(ROUTE + " [data-check=latency] td"))
    assert latency[0] == "latency p95" and latency[3] == "limit 1.50\u00d7", latency

    # Durations in words, not seconds; times in UTC, labelled so, whatever the browser's zone.
    page = await browser.evaluate("document.body.innerText")
    assert "+10.0 % per hour" in page and "every 200 ms" in page and "3600" not in page
    assert await browser.evaluate("[duration(200), duration(5400), duration(1.5), per(86400)]") == [
        "3 min 20 s",
        "1 h 30 min",
        "1.5 s",
        "per day",
    ]
    ticks = await browser.evaluate(texts(chart("error_rate") + " text.time"))
    assert ticks and all(re.fullmatch(r"\d\d:\d\d(:\d\d)? UTC", tick) for tick in ticks), ticks
    shown = (await browser.evaluate(text("#updated"))).removeprefix("Updated ").removesuffix(".")
    page_clock = datetime.strptime(shown, "%H:%M:%S UTC").replace(tzinfo=UTC)
    now = datetime.now(UTC).replace(year=1900, month=1, day=1)
    behind = (now - page_clock).total_seconds() % 86400  # (the page's time of day, not 5 h 30 away)
    assert behind < 10 or behind > 86400 - 1, (shown, now)

    async with client.post(
        server.admin_url + "/routes/models/rollback",
        json={"reason": "<b>answers</b> got worse"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as answer:
        assert answer.status == 200
    took = await browser.until(f"{text(ROUTE + ' [data-field=state]')} === 'rolled_back'")
    print(f"\nthe page showed the rollback {took:.2f} s after the API made it, without a reload")
    assert took < 4.0  # within two refreshes (every 2 s), whatever the load
    assert await browser.evaluate(text(ROUTE + " [data-field=share]")) == "0.0 %"
    assert await browser.evaluate(texts(ROUTE + " [data-field=segments] li")) == [
        "staff: stable — the rollback overrides its pin to candidate"
    ]
    history = await browser.evaluate(text(ROUTE + " [data-field=history]"))
    assert "rollback" in history and "<b>answers</b> got worse" in history  # as text, not markup
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", history), history
    assert await browser.evaluate(f"document.querySelectorAll('{ROUTE} b').length") == 0
    # The rollback is marked on the charts, and the share drawn at 0 after it.
    await browser.until(f"{texts(chart('share') + ' text.mark')}.includes('rollback')")
    await browser.until(
        f"[...document.querySelectorAll('{chart('share')} circle.point')].at(-1)"
        ".querySelector('title').textContent.endsWith('candidate 0 %')"
    )
    shot = await browser.screenshot()
    (tmp_path / "status-page.png").write_bytes(shot)
    assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
    assert browser.errors == []


async def test_with_protected_reads_the_page_asks_for_the_token_and_then_shows_the_routes(
    upstreams, start_proxy: ProxyFactory, browser: Browser, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    stable, candidate = upstreams
    server = await start_proxy(
        routes(url_of(stable), url_of(candidate))
        + "admin: {token_env: GRAYSCALE_ADMIN_TOKEN, protect_reads: true}\n"
    )
    await browser.open(server.admin_url + "/ui")
    await browser.until("!document.getElementById('login').hidden")
    assert await browser.evaluate(f"document.querySelector('{ROUTE}') === null")
    assert "needs the admin token" in await browser.evaluate(text("#problem"))
    await browser.evaluate(
        f"document.getElementById('token').value = {json.dumps(TOKEN)};"
        "document.getElementById('login').requestSubmit()"
    )
    await browser.until(f"{text(ROUTE + ' [data-field=state]')} === 'ramping'")
    assert await browser.evaluate("document.getElementById('login').hidden")
    assert await browser.evaluate("document.cookie") == ""  # the token stays in the tab
    # (the 401 answers before the token was given are logged by the browser as failed loads)
    assert all("401" in error for error in browser.errors), browser.errors


async def test_status_gives_the_page_when_the_ramp_reaches_its_max_and_the_action_history(
    upstreams, start_proxy: ProxyFactory, client, monkeypatch
):
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", TOKEN)
    stable, candidate = upstreams
    server = await start_proxy(routes(url_of(stable), url_of(candidate)))

    async def status() -> dict[str, Any]:
        async with client.get(server.admin_url + "/status") as answer:
            (route,) = (await answer.json())["routes"]
            return dict(route)

    route = await status()
    started = route["rollout"]["started_at"]
    # 20 % + 10 % an hour up to 80 %: six hours after the start
    assert route["ramp"]["reaches_max_at"] == pytest.approx(started + 6 * 3600, abs=1.0)
    assert route["history"] == []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for action in ("pause", "resume", "rollback"):
        async with client.post(
            f"{server.admin_url}/routes/models/{action}", json={"reason": action}, headers=auth
        ) as answer:
            assert answer.status == 200
    route = await status()
    assert [t["action"] for t in route["history"]] == ["rollback", "resume", "pause"]
    assert route["history"][0] == route["last_transition"]
    assert route["ramp"]["reaches_max_at"] is None  # rolled back: the ramp no longer runs
