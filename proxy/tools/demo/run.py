"""`grayscale demo`: toy model servers, the proxy in front of them, and synthetic users."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from proxy.app.server import Server
from proxy.config.model import Config, Route
from proxy.dataplane.forwarding import REQUEST_ID_HEADER, VARIANT_HEADER
from proxy.rollout.machine import Transition
from proxy.tools.demo.models import CANDIDATE_MODEL, STABLE_MODEL, ModelSpec, build_model_app

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
USERS = 2000
REPORT_EVERY = 2.0
# What each text means: users click more often on answers that get it right, and rarely on slow
# ones (more than SLOW seconds to the first byte).
_TRUTH = {
    "I love it, great and fast": "positive",
    "not good at all": "negative",
    "awful, slow and broken": "negative",
    "nice enough": "positive",
}
_TEXTS = tuple(_TRUTH)
SLOW = 0.04


@dataclass
class Tally:
    """Requests and latencies per (route, variant) since the last report."""

    count: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: int = 0
    total: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    clicks: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def add(self, route: str, variant: str, seconds: float) -> None:
        self.count[route, variant] += 1
        self.total[route, variant] += 1
        self.latency[route, variant].append(seconds)

    def reset(self) -> None:
        self.count.clear()
        self.latency.clear()
        self.clicks.clear()


def _user_headers(user: int) -> dict[str, str]:
    headers = {"X-User-Id": f"user-{user:04d}"}
    if user % 20 == 0:
        headers["X-User-Group"] = "staff"
    elif user % 5 == 1:
        headers["X-Region"] = "eu-west-1"
    return headers


@dataclass(frozen=True)
class Reporter:
    """Where and how the synthetic users report their clicks."""

    url: str
    token: str


async def _one_request(
    session: aiohttp.ClientSession,
    base: str,
    tally: Tally,
    rng: random.Random,
    reporter: Reporter,
) -> None:
    user = rng.randrange(USERS)
    streaming = rng.random() < 0.2
    if streaming:
        path, route = "/v1/chat/completions", "chat"
        body: dict[str, object] = {
            "messages": [{"role": "user", "content": rng.choice(_TEXTS)}],
            "stream": True,
        }
    else:
        path, route = "/v1/models/sentiment:predict", "sentiment"
        text = rng.choice(_TEXTS)
        body = {"instances": [{"text": text}]}
    started = time.perf_counter()
    try:
        async with session.post(base + path, json=body, headers=_user_headers(user)) as resp:
            first = await resp.content.readany()  # time to first byte: first token for streams
            elapsed = time.perf_counter() - started
            answer = first + await resp.read()
            if resp.status >= 500:
                tally.errors += 1
                return
            variant = resp.headers.get(VARIANT_HEADER, "?")
            tally.add(route, variant, elapsed)
            if route == "sentiment":
                label = json.loads(answer)["predictions"][0]["label"]
                liked = 0.4 if label == _TRUTH[text] else 0.1
                if rng.random() < (liked if elapsed < SLOW else liked / 4):
                    await _click(session, reporter, resp.headers[REQUEST_ID_HEADER])
                    tally.clicks[route, variant] += 1
    except aiohttp.ClientError:
        tally.errors += 1


async def _click(session: aiohttp.ClientSession, reporter: Reporter, request_id: str) -> None:
    """Tell the proxy that the user clicked on the answer to request `request_id`."""
    async with session.post(
        reporter.url,
        json={"request_id": request_id, "name": "click"},
        headers={"Authorization": f"Bearer {reporter.token}"},
    ) as resp:
        await resp.read()


def _report(server: Server, tally: Tally, elapsed: float) -> str:
    errors = f"  errors so far: {tally.errors}" if tally.errors else ""
    lines = [
        f"t={elapsed:5.1f}s  (requests and their median time to first byte in the last "
        f"{REPORT_EVERY:g} s; totals since the start){errors}"
    ]
    now = time.time()
    for route in server.config.routes:
        share = server.controller.share(route.name, now)
        state = server.controller.state(route.name, now).value
        parts = []
        for variant in ("stable", "candidate"):
            n, total = tally.count[route.name, variant], tally.total[route.name, variant]
            samples = tally.latency[route.name, variant]
            p50 = f"{statistics.median(samples) * 1000:5.1f} ms" if samples else "    -   "
            clicked = ""
            if route.name == "sentiment":
                rate = f"{tally.clicks[route.name, variant] / n:4.0%}" if n else "   -"
                clicked = f", clicks {rate}"
            parts.append(f"{variant} {n:4d} (p50 {p50}{clicked}; {total:6d} in all)")
        lines.append(f"  {route.name:<10} {state:<11} share {share:6.1%}   " + "   ".join(parts))
        shadow = server.gateway.shadower.status(route)
        if shadow is not None:
            counts, gate = shadow["comparisons"], shadow.get("gate") or {}
            compared = counts["agree"] + counts["differ"]
            agreement = f"{shadow['agreement']:.0%}" if compared else "-"
            opened = "gate open" if gate.get("open") else "gate closed: the ramp waits"
            lines.append(
                f"  {'':<10} shadow: {agreement} of {compared} comparisons agree, "
                f"{counts['error']} errors; {opened}"
            )
        analysis = server.analyzer.routes.get(route.name)
        if analysis is not None and analysis.last is not None and state != "rolled_back":
            checks = ", ".join(f"{c.name} {c.result.value}" for c in analysis.last.checks)
            held = "  (ramp held)" if server.controller.holding(route.name) else ""
            done = "" if analysis.step is None else f"; {analysis.step.reason}"
            lines.append(f"  {'':<10} verdict {analysis.last.result.value}: {checks}{done}{held}")
    return "\n".join(lines)


async def _start_models(config: Config, degrade_after: float | None) -> list[web.AppRunner]:
    """One toy model server per upstream URL: v1 behind stable URLs, v2 behind candidate URLs.

    The candidates go bad `degrade_after` seconds in (never when None).
    """
    specs: dict[tuple[str, int], ModelSpec] = {}
    for route in config.routes:
        for upstream, spec in ((route.stable, STABLE_MODEL), (route.candidate, CANDIDATE_MODEL)):
            parts = urlsplit(upstream.url)
            specs[parts.hostname or "127.0.0.1", parts.port or 80] = spec
    runners = []
    for (host, port), spec in specs.items():
        after = degrade_after if spec is CANDIDATE_MODEL else None
        runner = web.AppRunner(build_model_app(spec, after), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
        print(f"model {spec.version} listening on http://{host}:{port}")
    return runners


async def _show_answers(session: aiohttp.ClientSession, base: str) -> None:
    body = {"instances": [{"text": "not good at all"}]}
    for user, note in (("user-0000", "staff, pinned to the candidate"), ("user-0002", "")):
        headers = _user_headers(int(user.split("-")[1]))
        async with session.post(
            base + "/v1/models/sentiment:predict", json=body, headers=headers
        ) as resp:
            answer = await resp.text()
        variant = resp.headers.get(VARIANT_HEADER)
        print(f"{user} ({note or 'by bucket'}) -> {variant}: {answer}")


def _announce_rollback(route: Route, transition: Transition, verdict: object) -> None:
    print(
        f"\n*** {route.name} ROLLED BACK by {transition.actor}: {transition.reason} ***\n",
        flush=True,
    )


async def run_demo(
    config: Config,
    duration: float | None = None,
    rate: float = 50.0,
    degrade_after: float | None = 30.0,
) -> None:
    """Run the demo until Ctrl-C, SIGTERM or `duration` seconds.

    The candidate model degrades after `degrade_after` seconds (never when None), and the
    analysis rolls it back.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    models = await _start_models(config, degrade_after)
    started_at = time.time()
    token_env = config.outcomes.token_env
    os.environ[token_env] = os.environ.get(token_env) or secrets.token_hex(24)
    server = Server(config)
    server.controller.rollback_listeners.append(_announce_rollback)
    await server.start(now=started_at)
    tally = Tally()
    rng = random.Random(7)
    tasks: set[asyncio.Task[None]] = set()
    print(f"proxy on {server.proxy_url}, admin API on {server.admin_url}; Ctrl-C stops the demo")
    if degrade_after is not None:
        shared = ", ".join(route.name for route in config.routes)
        print(
            f"the candidate model (v2, behind every route: {shared}) goes bad after "
            f"{degrade_after:g} s: watch the analysis"
        )
    print()
    try:
        async with aiohttp.ClientSession() as session:
            await _show_answers(session, server.proxy_url)
            print()
            reporter = Reporter(f"{server.admin_url}/outcomes", os.environ[token_env])
            next_report = time.monotonic() + REPORT_EVERY
            deadline = None if duration is None else time.monotonic() + duration
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                task = asyncio.create_task(
                    _one_request(session, server.proxy_url, tally, rng, reporter)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0 / rate)
                if time.monotonic() >= next_report:
                    print(_report(server, tally, time.time() - started_at), flush=True)
                    tally.reset()
                    next_report += REPORT_EVERY
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await server.stop()
        for runner in models:
            await runner.cleanup()
    totals = ", ".join(f"{r}/{v}: {n}" for (r, v), n in sorted(tally.total.items()))
    print(f"\ndemo stopped; requests served: {totals}", file=sys.stdout)
