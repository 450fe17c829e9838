"""The demo's toy model servers, as a newcomer's curl would use them through the proxy."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.tools.demo.models import STABLE_MODEL, build_model_app
from tests.support.configs import route_yaml
from tests.support.waiting import eventually


async def test_a_client_hanging_up_mid_stream_prints_no_traceback(start_proxy):
    """`curl ... | head -c 100` leaves a token stream early; the proxy then drops its upstream
    request, and the model server must not print a traceback (the suite fails any test that
    logged at ERROR, which is where aiohttp puts a handler's traceback)."""
    app = build_model_app(STABLE_MODEL)
    finished: list[str] = []

    @web.middleware
    async def count_finished(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            finished.append(request.path)

    app.middlewares.append(count_finished)
    model = web.AppRunner(app, access_log=None)  # as the demo runs it
    await model.setup()
    await web.TCPSite(model, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{model.addresses[0][1]}"
    try:
        proxy = await start_proxy(route_yaml(url, url, share=0.0))
        host, port = proxy.proxy_url.removeprefix("http://").split(":")
        body = b'{"messages": [{"content": "hi"}], "stream": true}'
        for _ in range(3):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            await asyncio.wait_for(reader.readuntil(b"data:"), 5)
            writer.close()
        # (the streams' next writes find their clients gone, and their handlers end)
        assert await eventually(lambda: len(finished) == 3, within=5), finished
    finally:
        await model.cleanup()
