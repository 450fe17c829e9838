"""Model-aware routing on OpenAI-style APIs: routes on one path split by the body's `model`, and
an upstream that names its model differently gets the body with its own name, every other byte
as the client sent it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from proxy.app.server import Server
from proxy.routing import bucket, threshold
from tests.support.openai_server import ModelServer
from tests.support.ports import free_port
from tests.support.proxies import ProxyFactory
from tests.support.upstream import url_of

# Odd spacing, escapes and number forms, all of which must reach the upstream as written.
BODY = (
    b'{ "messages":[{"role":"user","content":"caf\\u00e9 \xe2\x98\x95"}],\n'
    b'  "model" :"llama-3-8b", "temperature":1.50, "max_tokens":1e2 }'
)


@pytest.fixture
async def model_servers() -> AsyncIterator[dict[str, tuple[ModelServer, TestServer]]]:
    servers = {}
    for name in ("llama-stable", "llama-candidate", "mistral"):
        model = ModelServer(name)
        server = TestServer(model.app(), host="127.0.0.1")
        await server.start_server()
        servers[name] = (model, server)
    yield servers
    for _, server in servers.values():
        await server.close()


@pytest.fixture
async def gateway(model_servers, start_proxy: ProxyFactory) -> Server:
    def url(name: str) -> str:
        return url_of(model_servers[name][1])

    return await start_proxy(
        "  - name: llama\n"
        "    match: {path_prefix: /v1/, model: [llama-3-8b]}\n"
        f'    stable: {{url: "{url("llama-stable")}"}}\n'
        f'    candidate: {{url: "{url("llama-candidate")}", model: llama-3-8b-v2}}\n'
        '    cohort: {keys: ["header:X-User-Id"]}\n'
        "    ramp: {base: 0.5}\n"
        "  - name: mistral\n"
        "    match: {path_prefix: /v1/, model: [mistral-7b, mistral-7b-instruct]}\n"
        f'    stable: {{url: "{url("mistral")}"}}\n'
        f'    candidate: {{url: "{url("mistral")}"}}\n'
        '    cohort: {keys: ["header:X-User-Id"]}\n',
        ", max_body_bytes: 4096",
    )


async def post(
    client: aiohttp.ClientSession,
    proxy: Server,
    body: bytes | AsyncIterator[bytes],
    user: str = "u1",
) -> tuple[aiohttp.ClientResponse, dict[str, object]]:
    async with client.post(
        f"{proxy.proxy_url}/v1/chat/completions",
        data=body,
        headers={"X-User-Id": user, "Content-Type": "application/json"},
    ) as response:
        return response, await response.json()


def user_for(variant: str, proxy: Server) -> str:
    """A user id that the llama route sends to `variant` (found by asking the core)."""
    route = proxy.config.routes[0]
    for i in range(1000):
        user = f"user-{i}"
        gets = bucket(route.cohort.salt, user) < threshold(0.5)
        if gets == (variant == "candidate"):
            return user
    raise AssertionError("no such user")


async def test_two_routes_on_one_path_split_by_model(gateway, model_servers, client):
    mistral = json.dumps({"model": "mistral-7b-instruct", "messages": []}).encode()
    for body, route, upstreams in (
        (BODY, "llama", {"llama-stable", "llama-candidate"}),
        (mistral, "mistral", {"mistral"}),
    ):
        for user in ("a", "b", "c", "d"):
            response, answer = await post(client, gateway, body, user)
            assert response.status == 200, answer
            assert response.headers["X-Grayscale-Route"] == route
            assert answer["system_fingerprint"] in upstreams
    assert len(model_servers["mistral"][0].bodies) == 4
    assert model_servers["mistral"][0].bodies[0] == mistral  # no rewrite: sent as is


async def test_the_candidate_alone_sees_its_own_model_name_and_every_other_byte_as_sent(
    gateway, model_servers, client
):
    stable, candidate = model_servers["llama-stable"][0], model_servers["llama-candidate"][0]
    response, answer = await post(client, gateway, BODY, user_for("candidate", gateway))
    assert (response.status, response.headers["X-Grayscale-Variant"]) == (200, "candidate")
    assert candidate.bodies == [BODY.replace(b'"llama-3-8b"', b'"llama-3-8b-v2"')]
    assert answer["model"] == "llama-3-8b-v2"
    response, answer = await post(client, gateway, BODY, user_for("stable", gateway))
    assert response.headers["X-Grayscale-Variant"] == "stable"
    assert stable.bodies == [BODY]


async def test_a_chunked_body_is_rewritten_with_its_length(gateway, model_servers, client):
    async def pieces() -> AsyncIterator[bytes]:
        yield BODY[:20]
        yield BODY[20:]

    response, _ = await post(client, gateway, b"", user_for("candidate", gateway))
    assert response.status == 404  # an empty body names no model: no route takes it...
    response, answer = await post(client, gateway, pieces(), user_for("candidate", gateway))
    assert response.status == 200, answer  # ...a streamed one is read whole, then routed
    assert model_servers["llama-candidate"][0].bodies == [
        BODY.replace(b'"llama-3-8b"', b'"llama-3-8b-v2"')
    ]


@pytest.mark.parametrize(
    "case",
    [
        (b"model=llama-3-8b", 400, "invalid_json_body", "the body is not a JSON object"),
        (b'{"model": "llama-3-8b", "model": "x"}', 400, "invalid_json_body", "model twice"),
        (b'{"model": "llama-3-8b",', 400, "invalid_json_body", "not valid JSON"),
        (b'{"model": "gpt-9"}', 404, "no_route", "no route matches this path and model"),
        (b'{"messages": []}', 404, "no_route", "no route matches this path and model"),
        (b'{"model": "llama-3-8b", "pad": "' + b"x" * 5000 + b'"}', 413, "", "max_body_bytes"),
    ],
)
async def test_bodies_the_router_cannot_read_get_a_clear_4xx(gateway, model_servers, client, case):
    body, status, error, message = case
    response, answer = await post(client, gateway, body)
    assert response.status == status, answer
    found = answer["error"]  # (OpenAI's shape, which its client libraries read)
    assert isinstance(found, dict), answer
    assert found["type"] == "invalid_request_error" and found["code"].startswith(error)
    assert message in found["message"], answer
    assert not any(model.bodies for model, _ in model_servers.values())


async def test_the_openai_client_reads_the_proxys_own_errors_on_a_model_route(start_proxy):
    dead = f"http://127.0.0.1:{free_port()}"  # (nothing listens there)
    proxy = await start_proxy(
        "  - name: llama\n"
        "    match: {path_prefix: /v1/, model: [llama-3-8b]}\n"
        f'    stable: {{url: "{dead}"}}\n'
        f'    candidate: {{url: "{dead}"}}\n'
        '    cohort: {keys: ["header:X-User-Id"]}\n'
    )
    client = openai.AsyncOpenAI(base_url=f"{proxy.proxy_url}/v1", api_key="-", max_retries=0)
    try:
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(
                model="llama-3-8b", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.chat.completions.create(
                model="gpt-9", messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        await client.close()
    error = failed.value
    assert (error.status_code, error.code) == (502, "upstream_unreachable")
    assert error.type == "server_error"
    assert "connect" in error.message  # (was only "Error code: 502")
    assert unknown.value.code == "no_route" and "no route matches" in unknown.value.message


async def test_the_official_openai_client_streams_through_the_proxy(gateway, model_servers):
    client = openai.AsyncOpenAI(
        base_url=f"{gateway.proxy_url}/v1",
        api_key="not-used",
        default_headers={"X-User-Id": user_for("candidate", gateway)},
        max_retries=0,
    )
    try:
        stream = await client.chat.completions.create(
            model="llama-3-8b",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, models, usage = "", set(), None
        async for chunk in stream:
            models.add(chunk.model)
            usage = chunk.usage or usage
            text += "".join(choice.delta.content or "" for choice in chunk.choices)
        completion = await client.chat.completions.create(
            model="llama-3-8b", messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        await client.close()
    assert text == "Hello, world!"
    assert models == {"llama-3-8b-v2"} and usage is not None and usage.completion_tokens == 4
    assert completion.choices[0].message.content == "Hello, world!"
    sent = [json.loads(body) for body in model_servers["llama-candidate"][0].bodies]
    assert [body["model"] for body in sent] == ["llama-3-8b-v2", "llama-3-8b-v2"]
