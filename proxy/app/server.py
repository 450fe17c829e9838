"""Running the proxy and admin listeners for a config, and reloading it.

Invariants
- Every reload that reads a valid file (applied or unchanged) reads the certificate files
  again: new connections get what they hold now, open ones keep theirs. With `watch`, a change
  to a certificate file reloads as a change to the config file does.
- Turning a listener's TLS on or off takes a restart (the reload says so); its certificate,
  key and minimum version change on reload.
- Each refused connection or request head, on either listener, is counted and (rate-limited)
  logged by one `RefusalLog`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import secrets
import signal
import ssl
import time

from proxy.analysis.analyzer import Analyzer
from proxy.analysis.outcome_reports import ReportedOutcomes
from proxy.analysis.sources import InProcess
from proxy.analysis.webhook import RollbackNotifier
from proxy.analysis.window import LocalObservations
from proxy.api.admin import Admin
from proxy.api.listener import AdminListener
from proxy.app.certificates import CertificateWatcher
from proxy.app.workers import Worker
from proxy.config.loader import ConfigError, load_config
from proxy.config.model import AccessLogConfig, AnalysisMethod, Config, StateBackend
from proxy.config.reload import ConfigWatcher, ReloadResult, restart_required
from proxy.dataplane.gateway import Gateway
from proxy.fleet.member import FleetMember
from proxy.fleet.redis_connection import (
    connect,
    connect_cluster,
    connect_sentinel,
    describe,
    replica_name,
)
from proxy.http.listener import Listener
from proxy.http.tls import ServerTls
from proxy.records.request_id import Minter, Reader, key_of
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import identity_of
from proxy.rollout.redis_store import Client, RedisStore
from proxy.rollout.store import FileStore, MemoryStore, StateStore
from proxy.runtime import clock
from proxy.telemetry.access_log import AccessLog, secret_from_env
from proxy.telemetry.host_metrics import HostMetrics
from proxy.telemetry.metrics import COMPILED, Recorder
from proxy.telemetry.refusals import RefusalLog

log = logging.getLogger("grayscale.server")


def _url(address: object, tls: bool) -> str:
    host, port = address[:2] if isinstance(address, tuple) else ("?", 0)
    where = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return f"https://{where}" if tls else f"http://{where}"


def _tls_switched(running: Config, new: Config) -> tuple[str, ...]:
    """The listeners whose TLS `new` turns on or off (which takes a restart)."""
    fields = {
        "server.tls": (running.server.tls, new.server.tls),
        "server.admin_tls": (running.server.admin_tls, new.server.admin_tls),
    }
    return tuple(name for name, (old, now) in fields.items() if (old is None) != (now is None))


def state_store(config: Config, redis: Client | None = None) -> StateStore:
    """The state store the config asks for (`redis`: the client, for the redis backend)."""
    state = config.state
    if state.backend is StateBackend.MEMORY:
        return MemoryStore()
    if state.backend is StateBackend.REDIS:
        assert redis is not None
        where = describe(state.url)
        if state.sentinel is not None:
            where = f"redis master {state.sentinel.service} (by its sentinels)"
        elif state.cluster:
            where = f"redis cluster of {describe(state.url).removeprefix('redis at ')}"
        return RedisStore(redis, state.key_prefix, where, state.min_replicas_ack)
    return FileStore(state.path)


def _redis(config: Config) -> Client | None:
    """The Redis client of the fleet, when the state is kept in Redis."""
    state = config.state
    if state.backend is not StateBackend.REDIS:
        return None
    if state.password_env and not os.environ.get(state.password_env):
        log.warning("$%s is not set: connecting to Redis without a password", state.password_env)
    if state.sentinel is not None:
        return connect_sentinel(state.sentinel, state.password_env)
    if state.cluster:
        return connect_cluster(state.url, state.password_env, state.ca_file)
    return connect(state.url, state.password_env, state.ca_file)


def _spans(config: Config) -> dict[str, float]:
    """Each analysed route's window: the sequential method counts everything since the rollout
    began (a window without end)."""
    return {
        r.name: math.inf if r.analysis.method is AnalysisMethod.SEQUENTIAL else r.analysis.window
        for r in config.routes
        if r.analysis is not None
    }


def _identities(config: Config) -> dict[str, str]:
    return {route.name: identity_of(route) for route in config.routes}


def request_id_key(config: Config) -> bytes:
    """The key of this process's request ids: from the variable `outcomes.secret_env` (the
    same on every replica and worker, so that any of them reads any id), else random (then only
    this process reads them; the supervisor of several workers gives them all one)."""
    secret = os.environ.get(config.outcomes.secret_env, "")
    if secret:
        return key_of(secret)
    if config.state.backend is StateBackend.REDIS:
        log.warning(
            "$%s is not set: outcomes can be reported only to the replica that served the request",
            config.outcomes.secret_env,
        )
    return secrets.token_bytes(32)


MIN_TOKEN = 32  # characters an admin token should have


def _admin_token(config: Config) -> str | None:
    token = os.environ.get(config.admin.token_env) or None
    if token is None:
        log.warning("$%s is not set: the admin API refuses every change", config.admin.token_env)
    elif len(token) < MIN_TOKEN:
        log.warning(
            "$%s is shorter than %d characters: use a long random token",
            config.admin.token_env,
            MIN_TOKEN,
        )
    return token


def _exposed_admin(config: Config) -> bool:
    """Whether the admin listener is reachable from other hosts while reads need no token."""
    if config.admin.protect_reads:
        return False
    host = config.server.admin_listen.host
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


class Server:
    """The proxy and admin listeners of one process, and the config they serve.

    With `watch`, the config file is polled and reloaded when it changes.
    """

    def __init__(
        self,
        config: Config,
        store: StateStore | None = None,
        watch: bool = False,
        worker: Worker | None = None,
    ):
        """`worker`: this process is one of several serving the same ports on the host."""
        self.worker = worker
        self.config = config
        self.started_with = config
        self.ready = asyncio.Event()
        self.recorder = Recorder()
        self.redis = _redis(config)
        self.controller = RolloutController(
            store if store is not None else state_store(config, self.redis)
        )
        self.access_log = None
        # One secret keys the access log's user hashes and the audit's token ids.
        secret = secret_from_env(
            (config.access_log or AccessLogConfig()).hash_secret_env,
            quiet=config.access_log is None,
        )
        if config.access_log is not None:
            self.access_log = AccessLog(
                config.access_log, secret, on_drop=self.recorder.count_access_log_drop
            )
        self.observations = LocalObservations(_spans(config), _identities(config))
        self.fleet = None
        if self.redis is not None:
            self.fleet = FleetMember(
                self.redis,
                config.state.key_prefix,
                replica_name(),
                self.observations,
                config.state.max_clock_skew,
            )
            fleet = self.fleet
            self.controller.store_checks.append(lambda: fleet.flush_error)
        self.analyzer = Analyzer(
            config.routes,
            self.controller,
            self.fleet if self.fleet is not None else InProcess(self.observations),
            self.recorder,
            self.fleet,
        )
        self.notifier = RollbackNotifier()
        self.controller.rollback_listeners += [self.recorder.count_rollback, self.notifier]
        self.controller.promotion_listeners += [
            self.recorder.count_promotion,
            self.notifier.promoted,
        ]
        self.host_metrics = None
        if worker is not None:
            self.host_metrics = HostMetrics(
                self.recorder.registry, worker.folder, worker.index, worker.count
            )
        key = request_id_key(config)
        self.book = ReportedOutcomes(
            Reader(key), [self.recorder.observe_outcome, self.observations.add_outcome]
        )
        self.book.use(config.outcomes, config.routes)
        self.gateway = Gateway(
            config,
            self.controller,
            self.recorder,
            self.access_log,
            observations=self.observations,
            minter=Minter(key),
        )
        self.admin = Admin(
            config=config,
            controller=self.controller,
            recorder=self.recorder,
            analyzer=self.analyzer,
            ready=self.ready,
            token=_admin_token(config),
            reload=self.reload,
            breaker=self.gateway.breaker,
            shadows=self.gateway.shadower.status,
            actor_key=secret,
            book=self.book,
            host=self.host_metrics,
        )
        if self.fleet is not None:
            member = self.fleet
            self.admin.clock_error = lambda: member.clock_error
        self.last_reload: ReloadResult | None = None
        self._reload_lock = asyncio.Lock()
        self._watcher = ConfigWatcher(config.source, self.reload_from_file) if watch else None
        self._certificates = CertificateWatcher(lambda: self.config, self.reload_from_file)
        self.refusals = RefusalLog(self.recorder)
        tls, admin_tls = config.server.tls, config.server.admin_tls
        self.listener = Listener(
            self.gateway.handle,
            body_timeout=config.server.client_body_timeout,
            send_timeout=config.server.send_timeout,
            http2=config.server.http2,
            http2_max_streams=config.server.http2_max_streams,
            tls=None if tls is None else ServerTls(tls, config.server.http2),
            on_refused=self.refusals,
        )
        self.admin_listener = AdminListener(
            self.admin, None if admin_tls is None else ServerTls(admin_tls), self.refusals
        )
        self.proxy_url = ""
        self.admin_url = ""

    async def start(self, now: float | None = None) -> None:
        """Load rollout state, bind both listeners; then the proxy is ready."""
        await self.controller.start(self.config.routes, clock.now() if now is None else now)
        self._count_runs(self.config)
        if self.access_log is not None:
            self.access_log.start()
        server = self.config.server
        shared = self.worker is not None  # the ports are bound by every worker
        await self.listener.start(server.listen.host, server.listen.port, reuse_port=shared)
        self.proxy_url = _url(self.listener.address, self.listener.tls is not None)
        listen = server.admin_listen
        address = await self.admin_listener.start(listen.host, listen.port, reuse_port=shared)
        self.admin_url = _url(address, self.admin_listener.tls is not None)
        await self.notifier.start()
        if self.host_metrics is not None:
            self.host_metrics.start()
        if self.fleet is not None:
            self.fleet.start()
        self.analyzer.start()
        if self._watcher is not None:
            self._watcher.start()
            self._certificates.start()
        self.ready.set()
        log.info(
            "proxy listening on %s, admin on %s (%s)%s",
            self.proxy_url,
            self.admin_url,
            "compiled" if COMPILED else "pure Python",
            "" if self.worker is None else f" (worker {self.worker.index})",
        )
        if _exposed_admin(self.config):
            log.warning(
                "the admin API listens on %s and /status and /metrics need no token: keep it on "
                "a private network, or set admin.protect_reads",
                self.config.server.admin_listen,
            )
        self._log_routes()

    def _log_routes(self) -> None:
        now = clock.now()
        for route in self.config.routes:
            log.info(
                "route %s: %s -> stable %s, candidate %s (%s)",
                route.name,
                route.path_prefix,
                route.stable.url,
                route.candidate.url,
                self.controller.state(route.name, now).value,
            )

    async def stop(self) -> None:
        """Shut down gracefully: not ready at once, then (after `shutdown_delay`) stop accepting,
        let requests in flight finish for up to `drain_timeout`, and close everything."""
        self.ready.clear()
        delay = self.config.server.shutdown_delay
        if delay:
            log.info("not ready; still accepting for %.1f s so load balancers notice", delay)
            await asyncio.sleep(delay)
        if self._watcher is not None:
            await self._watcher.stop()
        await self._certificates.stop()
        await self.analyzer.stop()
        if self.fleet is not None:
            await self.fleet.decider.stop()  # another replica decides from now on
        drain = self.started_with.server.drain_timeout
        log.info("draining requests in flight (at most %.0f s)", drain)
        await self.listener.stop(drain)  # the admin API answers while the proxy drains
        await self.gateway.shadower.stop()  # shadow copies are no user's: not waited for
        if self.fleet is not None:
            await self.fleet.stop()  # the last observations, drained requests' included
        if self.host_metrics is not None:
            await self.host_metrics.stop()
        await self.admin_listener.stop()
        await self.controller.close()
        if self.redis is not None:
            await self.redis.aclose()
        self.gateway.client.close()
        self.gateway.h2.close()
        await self.notifier.close()
        if self.access_log is not None:
            self.access_log.close()
        log.info("stopped")

    async def reload_from_file(self) -> ReloadResult:
        """A reload because the watched file changed."""
        return await self.reload("file")

    async def reload(self, trigger: str) -> ReloadResult:
        """Read the config file again and apply it if it is valid and changed.

        An invalid file changes nothing: the running config stays in force.
        """
        async with self._reload_lock:
            try:
                config = load_config(self.config.source, self.config.options)
                if self.worker is not None:
                    config = self.worker.config(config)
            except ConfigError as exc:
                errors = tuple(str(issue) for issue in exc.issues)
                for error in errors:
                    log.error("reload refused, the running config stays: %s", error)
                result = ReloadResult(time.time(), trigger, "invalid", self.config.digest, errors)
                self.recorder.count_config_reload(applied=False)
            else:
                outcome = "unchanged" if config.digest == self.config.digest else "applied"
                restart = restart_required(self.started_with, config)
                restart += _tls_switched(self.started_with, config)
                for name in restart:
                    log.warning("%s changed: it takes effect only after a restart", name)
                if outcome == "applied":
                    await self.apply(config)
                    log.info("config %s applied (%s)", config.digest, trigger)
                self._renew_certificates(config)
                result = ReloadResult(time.time(), trigger, outcome, config.digest, (), restart)
                self.recorder.count_config_reload(applied=True)
            self.last_reload = result
            self.admin.last_reload = result
        if trigger == "api" and self.worker is not None:
            self.worker.ask_for_reload()  # the other workers too
        return result

    def _renew_certificates(self, config: Config) -> None:
        """Read the certificate files of `config` again, for the connections to come."""
        listeners = (
            ("server.tls", self.listener.tls, config.server.tls),
            ("server.admin_tls", self.admin_listener.tls, config.server.admin_tls),
        )
        for name, held, tls in listeners:
            if held is not None and tls is not None:
                try:
                    held.use(tls)
                except (OSError, ssl.SSLError) as exc:  # (changed since the file was checked)
                    log.warning("%s did not load, the previous certificate stays: %s", name, exc)
        self.gateway.client.renew_tls()
        self.gateway.h2.renew_tls()

    def _count_runs(self, config: Config) -> None:
        """Count each route's requests toward its rollout's current run (the analysis keeps
        this up to date as runs change)."""
        for route in config.routes:
            if route.name in self.controller:
                self.observations.count(route.name, self.controller.run(route.name))

    async def apply(self, config: Config) -> None:
        """Switch to `config`: rollouts first, then the data plane, then the analysis.

        Requests in flight finish on the snapshot they started with; rollouts keep their state
        unless their candidate changed.
        """
        await self.controller.reconcile(config.routes, clock.now())
        self.observations.use(_spans(config), _identities(config))
        self._count_runs(config)
        self.gateway.use(config)
        self.listener.body_timeout = config.server.client_body_timeout
        self.listener.send_timeout = config.server.send_timeout
        self.listener.use_http2(config.server.http2, config.server.http2_max_streams)
        if self.listener.tls is not None:
            self.listener.tls.http2 = config.server.http2  # (ALPN's offer: from the next renewal)
        self.recorder.use({route.name for route in config.routes})
        self.analyzer.use(config.routes)
        self.book.use(config.outcomes, config.routes)
        self.admin.use(config, _admin_token(config))
        self.config = config
        self._log_routes()


async def serve_until_signalled(config: Config, worker: Worker | None = None) -> None:
    """Run `config` until SIGINT or SIGTERM; reload it on SIGHUP or when its file changes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = Server(config, watch=True, worker=worker)
    reloads: set[asyncio.Task[ReloadResult]] = set()

    def reload_on_signal() -> None:
        task = loop.create_task(server.reload("signal"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_on_signal)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
