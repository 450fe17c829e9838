"""A tiny OpenAI-compatible model server for tests, as vLLM, TGI or llama.cpp answer.

`POST /v1/chat/completions` answers with a completion, or with server-sent events when the body
asks for `"stream": true`: optionally a role-only first frame (as vLLM and OpenAI send), the
tokens after `first_token_delay`, a final frame with `usage`, and `data: [DONE]`. It records
every body exactly as it arrived, and can cut a stream after `reset_after` tokens.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class ModelServer:
    """What one server answers, and what it received."""

    name: str
    tokens: tuple[str, ...] = ("Hello", ",", " world", "!")
    role_first: bool = True  # a first frame with the role and no content
    first_token_delay: float = 0.0  # seconds between the role frame and the first token
    reset_after: int | None = None  # tokens sent before the connection is cut
    bodies: list[bytes] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app[SERVER] = self
        app.router.add_post("/v1/chat/completions", completions)
        app.router.add_get("/v1/models", models)
        return app


SERVER = web.AppKey("model_server", ModelServer)


def _chunk(model: str, delta: dict[str, str], finish: str | None = None) -> bytes:
    document = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(document).encode() + b"\n\n"


async def completions(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER]
    body = await request.read()
    server.bodies.append(body)
    asked = json.loads(body)
    model = str(asked.get("model"))
    usage = {"prompt_tokens": 3, "completion_tokens": len(server.tokens), "total_tokens": 0}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if not asked.get("stream"):
        await asyncio.sleep(server.first_token_delay)
        message = {"role": "assistant", "content": "".join(server.tokens)}
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "system_fingerprint": server.name,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if server.role_first:
        await response.write(_chunk(model, {"role": "assistant", "content": ""}))
    await asyncio.sleep(server.first_token_delay)
    for index, token in enumerate(server.tokens):
        if server.reset_after is not None and index >= server.reset_after:
            await asyncio.sleep(0.05)  # the tokens so far reach the client first
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(_chunk(model, {"content": token}))
    await response.write(_chunk(model, {}, "stop"))
    document = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1}
    document |= {"model": model, "choices": [], "usage": usage}
    await response.write(b"data: " + json.dumps(document).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    return web.json_response({"object": "list", "data": [{"id": server.name, "object": "model"}]})
