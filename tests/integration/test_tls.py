"""TLS on the proxy's and the admin API's listeners, over real sockets: ssl and curl clients,
ALPN, the minimum version, a certificate renewed on reload while connections stay open, and
handshakes that fail without a line at ERROR."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app.server import Server
from proxy.config.loader import load_config
from tests.support.certificates import Authority, Pem, serial_of
from tests.support.configs import one_route, proxy_config
from tests.support.upstream import url_of
from tests.support.waiting import eventually

Serve = Callable[..., Awaitable[Server]]  # (config text, watch=False)


def tls_fields(name: str, pem: Pem, min_version: str = "") -> str:
    version = f", min_version: {min_version}" if min_version else ""
    return f', {name}: {{cert_file: "{pem.cert}", key_file: "{pem.key}"{version}}}'


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def refused(server: Server, reason: str) -> float:
    value = server.recorder.registry.get_sample_value("grayscale_refused_total", {"reason": reason})
    assert value is not None
    return value


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path)


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Start proxies from config text written to a file (so that they reload it)."""
    servers: list[Server] = []

    async def start(text: str, watch: bool = False) -> Server:
        path = tmp_path / f"grayscale-{len(servers)}.yaml"
        path.write_text(text)
        server = Server(load_config(path), watch=watch)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def tls_proxy(serve: Serve, upstream: TestServer, fields: str, watch: bool = False) -> Server:
    return await serve(proxy_config(one_route(url_of(upstream)), fields), watch)


