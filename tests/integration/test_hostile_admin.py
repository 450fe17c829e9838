"""The admin listener against hostile or broken clients: outcome values no float can hold,
reports repeated, answers a strict JSON parser must read, and connections that trickle, stall
or come in numbers. Raw sockets where the bytes on the wire matter."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app.server import Server
from proxy.config.loader import load_config
from tests.integration.test_outcomes import outcome_series
from tests.support.configs import route_yaml
from tests.support.proxies import ProxyFactory
from tests.support.upstream import url_of
from tests.support.waiting import eventually

OUTCOMES_TOKEN = "outcomes-token-0123456789abcdef0123456789"
ADMIN_TOKEN = "admin-token-0123456789abcdef0123456789abcd"
OUTCOMES_AUTH = {"Authorization": f"Bearer {OUTCOMES_TOKEN}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(autouse=True)
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAYSCALE_OUTCOMES_TOKEN", OUTCOMES_TOKEN)
    monkeypatch.setenv("GRAYSCALE_ADMIN_TOKEN", ADMIN_TOKEN)


def strict_json(text: str) -> Any:
    """`text` read as JSON by a parser that refuses NaN and Infinity, as browsers' do."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


async def started(
    start_proxy: ProxyFactory,
    upstreams: tuple[TestServer, TestServer],
    *,
    analysis: str = "",
    admin: str = "{}",
) -> Server:
    stable, candidate = upstreams
    extra = f"    analysis: {analysis}\n    ejection: false\n" if analysis else ""
    routes = route_yaml(url_of(stable), url_of(candidate), extra=extra)
    return await start_proxy(routes + f"admin: {admin}\n")


async def served(
    client: aiohttp.ClientSession, server: Server, count: int
) -> list[tuple[str, str]]:
    """(variant, request id) of `count` requests from different users."""
    found = []
    for i in range(count):
        async with client.get(f"{server.proxy_url}/v1/p", headers={"X-User-Id": f"u{i}"}) as answer:
            assert answer.status == 200
            found.append(
                (answer.headers["X-Grayscale-Variant"], answer.headers["X-Grayscale-Request-Id"])
            )
    return found


