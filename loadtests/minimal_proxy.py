"""The floor: a minimal aiohttp + uvloop proxy with a sticky mmh3 split, and nothing else.

python loadtests/minimal_proxy.py PORT STABLE_URL CANDIDATE_URL [SHARE]
"""

from __future__ import annotations

import sys

import aiohttp
import mmh3
from aiohttp import web

from proxy.runtime.event_loop import loop_factory

SKIP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


def main() -> None:
    port, stable, candidate = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    threshold = round(float(sys.argv[4] if len(sys.argv) > 4 else 0.1) * 10000)
    session: aiohttp.ClientSession | None = None

    async def start(app: web.Application) -> None:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(app: web.Application) -> None:
        assert session is not None
        await session.close()

    async def handle(request: web.Request) -> web.Response:
        assert session is not None
        user = request.headers.get("X-User-Id", "")
        bucket = (mmh3.hash(f"s:{user}", 0, signed=False) * 10000) >> 32
        base = candidate if user and bucket < threshold else stable
        headers = {k: v for k, v in request.headers.items() if k.lower() not in SKIP}
        body = await request.read()
        async with session.request(
            request.method, base + request.path_qs, headers=headers, data=body
        ) as answer:
            data = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in SKIP}
            return web.Response(status=answer.status, body=data, headers=out)

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop_factory()()
    )


if __name__ == "__main__":
    main()
