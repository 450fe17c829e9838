"""Running the proxy and admin listeners for a config."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from aiohttp import web

from proxy.access_log import AccessLog, secret_from_env
from proxy.admin import Admin
from proxy.analysis.loop import Analyzer
from proxy.analysis.webhook import RollbackNotifier
from proxy.analysis.window import LocalObservations
from proxy.config.model import Config, StateBackend
from proxy.gateway import Gateway
from proxy.metrics import Recorder
from proxy.rollout.controller import RolloutController
from proxy.rollout.store import FileStore, MemoryStore, StateStore
from proxy.routing import RoutingTable

log = logging.getLogger("grayscale.server")


def _url(address: object) -> str:
    host, port = address[:2] if isinstance(address, tuple) else ("?", 0)
    return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"


def state_store(config: Config) -> StateStore:
    """The state store the config asks for."""
    if config.state.backend is StateBackend.MEMORY:
        return MemoryStore()
    return FileStore(config.state.path)


class Server:
    """The proxy listener and the admin listener of one process."""

    def __init__(self, config: Config, store: StateStore | None = None):
        self.config = config
        self.ready = asyncio.Event()
        self.recorder = Recorder()
        self.controller = RolloutController(store if store is not None else state_store(config))
        self.access_log = None
        if config.access_log is not None:
            self.access_log = AccessLog(
                config.access_log,
                secret_from_env(config.access_log.hash_secret_env),
                on_drop=self.recorder.access_log_dropped.inc,
            )
        token = os.environ.get(config.admin.token_env) or None
        if token is None:
            log.warning(
                "$%s is not set: the admin API refuses every change", config.admin.token_env
            )
        observations = LocalObservations(
            {r.name: r.analysis.window for r in config.routes if r.analysis is not None}
        )
        self.analyzer = Analyzer(config.routes, self.controller, observations, self.recorder)
        self.notifier = RollbackNotifier()
        self.controller.rollback_listeners += [self.recorder.count_rollback, self.notifier]
        self.gateway = Gateway(
            table=RoutingTable(config.routes),
            controller=self.controller,
            recorder=self.recorder,
            access_log=self.access_log,
            observations=observations,
            trusted_proxies=config.server.trusted_proxies,
        )
        admin = Admin(
            config=config,
            controller=self.controller,
            recorder=self.recorder,
            analyzer=self.analyzer,
            ready=self.ready,
            token=token,
        )
        self._runners = [
            web.AppRunner(self.gateway.build_app(), handler_cancellation=True, access_log=None),
            web.AppRunner(admin.build_app(), access_log=None),
        ]
        self.proxy_url = ""
        self.admin_url = ""

    async def start(self, now: float | None = None) -> None:
        """Load rollout state, bind both listeners; then the proxy is ready."""
        await self.controller.start(self.config.routes, time.time() if now is None else now)
        if self.access_log is not None:
            self.access_log.start()
        server = self.config.server
        urls: list[str] = []
        for runner, listen in zip(self._runners, (server.listen, server.admin_listen), strict=True):
            await runner.setup()
            await web.TCPSite(runner, listen.host, listen.port, reuse_address=True).start()
            urls.append(_url(runner.addresses[0]))
        self.proxy_url, self.admin_url = urls
        await self.notifier.start()
        self.analyzer.start()
        self.ready.set()
        log.info("proxy listening on %s, admin on %s", self.proxy_url, self.admin_url)
        for route in self.config.routes:
            log.info(
                "route %s: %s -> stable %s, candidate %s (%s)",
                route.name,
                route.path_prefix,
                route.stable.url,
                route.candidate.url,
                self.controller.state(route.name, time.time()).value,
            )

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, close upstream connections."""
        self.ready.clear()
        await self.analyzer.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        await self.notifier.close()
        if self.access_log is not None:
            self.access_log.close()
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