async def report(client: aiohttp.ClientSession, server: Server, body: bytes) -> tuple[int, str]:
    async with client.post(
        f"{server.admin_url}/outcomes", data=body, headers=OUTCOMES_AUTH
    ) as answer:
        return answer.status, await answer.text()


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Write `data` a byte at a time, one each `every` seconds."""
    for byte in data:
        writer.write(bytes((byte,)))
        await asyncio.sleep(every)


# --- outcome values ------------------------------------------------------------------------


async def test_values_no_float_can_hold_are_refused_by_report_not_with_a_500(
    upstreams, start_proxy, client
):
    server = await started(start_proxy, upstreams)
    (_, rid), (_, other) = await served(client, server, 2)
    before = await outcome_series(client, server)
    for value, shown in (
        ("9" * 401, "401 digits: an int too large to convert to a float"),
        ("-" + "9" * 5000, "past Python's 4,300-digit limit on int conversions"),
        ("1e400", "a float that overflows"),
        ("1e200", "finite, but absurd for any outcome (there is no check to give a range)"),
        ("-1.7e308", "twice of it sums to -Inf"),
        ("NaN", "a constant Python's json reads"),
    ):
        body = f'[{{"request_id": "{rid}", "name": "x", "value": 1}}, '
        body += f'{{"request_id": "{other}", "name": "x", "value": {value}}}]'
        status, text = await report(client, server, body.encode())
        assert status == 422, shown
        answer = strict_json(text)
        assert answer["error"] == "invalid_outcomes"
        assert answer["errors"] == [
            "[1].value: expected a finite number between -1e+12 and 1e+12"
        ], shown
    assert await outcome_series(client, server) == before  # nothing of any batch was counted
    status, text = await report(
        client,
        server,
        json.dumps(
            [
                {"request_id": rid, "name": "x", "value": -1e12},
                {"request_id": other, "name": "x", "value": 10**12},
            ]
        ).encode(),
    )
    assert (status, strict_json(text)["accepted"]) == (200, 2)  # the ends are taken


async def test_a_value_outside_its_checks_range_is_refused_even_within_the_sane_magnitude(
    upstreams, start_proxy, client
):
    server = await started(
        start_proxy,
        upstreams,
        analysis="{interval: 1s, outcomes: [{name: rating, max_decrease: 0.3, per: outcome, "
        "range: [1, 5]}]}",
    )
    ((_, rid),) = await served(client, server, 1)
    status, text = await report(
        client, server, json.dumps({"request_id": rid, "name": "rating", "value": 1e200}).encode()
    )
    assert status == 422
    assert strict_json(text)["errors"] == [
        "the outcome.value: expected a finite number between -1e+12 and 1e+12"
    ]
    status, text = await report(
        client, server, json.dumps({"request_id": rid, "name": "rating", "value": 6}).encode()
    )
    assert status == 422
    assert strict_json(text)["errors"] == [
        "[0].value: 6 is outside the range of 'rating' on route 'models' (analysis.outcomes: "
        "[1, 5])"
    ]


async def test_a_report_repeated_in_a_batch_or_a_later_one_is_counted_once(
    upstreams, start_proxy, client
):
    server = await started(start_proxy, upstreams)
    (variant, rid), (other_variant, other) = await served(client, server, 2)
    click = {"request_id": rid, "name": "click"}
    status, text = await report(client, server, json.dumps([click] * 1000).encode())
    assert status == 200
    assert strict_json(text) == {
        "accepted": 1,
        "unknown": 0,
        "expired": 0,
        "stale": 0,
        "not_compared": 0,
        "too_many_names": 0,
        "duplicate": 999,
    }
    # Later, with the same id under another name and another id: only those are new.
    later = [click, {"request_id": rid, "name": "view"}, {"request_id": other, "name": "click"}]
    status, text = await report(client, server, json.dumps(later).encode())
    assert (status, strict_json(text)["accepted"], strict_json(text)["duplicate"]) == (200, 2, 1)
    series = await outcome_series(client, server)
    expected: dict[str, float] = {}
    for name, by in (("click", variant), ("view", variant), ("click", other_variant)):
        key = f"grayscale_outcome_value_count{{name={name},route=models,variant={by}}}"
        expected[key] = expected.get(key, 0.0) + 1.0
    counts = {k: v for k, v in series.items() if k.startswith("grayscale_outcome_value_count")}
    assert counts == expected  # one count per (request id, name)
    assert series["grayscale_outcomes_not_taken_total{reason=duplicate}"] == 1000


# --- strict JSON -----------------------------------------------------------------------------


async def test_every_admin_answer_is_strict_json_at_the_widest_range_and_after_bad_input(
    upstreams, start_proxy, client
):
    # The widest range the loader accepts (±1e12, the bound of a value: a range of 1.3e154
    # once made the bounds' arithmetic overflow into NaN) judged on ordinary ratings, then
    # every admin answer, bad input included, is strict JSON. (How a non-finite number would
    # be rendered: tests/unit/test_outcome_values.py.)
    server = await started(
        start_proxy,
        upstreams,
        analysis="{interval: 200ms, window: 10s, min_requests: 5, outcomes: [{name: rating, "
        "max_decrease: 0.3, per: outcome, range: [-1.0e+12, 1.0e+12]}]}",
    )
    requests = await served(client, server, 40)
    batch = [
        {"request_id": rid, "name": "rating", "value": 5 if variant == "stable" else 1}
        for variant, rid in requests
    ]
    status, text = await report(client, server, json.dumps(batch).encode())
    assert (status, strict_json(text)["accepted"]) == (200, 40)

    def judged() -> bool:
        verdict = server.analyzer.routes["models"].last
        return verdict is not None and any(
            c.name == "outcome:rating" and c.bound is not None for c in verdict.checks
        )

    assert await eventually(judged)
    answers: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("GET", "/healthz", {}, None),
        ("GET", "/readyz", {}, None),
        ("GET", "/status", {}, None),
        ("GET", "/status", ADMIN_AUTH, None),
        ("GET", "/routes/models/verdicts", {}, None),
        ("GET", "/routes/nowhere/verdicts", {}, None),
        ("POST", "/routes/models/pause", {}, None),
        ("POST", "/routes/models/pause", ADMIN_AUTH, b'{"reason": "strict json"}'),
        ("POST", "/routes/models/share", ADMIN_AUTH, b'{"share": 1e400}'),
        ("POST", "/routes/models/resume", ADMIN_AUTH, None),
        ("POST", "/outcomes", OUTCOMES_AUTH, b'{"request_id": "x", "name": "y", "value": NaN}'),
        ("POST", "/outcomes", OUTCOMES_AUTH, b"{not json"),
        ("POST", "/outcomes", OUTCOMES_AUTH, json.dumps(batch).encode()),
    ]
    for method, path, headers, body in answers:
        async with client.request(
            method, server.admin_url + path, headers=headers, data=body
        ) as answer:
            assert answer.content_type == "application/json", path
            strict_json(await answer.text())  # raises on NaN or Infinity
    async with client.get(server.admin_url + "/routes/models/verdicts") as answer:
        verdicts = strict_json(await answer.text())["verdicts"]
    rating = [c for v in verdicts for c in v["checks"] if c["check"] == "outcome:rating"]
    assert rating and all(math.isfinite(c["bound"]) for c in rating if c["bound"] is not None)
    async with client.get(server.admin_url + "/status") as answer:
        status_page = strict_json(await answer.text())
    assert status_page["routes"][0]["analysis"]["last_verdict"] is not None


# --- the listener's limits -------------------------------------------------------------------


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.admin_url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after `seconds`)."""
    received = b""
    async with asyncio.timeout(seconds):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def post_head(path: str, auth: dict[str, str]) -> bytes:
    """The head of a POST to `path` announcing a body of 1000 bytes."""
    header = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}Content-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()


