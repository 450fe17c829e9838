"""The admin application: health and readiness."""

from __future__ import annotations

import asyncio

from aiohttp import web

READY = web.AppKey("ready", asyncio.Event)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """The config is loaded and the proxy listener accepts connections."""
    if request.app[READY].is_set():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


def build_admin(ready: asyncio.Event) -> web.Application:
    """The admin application; `ready` is set once the proxy listens."""
    app = web.Application()
    app[READY] = ready
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
