"""An upstream that streams one event without end: the proxy forwards it and meters nothing of
it past `server.max_event_bytes`, so its memory stays flat (it kept every line before)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from tests.support.configs import route_yaml
from tests.support.proxies import serve_subprocess
from tests.support.stall_watch import watching
from tests.support.upstream import serving


async def endless_event(request: web.Request) -> web.StreamResponse:
    """100 MiB of `data:` lines of one event: no blank line ever ends it."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    line = b"data: " + b"x" * 1000 + b"\n"
    for _ in range(100):
        await response.write(line * 1024)  # ~1 MiB
    await response.write_eof()
    return response


async def test_an_event_without_end_is_forwarded_in_flat_memory(tmp_path):
    app = web.Application()
    app.router.add_get("/{tail:.*}", endless_event)
    async with serving(app) as (url,):
        config = tmp_path / "grayscale.yaml"
        config.write_text(
            'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
            "state: {backend: memory}\nroutes:\n" + route_yaml(url, url, share=0.5, timeout="60s")
        )
        served = await serve_subprocess(config)
        try:
            received = 0
            async with (
                watching(served.process.pid, served.admin_url) as watch,
                aiohttp.ClientSession() as session,
                session.get(served.proxy_url + "/stream", headers={"X-User-Id": "u"}) as answer,
            ):
                async for chunk in answer.content.iter_any():
                    received += len(chunk)
            print(f"\n100 MiB in one event: memory grew {watch.grown_mib:.1f} MiB")
            assert received == 100 * 1024 * 1007  # forwarded whole
            assert watch.grown_mib < 20  # (it grew 104 MiB when the meter kept every line)
        finally:
            served.process.terminate()
            await served.process.wait()
