"""Mutual TLS and server names toward upstreams: an aiohttp upstream over TLS that requires a
client certificate from its own authority, asked by the upstream client and through the proxy."""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from proxy.app.server import Server
from proxy.config.loader import load_config
from proxy.http.client import Origin, UpstreamClient
from proxy.http.errors import UpstreamError
from proxy.http.h2_client import H2Client
from tests.support.certificates import Authority, Pem, serial_of
from tests.support.configs import one_route, proxy_config
from tests.support.h2_upstream import H2Upstream
from tests.support.h2_upstream import whole as h2_whole

NAME = "model.internal"  # the only name on the upstream's certificate


async def who(request: web.Request) -> web.Response:
    """Which client certificate the connection showed: its serial number."""
    der = request.transport.get_extra_info("ssl_object").getpeercert(True)
    return web.json_response({"client": str(serial_of(der))})


@contextlib.asynccontextmanager
async def upstream(context: ssl.SSLContext) -> AsyncIterator[str]:
    """An upstream on 127.0.0.1 over `context`: its https URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", who)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Authority, Authority, Pem, Pem]:
    """The servers' authority, the clients' authority, the upstream's certificate (for NAME
    only) and the proxy's client certificate."""
    servers, clients = Authority(tmp_path, "servers"), Authority(tmp_path, "clients")
    return servers, clients, servers.issue(NAME), clients.issue("grayscale")


def requires_client_certificates(
    pki: tuple[Authority, Authority, Pem, Pem], version: ssl.TLSVersion
) -> ssl.SSLContext:
    servers, clients, server_pem, _ = pki
    context = servers.server_context(server_pem, client_authority=clients)
    context.maximum_version = version
    return context


async def ask(client: UpstreamClient, origin: Origin) -> tuple[int, bytes]:
    answer = await client.request(
        origin,
        "GET",
        target=b"/",
        headers=b"",
        body=None,
        content_length=None,
        connect_timeout=5,
        first_byte_timeout=5,
    )
    body = await answer.read(5, time.monotonic() + 5)
    answer.release()
    return answer.status, body


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_the_client_shows_its_certificate_and_checks_the_server_name(pki, version):
    servers, _, _, client_pem = pki
    client = UpstreamClient()
    async with upstream(requires_client_certificates(pki, version)) as url:
        mutual = Origin(
            url, str(servers.ca_file), client_cert=(str(client_pem.cert), str(client_pem.key))
        )
        with pytest.raises(UpstreamError) as wrong_name:  # the URL's host is not on it
            await ask(client, mutual)
        assert wrong_name.value.reason == "connect"
        assert "IP address mismatch" in wrong_name.value.detail
        named = Origin(
            url,
            str(servers.ca_file),
            client_cert=(str(client_pem.cert), str(client_pem.key)),
            server_name=NAME,
        )
        status, body = await ask(client, named)
        assert (status, body) == (200, b'{"client": "%d"}' % serial_of_pem(client_pem))
        anonymous = Origin(url, str(servers.ca_file), server_name=NAME)
        with pytest.raises(UpstreamError) as refused:
            await ask(client, anonymous)
        if version is ssl.TLSVersion.TLSv1_2:  # refused in the handshake
            assert refused.value.reason == "connect"
            assert "during the TLS handshake" in refused.value.detail
        else:  # (TLS 1.3: after it, at the first read)
            assert refused.value.reason == "reset"
    client.close()


async def test_renew_tls_reads_the_client_certificate_again_for_new_connections(pki):
    servers, clients, _, client_pem = pki
    client = UpstreamClient()
    async with upstream(requires_client_certificates(pki, ssl.TLSVersion.TLSv1_3)) as url:
        origin = Origin(
            url,
            str(servers.ca_file),
            keepalive_timeout=0,  # (a new connection for each request)
            client_cert=(str(client_pem.cert), str(client_pem.key)),
            server_name=NAME,
        )
        first = serial_of_pem(client_pem)
        assert await ask(client, origin) == (200, b'{"client": "%d"}' % first)
        renewed = clients.issue("grayscale", cert=client_pem.cert, key=client_pem.key)
        assert await ask(client, origin) == (200, b'{"client": "%d"}' % first)  # not yet read
        client.renew_tls()
        assert await ask(client, origin) == (200, b'{"client": "%d"}' % serial_of_pem(renewed))
    client.close()


