"""Forwarding through a real proxy: bodies, streams, headers and upstream failures."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.configs import route_yaml
from tests.support.ports import free_port
from tests.support.tls import self_signed
from tests.support.upstream import GZIP_BODY, PROBE, UpstreamProbe, build_upstream, url_of


def probe_of(server: TestServer) -> UpstreamProbe:
    return server.app[PROBE]


async def test_method_path_and_query_preserved(proxy, client):
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        path = "/v1/models/a%2Fb/x:predict?q=1&q=2&s=%20sp&empty="
        async with client.request(method, proxy.proxy_url + path) as resp:
            body = await resp.json()
        assert resp.status == 200
        assert body["method"] == method
        assert body["raw_path"] == path


async def test_two_megabyte_body_arrives_intact_and_streamed(proxy, client):
    payload = os.urandom(2 * 1024 * 1024)
    async with client.post(proxy.proxy_url + "/upload", data=payload) as resp:
        body = await resp.json()
    assert body["body_length"] == len(payload)
    assert body["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert body["headers"]["Content-Length"] == str(len(payload))
    assert not body["chunked"]


async def test_a_chunked_upload_past_the_request_buffer_stays_chunked(proxy, client):
    parts = [os.urandom(100_000) for _ in range(20)]  # 2 MB: past the 1 MiB read first

    async def gen() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await asyncio.sleep(0)

    async with client.post(proxy.proxy_url + "/upload", data=gen()) as resp:
        body = await resp.json()
    assert body["chunked"]
    assert body["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


async def test_streamed_response_of_200_chunks_arrives_intact(proxy, client):
    async with client.get(proxy.proxy_url + "/chunks/200", headers={"X-User-Id": "u1"}) as resp:
        data = await resp.read()
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert resp.headers["X-Grayscale-Route"] == "models"
        assert resp.headers["X-Grayscale-Variant"] in ("stable", "candidate")
    assert data == b"".join(f"chunk-{i:04d};".encode() for i in range(200))


async def test_sse_first_event_arrives_before_upstream_finishes(upstreams, proxy, client):
    for user in ("alice", "bob", "carol", "dave"):  # both variants get exercised
        async with client.get(proxy.proxy_url + "/sse", headers={"X-User-Id": user}) as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert resp.headers["X-Accel-Buffering"] == "no"
            # The upstream holds the rest of the stream until we have seen the first event.
            first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=5)
            assert first == b"data: first\n\n"
            for upstream in upstreams:
                probe_of(upstream).release.set()
            rest = await resp.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        assert rest.count(b"data: event-") == 3
        for upstream in upstreams:
            probe_of(upstream).release.clear()


async def test_hop_by_hop_and_internal_headers_do_not_reach_upstream(proxy, client):
    headers = {
        "Connection": "keep-alive, X-Private-Hop",
        "X-Private-Hop": "secret",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "TE": "trailers",
        "X-Grayscale-Variant": "candidate",
        "X-Custom": "kept",
        "X-Forwarded-For": "203.0.113.9",
        "Host": "models.example.com",
    }
    async with client.get(proxy.proxy_url + "/h", headers=headers) as resp:
        seen = (await resp.json())["headers"]
        assert "Keep-Alive" not in resp.headers  # hop-by-hop from the upstream dropped too
        assert resp.headers["Set-Cookie"] == "a=1"
    lowered = {k.lower(): v for k, v in seen.items()}
    for name in ("x-private-hop", "proxy-authorization", "te", "x-grayscale-variant"):
        assert name not in lowered
    assert lowered["x-custom"] == "kept"
    assert lowered["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert lowered["x-forwarded-proto"] == "http"
    assert lowered["x-forwarded-host"] == "models.example.com"
    assert lowered["host"].startswith("127.0.0.1:")


async def test_client_headers_pass_and_none_are_invented(proxy, client):
    async with client.get(
        proxy.proxy_url + "/x",
        headers={"Accept-Encoding": "br", "User-Agent": "tests/1"},
        skip_auto_headers=("Accept",),
    ) as resp:
        seen = (await resp.json())["headers"]
    assert (seen["Accept-Encoding"], seen["User-Agent"]) == ("br", "tests/1")
    assert "Accept" not in seen


async def test_gzip_answer_passes_through_untouched(proxy, client):
    async with client.get(proxy.proxy_url + "/gzip") as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == GZIP_BODY


async def test_path_in_upstream_url_is_prepended(upstreams, start_proxy, client):
    stable, candidate = upstreams
    proxy = await start_proxy(
        route_yaml(url_of(stable) + "/base/", url_of(candidate) + "/base", share=0.5)
    )
    async with client.get(proxy.proxy_url + "/v1/x?a=1") as resp:
        assert (await resp.json())["raw_path"] == "/base/v1/x?a=1"


async def test_upstream_status_codes_pass_through(proxy, client):
    for code in (201, 204, 400, 404, 429, 500, 503):
        async with client.get(proxy.proxy_url + f"/status/{code}") as resp:
            assert resp.status == code


async def test_unmatched_path_is_404_json(upstreams, start_proxy, client):
    stable, candidate = upstreams
    proxy = await start_proxy(route_yaml(url_of(stable), url_of(candidate), prefix="/v1/models"))
    async with client.get(proxy.proxy_url + "/v2/other?user=x") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert await resp.json() == {
            "error": "no_route",
            "message": "no route matches this path",
            "path": "/v2/other",
        }


@pytest.mark.parametrize("variant", ["stable", "candidate"])
async def test_unreachable_upstream_is_502_json(upstreams, start_proxy, client, variant):
    stable, candidate = upstreams
    dead = f"http://127.0.0.1:{free_port()}"
    urls = (dead, url_of(candidate)) if variant == "stable" else (url_of(stable), dead)
    share = 0.0 if variant == "stable" else 1.0
    proxy = await start_proxy(route_yaml(*urls, share=share, extra="    fallback: never\n"))
    async with client.get(proxy.proxy_url + "/x", headers={"X-User-Id": "u"}) as resp:
        assert resp.status == 502
        body = await resp.json()
    assert body["error"] == "upstream_unreachable"
    assert (body["route"], body["variant"]) == ("models", variant)
    assert resp.headers["X-Grayscale-Variant"] == variant


async def test_upstream_dropping_the_connection_is_502_json(proxy, client):
    async with client.get(proxy.proxy_url + "/reset", headers={"X-User-Id": "u"}) as resp:
        assert resp.status == 502
        body = await resp.json()
    assert body["error"] == "upstream_reset"
    assert body["variant"] == resp.headers["X-Grayscale-Variant"]


async def test_slow_upstream_is_504_json(upstreams, start_proxy, client):
    stable, candidate = upstreams
    proxy = await start_proxy(
        route_yaml(url_of(stable), url_of(candidate), share=0.0, timeout="300ms")
    )
    async with client.get(proxy.proxy_url + "/slow/3") as resp:
        assert resp.status == 504
        body = await resp.json()
    assert body == {
        "error": "upstream_timeout",
        "message": "the upstream did not answer in time",
        "route": "models",
        "variant": "stable",
    }
    async with client.get(proxy.proxy_url + "/slow/0") as resp:  # and it still serves
        assert resp.status == 200


async def test_client_disconnect_cancels_upstream_request(upstreams, proxy, client):
    async with client.get(proxy.proxy_url + "/endless") as resp:
        await resp.content.readexactly(1024)
        variant = resp.headers["X-Grayscale-Variant"]
        resp.close()
    upstream = upstreams[0] if variant == "stable" else upstreams[1]
    await asyncio.wait_for(probe_of(upstream).disconnected.wait(), timeout=5)


@pytest.mark.parametrize("path", ["/endless", "/reset?after=5000"])
async def test_failure_mid_stream_cuts_the_client_connection(upstreams, start_proxy, client, path):
    stable, candidate = upstreams
    proxy = await start_proxy(
        route_yaml(url_of(stable), url_of(candidate), share=0.0, timeout="500ms")
    )
    async with client.get(proxy.proxy_url + path) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    async with client.get(proxy.proxy_url + "/x") as resp:
        assert resp.status == 200


async def test_expect_continue_is_answered_by_the_proxy(proxy, client):
    payload = os.urandom(300_000)
    async with client.post(proxy.proxy_url + "/upload", data=payload, expect100=True) as resp:
        body = await resp.json()
    assert body["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert "Expect" not in body["headers"]


async def test_head_request_gets_headers_only(proxy, client):
    async with client.head(proxy.proxy_url + "/x", headers={"X-User-Id": "u"}) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) > 0
        assert await resp.read() == b""


async def test_answer_delimited_by_closing_the_connection(start_proxy, client):
    async def old_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n")
        for part in (b"no length, ", b"no chunks: ", b"the end is the close"):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()

    server = await asyncio.start_server(old_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await start_proxy(
        route_yaml(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}", share=0.0)
    )
    try:
        for _ in range(2):  # the connection is not reused: the second one is new
            async with client.get(proxy.proxy_url + "/old") as resp:
                assert resp.status == 200
                assert await resp.read() == b"no length, no chunks: the end is the close"
    finally:
        server.close()
        await server.wait_closed()


async def test_https_upstreams_are_verified(upstreams, start_proxy, client, tmp_path):
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(build_upstream("tls"), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        url = f"https://127.0.0.1:{port}"
        trusted = route_yaml(url, url, share=0.0).replace(
            "connect_timeout: 1s}", f"connect_timeout: 1s, ca_file: {cert}}}"
        )
        proxy = await start_proxy(trusted)
        for _ in range(3):  # the second and third reuse the pooled TLS connection
            async with client.post(proxy.proxy_url + "/v1/x", data=b"over tls") as resp:
                body = await resp.json()
            assert "upstream" in body, body
            assert (resp.status, body["upstream"], body["body_length"]) == (200, "tls", 8)
        untrusted = await start_proxy(route_yaml(url, url, share=0.0))
        async with client.get(untrusted.proxy_url + "/v1/x") as resp:
            assert resp.status == 502
            assert "certificate" in (await resp.json())["message"]
    finally:
        await runner.cleanup()
