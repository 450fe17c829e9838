"""Bytes that are not UTF-8 (or not text at all) in every place a user id is read from, sent to a
real `grayscale serve` process: it must keep serving, bucket such ids by their bytes, and log
every request."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from proxy.routing import bucket, threshold
from tests.support.proxies import Served, serve_subprocess
from tests.support.raw_peers import RawClient
from tests.support.upstream import url_of
from tests.support.waiting import eventually

SHARE = 0.5


def config(tmp_path: Path, stable: str, candidate: str) -> Path:
    routes = "".join(
        f"  - name: {name}\n"
        f"    match: {{path_prefix: /{name}}}\n"
        f'    stable: {{url: "{stable}"}}\n'
        f'    candidate: {{url: "{candidate}"}}\n'
        f'    cohort: {{keys: ["{key}"], salt: "{name}-salt"}}\n'
        f"    ramp: {{base: {SHARE}}}\n"
        for name, key in (("h", "header:X-User-Id"), ("c", "cookie:uid"), ("q", "query:uid"))
    )
    path = tmp_path / "grayscale.yaml"
    path.write_text(
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        "state: {backend: memory}\n"
        f"access_log: {{path: {tmp_path / 'access.log'}}}\n"
        f"routes:\n{routes}"
    )
    return path


async def drain(served: Served, lines: list[bytes]) -> None:
    """Keep reading the process's stderr (a full pipe would stall it)."""
    assert served.process.stderr is not None
    while line := await served.process.stderr.readline():
        lines.append(line)


def expected_variant(salt: str, key: bytes) -> str:
    chosen = bucket(salt, key.decode("utf-8", "surrogateescape")) < threshold(SHARE)
    return "candidate" if chosen else "stable"


async def ask(url: str, payload: bytes) -> tuple[int, str | None]:
    client = await RawClient.connect(url)
    try:
        await client.send(payload)
        answer = await client.answer()
        return answer.status, answer.header("x-grayscale-variant")
    finally:
        client.close()


@pytest.fixture
async def served(
    upstreams: tuple[TestServer, TestServer], tmp_path: Path
) -> AsyncIterator[tuple[Served, list[bytes]]]:
    stable, candidate = upstreams
    process = await serve_subprocess(config(tmp_path, url_of(stable), url_of(candidate)))
    stderr: list[bytes] = []
    reading = asyncio.create_task(drain(process, stderr))
    yield process, stderr
    process.process.terminate()
    await process.process.wait()
    await reading
    text = b"".join(stderr)
    assert b"Traceback" not in text and b"ERROR" not in text, text.decode(errors="replace")[-2000:]


async def test_every_byte_above_0x7f_in_header_cookie_and_query_keys(served, tmp_path):
    process, _ = served
    url = process.proxy_url
    routed = 0
    for byte in range(0x80, 0x100):
        key = b"user-%c" % byte
        status, variant = await ask(
            url, b"GET /h HTTP/1.1\r\nHost: x\r\nX-User-Id: %s\r\n\r\n" % key
        )
        assert (status, variant) == (200, expected_variant("h-salt", key)), hex(byte)
        status, variant = await ask(
            url, b"GET /c HTTP/1.1\r\nHost: x\r\nCookie: uid=%s\r\n\r\n" % key
        )
        assert (status, variant) == (200, expected_variant("c-salt", key)), hex(byte)
        escaped = b"user-%%%02X" % byte
        status, variant = await ask(url, b"GET /q?uid=%s HTTP/1.1\r\nHost: x\r\n\r\n" % escaped)
        assert (status, variant) == (200, expected_variant("q-salt", key)), hex(byte)
        status, _ = await ask(url, b"GET /q?uid=%s HTTP/1.1\r\nHost: x\r\n\r\n" % key)
        assert status == 400, hex(byte)  # a raw byte in the target is malformed
        routed += 3
    log = tmp_path / "access.log"
    # (the access log is written five times a second)
    assert await eventually(
        lambda: log.exists() and len(log.read_text().splitlines()) >= routed, within=5
    )
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == routed  # no request went missing from the access log
    assert all(entry["status"] == 200 for entry in entries)


async def test_random_bytes_in_every_header_value_never_stop_the_proxy(served):
    process, _ = served
    rng = random.Random(20261130)
    names = [b"X-User-Id", b"Cookie", b"Host", b"X-Forwarded-For", b"User-Agent", b"Accept"]
    names += [b"Content-Type", b"Connection", b"Expect", b"X-Region", b"Authorization"]
    field_bytes = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]  # what a field value may hold
    statuses = {200: 0, 400: 0}
    for _ in range(300):
        lines = [b"GET /%s HTTP/1.1\r\n" % rng.choice([b"h", b"c", b"q"])]
        host = False
        for name in rng.sample(names, rng.randint(1, 4)):
            allowed = field_bytes if rng.random() < 0.9 else range(256)  # else any byte at all
            value = bytes(rng.choice(allowed) for _ in range(rng.randint(0, 24)))
            value = value.replace(b"\r", b"").replace(b"\n", b"")  # one header line each
            lines.append(b"%s: %s\r\n" % (name, value))
            host = host or name == b"Host"
        if not host:
            lines.append(b"Host: x\r\n")
        status, _ = await ask(process.proxy_url, b"".join(lines) + b"\r\n")
        assert status in statuses, b"".join(lines)
        statuses[status] += 1
    assert min(statuses.values()) > 50  # both served and refused requests were tried
    status, variant = await ask(
        process.proxy_url, b"GET /h HTTP/1.1\r\nHost: x\r\nX-User-Id: alice\r\n\r\n"
    )
    assert (status, variant) == (200, expected_variant("h-salt", b"alice"))
    assert process.process.returncode is None