async def test_connections_outside_the_pool_share_its_tls_context_and_its_renewal(pki):
    """A WebSocket tunnel's connection is made with the pool's context: built once (loading a
    system store takes milliseconds), renewed with it."""
    servers, _, _, client_pem = pki
    client = UpstreamClient()
    origin = Origin(
        "https://127.0.0.1:1",
        str(servers.ca_file),
        client_cert=(str(client_pem.cert), str(client_pem.key)),
        server_name=NAME,
    )
    first = client.tls(origin)
    assert first is not None and client.tls(origin) is first
    client.renew_tls()
    renewed = client.tls(origin)
    assert renewed is not None and renewed is not first
    assert client.tls(Origin("http://127.0.0.1:1")) is None
    client.close()


async def test_through_the_proxy_with_and_without_the_client_certificate(pki, client, tmp_path):
    servers, _, _, client_pem = pki
    async with upstream(requires_client_certificates(pki, ssl.TLSVersion.TLSv1_2)) as url:
        trusted = f', ca_file: "{servers.ca_file}", server_name: {NAME}'
        mutual = (
            f'{trusted}, client_cert_file: "{client_pem.cert}", client_key_file: "{client_pem.key}"'
        )
        path = tmp_path / "grayscale.yaml"
        path.write_text(proxy_config(one_route(url, upstream=mutual)))
        proxy = Server(load_config(path))
        await proxy.start()
        try:
            async with client.get(proxy.proxy_url + "/v1/x") as resp:
                assert resp.status == 200
                assert await resp.json() == {"client": str(serial_of_pem(client_pem))}
            path.write_text(proxy_config(one_route(url, upstream=trusted)))
            assert (await proxy.reload("api")).result == "applied"
            async with client.get(proxy.proxy_url + "/v1/x") as resp:
                body = await resp.json()
            assert resp.status == 502
            assert body["error"] == "upstream_unreachable"
            assert body["message"] == (
                "cannot connect: the upstream closed the connection during the TLS handshake"
            )
        finally:
            await proxy.stop()


def serial_of_pem(pem: Pem) -> int:
    """The serial number of the first certificate in `pem`'s chain."""
    der = ssl.PEM_cert_to_DER_cert(pem.cert.read_text())
    return serial_of(der)


async def test_an_http2_upstream_gets_the_client_certificate_and_the_server_name(pki):
    # The HTTP/2 client (gRPC upstreams) takes the same TLS settings as the HTTP/1.1 one.
    servers, _, _, client_pem = pki
    h2 = await H2Upstream(tls=requires_client_certificates(pki, ssl.TLSVersion.TLSv1_3)).start()
    client = H2Client()
    try:
        named = Origin(
            h2.url,
            str(servers.ca_file),
            client_cert=(str(client_pem.cert), str(client_pem.key)),
            server_name=NAME,
        )
        answer = await client.request(
            named,
            "GET",
            target=b"/h2",
            headers=b"",
            body=None,
            content_length=None,
            connect_timeout=5,
            first_byte_timeout=5,
        )
        assert (answer.status, await h2_whole(answer)) == (200, b"GET /h2 0")
        anonymous = Origin(h2.url, str(servers.ca_file), server_name=NAME)
        with pytest.raises(UpstreamError):
            await client.request(
                anonymous,
                "GET",
                target=b"/h2",
                headers=b"",
                body=None,
                content_length=None,
                connect_timeout=5,
                first_byte_timeout=5,
            )
        assert len(h2.requests) == 1
    finally:
        client.close()
        await h2.stop()
