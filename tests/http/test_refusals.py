"""Refused request heads are visible: each reason counted in `grayscale_refused_total`, and told
at WARNING at most once per reason per 10 s, with how many were refused meanwhile. A TLS
handshake sent to the clear-text port is closed without an answer it could not read."""

from __future__ import annotations

import asyncio
import logging
import ssl

import pytest
from aiohttp.test_utils import TestServer

from proxy.app.server import Server
from proxy.http.listener import REFUSAL_REASONS
from proxy.telemetry.metrics import Recorder
from proxy.telemetry.refusals import RefusalLog
from tests.support.configs import one_route
from tests.support.proxies import ProxyFactory
from tests.support.raw_peers import RawClient
from tests.support.upstream import url_of
from tests.support.waiting import eventually

LONG = "x" * (17 * 1024)
# (reason, what a client sends, the status it is answered)
REFUSED_HEADS = [
    ("http2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("version", b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
    ("version", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("malformed", b"GET / HTTP/1.1\r\nHost: a\r\nNo colon here\r\n\r\n", 400),
    ("malformed", b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    ("malformed", b"\x01\x02garbage\r\n\r\n", 400),
    ("too_large", f"GET / HTTP/1.1\r\nHost: a\r\nX-Big: {LONG}\r\n\r\n".encode(), 431),
    ("too_large", f"GET /{LONG} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), 414),
    ("method", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
]


def client_hello() -> bytes:
    """The first bytes a TLS client sends: its ClientHello record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    session = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="a")
    with pytest.raises(ssl.SSLWantReadError):
        session.do_handshake()
    return outgoing.read()


def counts(server: Server) -> dict[str, float]:
    registry = server.recorder.registry
    found = {
        reason: registry.get_sample_value("grayscale_refused_total", {"reason": reason})
        for reason in REFUSAL_REASONS
    }
    return {reason: value for reason, value in found.items() if value}


@pytest.fixture
async def proxy(upstreams: tuple[TestServer, TestServer], start_proxy: ProxyFactory) -> Server:
    stable, _ = upstreams
    return await start_proxy(one_route(url_of(stable)))


async def test_each_refused_head_is_answered_and_counted_under_its_reason(proxy):
    expected: dict[str, float] = {}
    for reason, sent, status in REFUSED_HEADS:
        client = await RawClient.connect(proxy.proxy_url)
        try:
            await client.send(sent)
            answer = await client.answer()
            assert answer.status == status, (reason, sent[:40], answer)
            assert answer.header("connection") == "close"
        finally:
            client.close()
        expected[reason] = expected.get(reason, 0) + 1
        assert counts(proxy) == expected, sent[:40]


async def test_a_tls_handshake_on_the_clear_text_port_is_closed_unanswered(proxy, caplog):
    hello = client_hello()
    assert hello[:2] == b"\x16\x03"
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            client = await RawClient.connect(proxy.proxy_url)
            try:
                await client.send(hello)
                assert await client.reader.read() == b""  # closed, and not a byte written
            finally:
                client.close()
    assert counts(proxy) == {"tls": 3}
    warnings = [r for r in caplog.records if r.name == "grayscale.refusals"]
    assert [(r.levelname, r.getMessage()) for r in warnings] == [
        (
            "WARNING",
            "refused (tls) a client at 127.0.0.1: a TLS handshake on the clear-text port: "
            "use http://",
        )
    ]
    assert not [record for record in caplog.records if record.exc_info]
    client = await RawClient.connect(proxy.proxy_url)  # the listener serves on
    try:
        await client.send(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await client.answer()).status == 200
    finally:
        client.close()


async def test_an_https_client_on_the_clear_text_port_fails_and_is_counted(proxy):
    host, port = proxy.proxy_url.removeprefix("http://").rsplit(":", 1)
    with pytest.raises(OSError):  # (a reset, or an end of file in the handshake)
        await asyncio.open_connection(host, int(port), ssl=ssl.create_default_context())
    assert await eventually(lambda: counts(proxy) == {"tls": 1})


class Clock:
    """A clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_warning_per_reason_per_interval_says_how_many_went_unsaid(caplog):
    recorder, clock = Recorder(), Clock()
    refusals = RefusalLog(recorder, interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="grayscale.refusals"):
        for _ in range(4):
            refusals("tls", "10.0.0.1", "a TLS handshake")
        refusals("malformed", "10.0.0.2", "malformed request")
        clock.now += 9.9
        refusals("tls", "10.0.0.3", "a TLS handshake")
        clock.now += 0.1
        refusals("tls", "10.0.0.4", "a TLS handshake")
        refusals("tls", "10.0.0.5", "a TLS handshake")
        clock.now += 10.0
        refusals("tls", None, "a TLS handshake")
    assert [record.getMessage() for record in caplog.records] == [
        "refused (tls) a client at 10.0.0.1: a TLS handshake",
        "refused (malformed) a client at 10.0.0.2: malformed request",
        "refused (tls) a client at 10.0.0.4: a TLS handshake (4 more refused for tls since the "
        "last such line)",
        "refused (tls) a client at ?: a TLS handshake (1 more refused for tls since the last "
        "such line)",
    ]
    assert {record.levelname for record in caplog.records} == {"WARNING"}
    sample = recorder.registry.get_sample_value
    assert sample("grayscale_refused_total", {"reason": "tls"}) == 8
    assert sample("grayscale_refused_total", {"reason": "malformed"}) == 1
    assert sample("grayscale_refused_total", {"reason": "http2"}) == 0