async def get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str = "/v1/x"
) -> dict[str, object]:
    """One keep-alive GET on an open connection: the JSON body of its 200."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body: dict[str, object] = json.loads(await asyncio.wait_for(reader.readexactly(length), 5))
    return body


async def test_the_proxy_serves_https_tells_the_upstream_and_offers_http11_by_alpn(
    upstreams, serve, authority, client
):
    stable, _ = upstreams
    proxy = await tls_proxy(serve, stable, tls_fields("tls", authority.issue()))
    assert proxy.proxy_url.startswith("https://127.0.0.1:")
    context = authority.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    reader, writer = await asyncio.open_connection(*address(proxy.proxy_url), ssl=context)
    try:
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        for _ in range(3):  # one keep-alive connection
            seen = await get(reader, writer)
            assert seen["upstream"] == "stable"
            assert seen["headers"]["X-Forwarded-Proto"] == "https"  # type: ignore[index]
    finally:
        writer.close()
    async with client.post(proxy.proxy_url + "/v1/y", data=b"abc", ssl=context) as resp:
        body = await resp.json()
    assert (resp.status, body["body_length"], body["method"]) == (200, 3, "POST")
    async with aiohttp.ClientSession() as plain:  # the system's authorities: not ours
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await plain.get(proxy.proxy_url + "/v1/x")


async def test_large_bodies_stream_both_ways_over_tls(upstreams, serve, authority, client):
    stable, _ = upstreams
    proxy = await tls_proxy(serve, stable, tls_fields("tls", authority.issue()))
    context = authority.client_context()
    async with client.get(proxy.proxy_url + "/bulk/16", ssl=context) as resp:
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
    assert (resp.status, size) == (200, 16 << 20)
    upload = os.urandom(4 << 20)
    async with client.post(proxy.proxy_url + "/v1/up", data=upload, ssl=context) as resp:
        body = await resp.json()
    assert (resp.status, body["body_length"]) == (200, len(upload))


async def test_curl_reaches_the_proxy_with_its_authority(upstreams, serve, authority):
    stable, _ = upstreams
    proxy = await tls_proxy(serve, stable, tls_fields("tls", authority.issue()))
    curl = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--http1.1",
        "--cacert",
        str(authority.ca_file),
        proxy.proxy_url + "/v1/c",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(curl.communicate(), 20)
    assert curl.returncode == 0, err
    assert json.loads(out)["raw_path"] == "/v1/c"
    untrusted = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        proxy.proxy_url + "/v1/c",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(untrusted.communicate(), 20)
    assert untrusted.returncode == 60, err  # the peer's certificate could not be verified
    assert await eventually(lambda: refused(proxy, "tls_handshake") == 1)


async def test_min_version_1_3_refuses_a_tls_1_2_client(upstreams, serve, authority, caplog):
    stable, _ = upstreams
    proxy = await tls_proxy(serve, stable, tls_fields("tls", authority.issue(), "1.3"))
    old = authority.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with caplog.at_level(logging.DEBUG), pytest.raises(OSError):  # (an SSLError, or a reset)
        await asyncio.open_connection(*address(proxy.proxy_url), ssl=old)
    assert await eventually(lambda: refused(proxy, "tls_handshake") == 1)
    assert not [record for record in caplog.records if record.exc_info]  # no traceback
    warning = [r for r in caplog.records if r.name == "grayscale.refusals"]
    assert [r.levelname for r in warning] == ["WARNING"]
    assert "UNSUPPORTED_PROTOCOL" in warning[0].getMessage()
    current = authority.client_context(minimum_version=ssl.TLSVersion.TLSv1_3)
    reader, writer = await asyncio.open_connection(*address(proxy.proxy_url), ssl=current)
    try:
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        assert (await get(reader, writer))["upstream"] == "stable"
    finally:
        writer.close()


async def test_a_reload_renews_the_certificate_for_new_connections_only(
    upstreams, serve, authority
):
    stable, _ = upstreams
    first = authority.issue()
    proxy = await tls_proxy(serve, stable, tls_fields("tls", first))
    context = authority.client_context()
    reader, writer = await asyncio.open_connection(*address(proxy.proxy_url), ssl=context)
    try:
        old_serial = serial_of(writer.get_extra_info("ssl_object").getpeercert(True))
        await get(reader, writer)
        authority.issue(cert=first.cert, key=first.key)  # renewed in place
        result = await proxy.reload("signal")
        assert (result.result, result.errors) == ("unchanged", ())
        fresh_reader, fresh_writer = await asyncio.open_connection(
            *address(proxy.proxy_url), ssl=context
        )
        try:
            new_serial = serial_of(fresh_writer.get_extra_info("ssl_object").getpeercert(True))
            assert new_serial != old_serial
            assert (await get(fresh_reader, fresh_writer))["upstream"] == "stable"
        finally:
            fresh_writer.close()
        # The connection opened before the reload goes on, with the certificate it began with.
        assert (await get(reader, writer))["upstream"] == "stable"
        assert serial_of(writer.get_extra_info("ssl_object").getpeercert(True)) == old_serial
    finally:
        writer.close()


async def test_a_renewed_certificate_file_is_read_without_being_asked(upstreams, serve, authority):
    stable, _ = upstreams
    first = authority.issue()
    proxy = await tls_proxy(serve, stable, tls_fields("tls", first), watch=True)
    context = authority.client_context()

    async def serial() -> int:
        _, writer = await asyncio.open_connection(*address(proxy.proxy_url), ssl=context)
        try:
            return serial_of(writer.get_extra_info("ssl_object").getpeercert(True))
        finally:
            writer.close()

    before = await serial()
    renewed = authority.issue()  # a renewal: new files put in place by rename
    os.replace(renewed.key, first.key)
    os.replace(renewed.cert, first.cert)

    async def renewed_is_shown() -> bool:
        return await serial() != before

    assert await eventually(renewed_is_shown, within=10, every=0.2)


@pytest.mark.logs_errors("reload refused")
async def test_a_reload_with_a_broken_key_keeps_the_running_certificate(
    upstreams, serve, authority
):
    stable, _ = upstreams
    first = authority.issue()
    proxy = await tls_proxy(serve, stable, tls_fields("tls", first))
    context = authority.client_context()
    _, writer = await asyncio.open_connection(*address(proxy.proxy_url), ssl=context)
    before = serial_of(writer.get_extra_info("ssl_object").getpeercert(True))
    writer.close()
    other = authority.issue()
    first.key.write_bytes(other.key.read_bytes())  # a key of another certificate
    result = await proxy.reload("api")
    assert result.result == "invalid"
    assert any("server.tls.key_file: this key does not match" in error for error in result.errors)
    reader, writer = await asyncio.open_connection(*address(proxy.proxy_url), ssl=context)
    try:
        assert serial_of(writer.get_extra_info("ssl_object").getpeercert(True)) == before
        assert (await get(reader, writer))["upstream"] == "stable"
    finally:
        writer.close()


async def test_turning_tls_off_takes_a_restart(upstreams, serve, authority, tmp_path):
    stable, _ = upstreams
    proxy = await tls_proxy(serve, stable, tls_fields("tls", authority.issue()))
    (tmp_path / "grayscale-0.yaml").write_text(proxy_config(one_route(url_of(stable))))
    result = await proxy.reload("api")
    assert result.restart_required == ("server.tls",)
    reader, writer = await asyncio.open_connection(
        *address(proxy.proxy_url), ssl=authority.client_context()
    )
    try:
        assert (await get(reader, writer))["upstream"] == "stable"
    finally:
        writer.close()


async def test_the_admin_api_over_tls(upstreams, serve, authority, client):
    stable, _ = upstreams
    proxy = await tls_proxy(serve, stable, tls_fields("admin_tls", authority.issue()))
    assert proxy.proxy_url.startswith("http://") and proxy.admin_url.startswith("https://")
    context = authority.client_context()
    async with client.get(proxy.admin_url + "/status", ssl=context) as resp:
        assert resp.status == 200
        assert [route["name"] for route in (await resp.json())["routes"]] == ["models"]
    async with client.get(proxy.admin_url + "/metrics", ssl=context) as resp:
        assert 'grayscale_refused_total{reason="tls_handshake"} 0.0' in await resp.text()
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await client.get(proxy.admin_url + "/status")
    assert await eventually(lambda: refused(proxy, "tls_handshake") == 1)


async def test_failed_handshakes_are_counted_and_never_logged_at_error(
    upstreams, serve, authority, caplog, tmp_path
):
    stable, _ = upstreams
    stranger = Authority(tmp_path, "stranger")
    proxy = await tls_proxy(serve, stable, tls_fields("tls", authority.issue()))
    host, port = address(proxy.proxy_url)
    with caplog.at_level(logging.DEBUG):
        # A client that does not trust the certificate (it hangs up in the handshake).
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(host, port, ssl=ssl.create_default_context())
        # openssl s_client, which tells the proxy why with an alert.
        s_client = await asyncio.create_subprocess_exec(
            "openssl",
            "s_client",
            "-connect",
            f"{host}:{port}",
            "-verify_return_error",
            "-CAfile",
            str(stranger.ca_file),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(s_client.wait(), 20) != 0
        # Bytes that are not TLS at all.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"\x00\x01garbage\xff" * 50)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        # Plain HTTP sent to the TLS port: told so, in plain text.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        # A TCP check that connects and leaves: not a failed handshake.
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        assert await eventually(lambda: refused(proxy, "tls_handshake") == 4)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"use https://" in answer
    assert not [record for record in caplog.records if record.exc_info]  # no traceback
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    lines = [r.getMessage() for r in caplog.records if r.name == "grayscale.refusals"]
    assert len(lines) == 1  # one line per reason per 10 s: the rest are counted
    assert lines[0].startswith("refused (tls_handshake) a client at 127.0.0.1: ")
    reader, writer = await asyncio.open_connection(host, port, ssl=authority.client_context())
    try:
        assert (await get(reader, writer))["upstream"] == "stable"  # the listener is fine
    finally:
        writer.close()


async def test_stopping_cuts_handshakes_under_way(upstreams, authority, tmp_path):
    stable, _ = upstreams
    path = tmp_path / "grayscale.yaml"
    path.write_text(proxy_config(one_route(url_of(stable)), tls_fields("tls", authority.issue())))
    proxy = Server(load_config(path))
    await proxy.start()
    host, port = address(proxy.proxy_url)
    silent_reader, silent = await asyncio.open_connection(host, port)  # sends nothing
    halfway_reader, halfway = await asyncio.open_connection(host, port)
    halfway.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
    assert await eventually(lambda: len(proxy.listener.tls.handshakes) == 2)
    await asyncio.wait_for(proxy.stop(), 5)
    assert await asyncio.wait_for(silent_reader.read(), 5) == b""
    assert await asyncio.wait_for(halfway_reader.read(), 5) == b""
    assert not proxy.listener.tls.handshakes
    silent.close()
    halfway.close()
