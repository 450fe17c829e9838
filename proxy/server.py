"""Running the proxy and admin listeners for a config."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from proxy.admin import build_admin
from proxy.config.model import Config, Listen
from proxy.gateway import build_gateway
from proxy.routing import RoutingTable

log = logging.getLogger("grayscale.server")


def _url(address: object) -> str:
    host, port = address[:2] if isinstance(address, tuple) else ("?", 0)
    return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"


class Server:
    """The proxy listener and the admin listener of one process."""

    def __init__(self, config: Config, now: float | None = None):
        self.config = config
        self.ready = asyncio.Event()
        table = RoutingTable(config.routes, {}, time.time() if now is None else now)
        self._runners = [
            web.AppRunner(
                build_gateway(table, config.server.trusted_proxies),
                handler_cancellation=True,
                access_log=None,
            ),
            web.AppRunner(build_admin(self.ready), access_log=None),
        ]
        self.proxy_url = ""
        self.admin_url = ""

    async def start(self) -> None:
        """Bind both listeners; then the proxy is ready."""
        listens: tuple[Listen, Listen] = (
            self.config.server.listen,
            self.config.server.admin_listen,
        )
        urls: list[str] = []
        for runner, listen in zip(self._runners, listens, strict=True):
            await runner.setup()
            await web.TCPSite(runner, listen.host, listen.port, reuse_address=True).start()
            urls.append(_url(runner.addresses[0]))
        self.proxy_url, self.admin_url = urls
        self.ready.set()
        log.info("proxy listening on %s, admin on %s", self.proxy_url, self.admin_url)
        for route in self.config.routes:
            log.info(
                "route %s: %s -> stable %s, candidate %s",
                route.name,
                route.path_prefix,
                route.stable.url,
                route.candidate.url,
            )

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, close upstream connections."""
        self.ready.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        log.info("stopped")


async def serve_until_signalled(config: Config) -> None:
    """Run `config` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = Server(config)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