async def healthz(server: Server) -> bytes:
    """What GET /healthz on a new connection gets, whole."""
    reader, writer = await connect(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    try:
        return await closed_within(reader, 5)
    finally:
        writer.close()


def turned_away(received: bytes) -> bool:
    """Whether a connection that sent a request was refused: told 503, or, when its request
    reached the socket after it was closed, reset (which may come before the 503 is read)."""
    return received == b"" or received.startswith(b"HTTP/1.1 503")


@pytest.fixture
async def limited(upstreams, start_proxy) -> AsyncIterator[Server]:
    """A proxy whose admin listener has timeouts of 1 s."""
    yield await started(start_proxy, upstreams, admin="{head_timeout: 1s, body_timeout: 1s}")


async def test_a_head_trickled_byte_by_byte_is_cut_after_the_head_timeout(limited):
    reader, writer = await connect(limited)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    began = time.monotonic()
    sender = asyncio.create_task(trickle(writer, head, 0.2))
    try:
        received = await closed_within(reader, 5)
    finally:
        sender.cancel()
        writer.close()
    took = time.monotonic() - began
    assert received == b""  # no answer: the request never came
    assert 0.9 <= took < 2.0, took
    assert b"ok" in await healthz(limited)


async def test_an_idle_connection_is_closed_after_the_head_timeout_also_between_requests(limited):
    reader, writer = await connect(limited)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    answered = time.monotonic()
    received = await closed_within(reader, 5)  # the body of the answer, then the close
    writer.close()
    assert received.endswith(b'{"status": "ok"}')
    assert 0.9 <= time.monotonic() - answered < 2.0


@pytest.mark.parametrize(
    ("path", "auth"),
    [("/outcomes", OUTCOMES_AUTH), ("/routes/models/pause", ADMIN_AUTH)],
)
async def test_a_body_that_stalls_or_trickles_is_answered_408_and_cut(limited, path, auth):
    for trickled in (False, True):
        reader, writer = await connect(limited)
        writer.write(post_head(path, auth) + b"[")
        began = time.monotonic()
        sender = asyncio.create_task(trickle(writer, b" " * 100 if trickled else b"", 0.1))
        try:
            received = await closed_within(reader, 5)
        finally:
            sender.cancel()
            writer.close()
        took = time.monotonic() - began
        assert received.startswith(b"HTTP/1.1 408"), received
        assert received.endswith(
            b'{"error": "request_timeout", "message": "the request body stopped arriving"}'
        )
        assert 0.9 <= took < 2.0, took
    assert limited.controller.rollout("models").last is None  # nothing was paused


async def test_a_client_that_leaves_mid_body_leaves_no_traceback(limited):
    for path, auth in (("/outcomes", OUTCOMES_AUTH), ("/routes/models/pause", ADMIN_AUTH)):
        _, writer = await connect(limited)
        writer.write(post_head(path, auth) + b"[1,")
        await asyncio.sleep(0.1)  # (the handler is reading the body)
        writer.transport.abort()
        assert await eventually(lambda: limited.admin_listener.open_connections == 0)
    await asyncio.sleep(0.1)  # (an ERROR line, if any, is logged by now: the test fails)
    assert limited.controller.rollout("models").last is None


async def test_a_body_nobody_reads_is_drained_for_at_most_the_body_timeout(limited):
    reader, writer = await connect(limited)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nab")
    began = time.monotonic()
    received = await closed_within(reader, 5)
    writer.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert time.monotonic() - began < 2.5


async def test_connections_beyond_the_cap_are_refused_until_others_close(upstreams, start_proxy):
    limited = await started(start_proxy, upstreams, admin="{max_connections: 3}")
    held = [await connect(limited) for _ in range(3)]
    assert await eventually(lambda: limited.admin_listener.open_connections == 3)
    reader, writer = await connect(limited)
    refused = await closed_within(reader, 2)  # at once, not after a timeout
    writer.close()
    assert refused.startswith(b"HTTP/1.1 503")
    assert (
        strict_json(refused.partition(b"\r\n\r\n")[2].decode())["error"] == "too_many_connections"
    )
    assert turned_away(await healthz(limited))
    # The connections held still serve.
    held_reader, held_writer = held[0]
    held_writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await held_reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    for _, held_writer in held:
        held_writer.close()
    assert await eventually(lambda: limited.admin_listener.open_connections == 0)
    assert (await healthz(limited)).startswith(b"HTTP/1.1 200")


async def test_the_listeners_limits_follow_a_reload_for_new_connections(upstreams, tmp_path):
    stable, candidate = upstreams
    path = tmp_path / "grayscale.yaml"

    def write(admin: str) -> None:
        path.write_text(
            'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
            f"admin: {admin}\nstate: {{backend: memory}}\nroutes:\n"
            + route_yaml(url_of(stable), url_of(candidate))
        )

    write("{max_connections: 1, head_timeout: 5s}")
    server = Server(load_config(path))
    await server.start()
    try:
        held = await connect(server)
        assert await eventually(lambda: server.admin_listener.open_connections == 1)
        assert turned_away(await healthz(server))
        write("{max_connections: 2, head_timeout: 5s}")
        assert (await server.reload("test")).result == "applied"
        assert (await healthz(server)).startswith(b"HTTP/1.1 200")
        held[1].close()
    finally:
        await server.stop()
