"""Automatic analysis end to end: real upstreams, real load, real rollbacks."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Callable
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
from tests.support.paths import ROOT
from tests.support.upstream import PROBE, url_of
from tests.support.waiting import eventually

INTERVAL = 0.5
FAILURES = 3


def in_flight(server: Server) -> float:
    """The requests the proxy is forwarding now, to either variant."""
    registry = server.recorder.registry
    return sum(
        registry.get_sample_value(
            "grayscale_in_flight_requests", {"route": "models", "variant": variant}
        )
        or 0.0
        for variant in ("stable", "candidate")
    )


def analysed_config(
    stable: str,
    candidate: str,
    *,
    state: str = "{backend: memory}",
    min_requests: int = 60,
    ramp: str = "{base: 0.5}",
    extra: str = "",
    analysis: str = "window: 2s",
    ejection: bool = False,
) -> str:
    """One analysed route (`analysis`: more of its analysis fields; the default ejection when
    `ejection`, else none)."""
    route = route_yaml(stable, candidate).replace("    ramp: {base: 0.5}\n", f"    ramp: {ramp}\n")
    return (
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        f"state: {state}\nroutes:\n{route}"
        f"    analysis: {{interval: {int(INTERVAL * 1000)}ms, {analysis}, "
        f"min_requests: {min_requests}, failures_before_rollback: {FAILURES}}}\n"
        + ("" if ejection else "    ejection: false\n")
        + extra
    )


async def drive(
    client: aiohttp.ClientSession,
    server: Server,
    seconds: float,
    *,
    concurrency: int = 16,
    pause: float = 0.0,
    until: Callable[[], bool] = lambda: False,
) -> list[str]:
    """Send requests from random users for `seconds` (or until `until()`); their variants."""
    deadline = time.monotonic() + seconds
    rng = random.Random(4)
    variants: list[str] = []

    async def worker() -> None:
        while time.monotonic() < deadline and not until():
            uid = f"user-{rng.randrange(100_000)}"
            async with client.get(server.proxy_url + "/v1/p", headers={"X-User-Id": uid}) as r:
                await r.read()
                variants.append(r.headers["X-Grayscale-Variant"])
            if pause:
                await asyncio.sleep(pause)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return variants


async def test_candidate_with_ten_percent_errors_is_rolled_back_fast_and_for_good(
    upstreams, client, tmp_path
):
    stable, candidate = upstreams
    candidate.app[PROBE].error_rate = 0.10
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=500 if len(received) == 1 else 204)  # the first one fails

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    text = analysed_config(
        url_of(stable),
        url_of(candidate),
        state=f"{{path: {tmp_path / 'state.json'}}}",
        extra=f'    on_rollback: {{webhook: "{url_of(receiver)}/hook", timeout: 2s}}\n',
    )
    server = Server(parse_config(text))
    await server.start()
    try:
        started = time.monotonic()

        def rolled_back() -> bool:
            return server.controller.state("models", time.time()) is State.ROLLED_BACK

        await drive(client, server, 10, until=rolled_back)
        elapsed = time.monotonic() - started
        assert rolled_back()
        # Failed verdicts from the first round on: FAILURES rounds, plus one for scheduling.
        print(f"\nrolled back {elapsed:.2f} s after the bad traffic began")
        assert elapsed <= FAILURES * INTERVAL + INTERVAL + 0.5, elapsed
        assert await eventually(lambda: in_flight(server) == 0)  # (decided before the rollback)
        seen_by_candidate = candidate.app[PROBE].requests
        after = await drive(client, server, 1.0)
        assert set(after) == {"stable"}
        assert candidate.app[PROBE].requests == seen_by_candidate
        last = server.controller.rollout("models").last
        assert last.actor == "analysis" and last.reason.startswith("analysis: error_rate")
        # (the webhook's retry comes after 0.5 s)
        assert await eventually(lambda: len(received) >= 2, within=5)
        assert len(received) == 2 and received[0] == received[1]
        payload = received[1]
        assert (payload["event"], payload["route"], payload["actor"]) == (
            "rollback",
            "models",
            "analysis",
        )
        error_check = payload["verdict"]["checks"][0]
        assert error_check["check"] == "error_rate" and error_check["result"] == "fail"
        assert error_check["candidate"]["requests"] >= 60
    finally:
        await server.stop()
        await receiver.close()

    restarted = Server(parse_config(text))
    await restarted.start()
    try:
        assert restarted.controller.state("models", time.time()) is State.ROLLED_BACK
        assert set(await drive(client, restarted, 0.5)) == {"stable"}
    finally:
        await restarted.stop()


async def test_candidate_three_times_slower_is_rolled_back(upstreams, client):
    stable, candidate = upstreams
    stable.app[PROBE].delay = 0.01
    candidate.app[PROBE].delay = 0.03
    server = Server(parse_config(analysed_config(url_of(stable), url_of(candidate))))
    await server.start()
    try:

        def rolled_back() -> bool:
            return server.controller.state("models", time.time()) is State.ROLLED_BACK

        await drive(client, server, 10, concurrency=24, until=rolled_back)
        assert rolled_back()
        assert server.controller.rollout("models").last.reason.startswith("analysis: latency")
    finally:
        await server.stop()


async def test_candidate_equal_to_stable_is_not_rolled_back(upstreams, client):
    stable, candidate = upstreams
    for upstream in upstreams:
        upstream.app[PROBE].error_rate = 0.01
        upstream.app[PROBE].delay = 0.005
    # (limits that a few seconds of traffic can prove an equal candidate within: a pass is
    # proof, not the absence of a failure)
    limits = "window: 2s, max_error_rate_increase: 0.1, max_latency_ratio: 3"
    text = analysed_config(url_of(stable), url_of(candidate), analysis=limits)
    server = Server(parse_config(text))
    await server.start()

    def passed_four_times() -> bool:
        labels = {"route": "models", "check": "overall", "result": "pass"}
        passes = server.recorder.registry.get_sample_value(
            "grayscale_analysis_verdicts_total", labels
        )
        return (passes or 0) >= 4

    try:
        await drive(client, server, 10.0, until=passed_four_times)
        assert server.controller.state("models", time.time()) is State.RAMPING
        analysis = server.analyzer.routes["models"]
        assert analysis.last is not None and analysis.last.result.value == "pass"
        async with client.get(server.admin_url + "/metrics") as resp:
            families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
        overall_pass = [
            s
            for s in families["grayscale_analysis_verdicts"].samples
            if s.labels == {"route": "models", "check": "overall", "result": "pass"}
        ]
        assert overall_pass and overall_pass[0].value >= 4
        assert families["grayscale_rollbacks"].samples == []
    finally:
        await server.stop()


async def test_thin_traffic_holds_the_ramp_and_never_rolls_back(upstreams, client):
    stable, candidate = upstreams
    candidate.app[PROBE].error_rate = 0.5  # bad, but there is too little traffic to tell
    text = analysed_config(
        url_of(stable),
        url_of(candidate),
        min_requests=500,
        ramp="{base: 0.2, slope: 0.2, per: 1s, max: 1.0}",
    )
    server = Server(parse_config(text))
    await server.start()
    try:
        await drive(client, server, 2.5, concurrency=2, pause=0.05)
        now = time.time()
        assert server.controller.state("models", now) is State.RAMPING
        assert server.controller.holding("models")
        share = server.controller.share("models", now)
        assert share < 0.4  # unheld, the ramp would be past 0.6 by now
        await asyncio.sleep(1.0)  # (time passing: the ramp's slope is 0.2 a second, held)
        assert server.controller.share("models", time.time()) == share
        async with client.get(server.admin_url + "/status") as resp:
            analysis = (await resp.json())["routes"][0]["analysis"]
        assert analysis["holding"] is True
        assert analysis["last_verdict"]["result"] == "inconclusive"
        assert analysis["consecutive_failures"] == 0
    finally:
        await server.stop()


async def test_a_candidate_that_passes_at_its_max_for_promote_after_is_promoted_with_a_webhook(
    upstreams, client, webhook
):
    stable, candidate = upstreams
    hook, received = webhook
    text = analysed_config(
        url_of(stable),
        url_of(candidate),
        ramp="{base: 0.5, max: 0.5}",  # at its max from the start: complete
        extra=f'    promote: {{after: 1500ms}}\n    on_promote: {{webhook: "{hook}"}}\n',
    )
    server = Server(parse_config(text))
    await server.start()
    try:

        def promoted() -> bool:
            return server.controller.state("models", time.time()) is State.PROMOTED

        started = time.monotonic()
        await drive(client, server, 12, until=promoted)
        took = time.monotonic() - started
        assert promoted(), server.analyzer.status(server.config.routes[0])
        print(f"\npromoted {took:.2f} s after the traffic began (promote.after 1.5 s)")
        assert took >= 1.5
        last = server.controller.rollout("models").last
        assert last.actor == "analysis" and "every verdict passed" in (last.reason or "")
        assert set(await drive(client, server, 0.5)) == {"candidate"}
        assert await eventually(lambda: received, within=3)
        assert [(p["event"], p["actor"], p["verdict"]["result"]) for p in received] == [
            ("promote", "analysis", "pass")
        ]
        async with client.get(f"{server.admin_url}/metrics") as answer:
            metrics = await answer.text()
        assert 'grayscale_promotions_total{route="models",trigger="analysis"} 1.0' in metrics
    finally:
        await server.stop()


async def test_a_failing_candidate_is_never_promoted(upstreams, client):
    stable, candidate = upstreams
    candidate.app[PROBE].error_rate = 0.5
    text = analysed_config(
        url_of(stable),
        url_of(candidate),
        ramp="{base: 0.5, max: 0.5}",
        extra="    promote: {after: 500ms}\n",
    )
    server = Server(parse_config(text))
    await server.start()
    try:

        def rolled_back() -> bool:
            return server.controller.state("models", time.time()) is State.ROLLED_BACK

        await drive(client, server, 10, until=rolled_back)
        assert rolled_back()
        assert all(t.action.value != "promote" for t in server.controller.rollout("models").history)
    finally:
        await server.stop()


async def test_every_decision_is_explained_by_the_api_and_in_words(upstreams, client):
    stable, candidate = upstreams
    candidate.app[PROBE].error_rate = 0.3
    server = Server(parse_config(analysed_config(url_of(stable), url_of(candidate))))
    await server.start()
    try:

        def rolled_back() -> bool:
            return server.controller.state("models", time.time()) is State.ROLLED_BACK

        await drive(client, server, 10, until=rolled_back)
        async with client.get(f"{server.admin_url}/routes/models/verdicts") as answer:
            found = await answer.json()
        async with client.get(f"{server.admin_url}/routes/nope/verdicts") as answer:
            assert answer.status == 404
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "explain", "models", "--admin", server.admin_url,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        await server.stop()
    verdicts = found["verdicts"]
    assert found["analysis"] is True and verdicts[0]["action"] == "rollback"
    assert verdicts[0]["consecutive_failures"] == FAILURES
    assert [v["result"] for v in verdicts[:FAILURES]] == ["fail"] * FAILURES
    check = verdicts[0]["checks"][0]
    assert check["check"] == "error_rate" and check["candidate"]["requests"] >= 60
    assert {"threshold", "bound", "observed", "note"} <= set(check)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert f"fail, rolled back ({FAILURES} failed verdicts in a row):" in text
    assert "  fail: candidate error rate " in text and "(allowed: 1.0 points)" in text
    assert ": proven worse than allowed" in text


async def test_a_sample_ratio_mismatch_holds_the_ramp_and_rolls_nothing_back(upstreams, client):
    stable, candidate = upstreams
    text = analysed_config(
        url_of(stable), url_of(candidate), ramp="{base: 0.3, slope: 0.1, per: 1s}"
    )
    server = Server(parse_config(text))
    await server.start()
    rng = random.Random(9)
    try:

        async def user() -> None:
            for _ in range(120):
                uid = f"user-{rng.randrange(100_000)}"
                async with client.get(
                    server.proxy_url + "/v1/p", headers={"X-User-Id": uid}
                ) as answer:
                    await answer.read()
                    repeats = 2 if answer.headers["X-Grayscale-Variant"] == "candidate" else 0
                for _ in range(repeats):  # a client that asks again when the candidate answers
                    async with client.get(
                        server.proxy_url + "/v1/p", headers={"X-User-Id": uid}
                    ) as answer:
                        await answer.read()

        await asyncio.gather(*(user() for _ in range(8)))

        def judged() -> bool:  # (on the requests above: a round every INTERVAL)
            verdict = server.analyzer.routes["models"].last
            return verdict is not None and verdict.result.value == "error"

        assert await eventually(judged, within=INTERVAL * 4), server.analyzer.routes["models"].last
        verdict = server.analyzer.routes["models"].last
        assert verdict is not None
        assert (
            verdict.checks[-1].name == "sample_ratio" and verdict.checks[-1].result.value == "fail"
        )
        assert server.controller.holding("models")
        assert server.controller.state("models", time.time()) is not State.ROLLED_BACK
        async with client.get(f"{server.admin_url}/metrics") as answer:
            metrics = await answer.text()
        assert 'check="sample_ratio",result="fail",route="models"' in metrics
        assert 'check="overall",result="error",route="models"' in metrics
    finally:
        await server.stop()


async def test_the_sequential_method_rolls_back_a_bad_candidate_on_everything_since_it_began(
    upstreams, client
):
    stable, candidate = upstreams
    candidate.app[PROBE].error_rate = 0.3
    text = analysed_config(url_of(stable), url_of(candidate), analysis="window: 1s").replace(
        "failures_before_rollback", "method: sequential, failures_before_rollback"
    )
    server = Server(parse_config(text))
    await server.start()
    try:

        def rolled_back() -> bool:
            return server.controller.state("models", time.time()) is State.ROLLED_BACK

        started = time.monotonic()
        await drive(client, server, 15, until=rolled_back)
        print(f"\nsequential: rolled back {time.monotonic() - started:.2f} s after the traffic")
        assert rolled_back()
        verdict = server.analyzer.routes["models"].last
        assert verdict is not None and verdict.method.value == "sequential"
        # Its counts are everything since the rollout began: a 1 s window would have emptied.
        await asyncio.sleep(1.5)  # (time passing: past the window)
        _, candidate_sample = server.observations.samples("models", time.time())
        assert candidate_sample.requests >= verdict.checks[0].candidate["requests"] > 0
    finally:
        await server.stop()


def production_config(stable: str, candidate: str, *, ramp: str, min_requests: int) -> str:
    """A route as production runs it: default ejection, a ramp that moves on thin data."""
    return analysed_config(
        stable,
        candidate,
        ramp=ramp,
        min_requests=min_requests,
        analysis="on_inconclusive: continue",
        ejection=True,
    )


@pytest.mark.slow  # (a ramp with an incident on both variants: about 11 s)
@pytest.mark.timeout(90)
async def test_equal_candidates_survive_an_incident_on_both_while_the_share_ramps(
    upstreams, client
):
    # The share climbs from 5 % to 65 % in 10 s; from 6 s to 8.5 s both variants fail 20 % of
    # their requests. Counted since the start without regard to when, the candidate's requests
    # fall in the incident far more often than stable's (its share is highest then), and its
    # error rate looks several points worse; compared at the same moments, it is not.
    stable, candidate = upstreams
    text = production_config(
        url_of(stable),
        url_of(candidate),
        ramp="{base: 0.05, slope: 0.6, per: 10s, max: 0.65}",
        min_requests=60,
    )
    server = Server(parse_config(text))
    await server.start()
    try:

        async def incident() -> None:
            await asyncio.sleep(6.0)  # (time passing: the incident's schedule)
            for upstream in upstreams:
                upstream.app[PROBE].error_rate = 0.2
            await asyncio.sleep(2.5)
            for upstream in upstreams:
                upstream.app[PROBE].error_rate = 0.0

        variants, _ = await asyncio.gather(drive(client, server, 11.0), incident())
        assert variants.count("candidate") > 1000  # (enough to judge: the point of the test)
        assert server.controller.state("models", time.time()) is State.COMPLETE  # at its max
        history = server.analyzer.verdicts("models") or []
        words = [v["checks"][0]["result"] for v in history]
        assert "pass" in words, history[:1]  # (judged, and proven within)
        assert "fail" not in words, history  # (looking worse for a round holds; never fails)
    finally:
        await server.stop()


class Script(random.Random):
    """A random source that plays given draws, then repeats the last `cycle` of them."""

    def __init__(self, draws: list[float], cycle: int) -> None:
        super().__init__(0)
        self.draws, self.cycle, self.index = draws, cycle, 0

    def random(self) -> float:
        draws = self.draws
        index = self.index
        self.index += 1
        if index >= len(draws):
            index = len(draws) - self.cycle + (index - len(draws)) % self.cycle
        return draws[index]


async def test_a_candidate_failing_half_its_requests_is_rolled_back_though_it_is_ejected(
    upstreams, client
):
    # Thirty alternating answers, then five 500s in a row: the default ejection sends the
    # candidate's users to stable for 30 s from its 35th request on. Those requests are still
    # the candidate's assignment (the sample-ratio check sees no mismatch) and never stable's
    # successes, nor are stable's own meanwhile (nothing of the candidate's to compare them
    # with), so the 35 it answered, 20 of them 500s, against stable's as many before, roll it
    # back.
    stable, candidate = upstreams
    error, ok = 0.0, 0.99
    candidate.app[PROBE].error_rate = 0.5
    candidate.app[PROBE].rng = Script([error, ok] * 15 + [error] * 5 + [ok, error], cycle=2)
    server = Server(
        parse_config(
            production_config(
                url_of(stable), url_of(candidate), ramp="{base: 0.5}", min_requests=10
            )
        )
    )
    await server.start()
    try:
        fallbacks: list[str] = []

        def rolled_back() -> bool:
            return server.controller.state("models", time.time()) is State.ROLLED_BACK

        deadline = time.monotonic() + 8.0
        rng = random.Random(5)
        while time.monotonic() < deadline and not rolled_back():
            uid = f"user-{rng.randrange(100_000)}"
            async with client.get(server.proxy_url + "/v1/p", headers={"X-User-Id": uid}) as r:
                await r.read()
                fallbacks.append(r.headers.get("X-Grayscale-Fallback", ""))
            await asyncio.sleep(0.002)  # (one user after another, at a steady pace)
        assert "ejected" in fallbacks  # (the ejection took the candidate's users to stable)
        assert rolled_back()
        assert candidate.app[PROBE].requests == 35  # all it saw before the ejection
        last = server.controller.rollout("models").last
        assert last.reason.startswith("analysis: error_rate"), last.reason
        verdict = (server.analyzer.verdicts("models") or [{}])[0]
        ratio = next(c for c in verdict["checks"] if c["check"] == "sample_ratio")
        assert ratio["result"] != "fail"
    finally:
        await server.stop()
