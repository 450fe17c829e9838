"""Who may use the admin API: the tokens, which reads need one, and which Host names are served.

Invariants
- Every change needs the bearer token (compared in constant time); reads need it too when
  `admin.protect_reads` is on, as the config in force says at each request.
- Only requests whose Host is an IP address, `localhost` or one of `admin.allowed_hosts` are
  served (health and readiness excepted, for probes): a web page that rebinds its own name to
  127.0.0.1 cannot read the API from an operator's browser.
- The audit actor is a keyed hash of the token, never a plain hash that could be checked
  offline.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.api.answers import error_response, printable
from proxy.config.model import Config

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # for probes, whatever Host they send


def token_id(token: str, key: bytes) -> str:
    """How a token appears in audit lines: a keyed hash (`key` is a secret of the process or
    the deployment), so that it cannot be checked against guessed tokens."""
    return "token:" + hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:12]


def host_allowed(host: str, names: tuple[str, ...]) -> bool:
    """Whether a request's Host (with or without a port) is an IP address, `localhost`, or one
    of `names` (lower case)."""
    if host.startswith("["):
        return "]" in host  # an IPv6 address
    name = host.rpartition(":")[0] if ":" in host else host
    name = name.lower().rstrip(".")
    if name == "localhost" or name in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def bearer(request: web.Request) -> bytes | None:
    """The bearer token a request carries, as the bytes received."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    # (bytes that are not UTF-8 come as surrogate escapes: compared as the bytes received)
    return given.strip().encode("utf-8", "surrogateescape")


def _unauthorized(realm: str) -> web.Response:
    answer = error_response(401, "unauthorized", "send Authorization: Bearer <token>")
    answer.headers["WWW-Authenticate"] = f'Bearer realm="{realm}"'
    return answer


class Access:
    """The config in force and its tokens, and the guards that apply them to handlers."""

    def __init__(self, config: Config, token: str | None, actor_key: bytes):
        self._actor_key = actor_key
        self.use(config, token)

    def use(self, config: Config, token: str | None) -> None:
        """Follow `config`, with `token` as the admin token (None: changes are refused)."""
        self.config = config
        self._token = token.encode() if token else None
        self.actor = token_id(token, self._actor_key) if token else ""
        outcomes_token = os.environ.get(config.outcomes.token_env, "")
        self._outcomes_token = outcomes_token.encode() if outcomes_token else None

    def has_token(self, request: web.Request) -> bool:
        """Whether `request` carries the admin token."""
        return self._token is not None and self.check_token(request) is None

    def check_token(self, request: web.Request) -> web.Response | None:
        """None when the request carries the admin token; else the 401/403 answer."""
        if self._token is None:
            return error_response(
                403,
                "admin_token_not_configured",
                f"set ${self.config.admin.token_env} to enable this endpoint",
            )
        given = bearer(request)
        if given is None:
            return _unauthorized("grayscale-admin")
        if not hmac.compare_digest(given, self._token):
            return error_response(403, "forbidden", "the admin token is wrong")
        return None

    def check_outcomes_token(self, request: web.Request) -> web.Response | None:
        """None when the request carries the outcomes token (or the admin token)."""
        given = bearer(request)
        if given is None:
            return _unauthorized("grayscale-outcomes")
        for token in (self._outcomes_token, self._token):
            if token is not None and hmac.compare_digest(given, token):
                return None
        if self._outcomes_token is None and self._token is None:
            return error_response(
                403,
                "outcomes_token_not_configured",
                f"set ${self.config.outcomes.token_env} to take outcomes",
            )
        return error_response(403, "forbidden", "the outcomes token is wrong")

    def protected(self, handler: Handler) -> Handler:
        """`handler`, for token holders only (a change)."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            return self.check_token(request) or await handler(request)

        return guarded

    def read(self, handler: Handler) -> Handler:
        """`handler`, for token holders only while `admin.protect_reads` is on (a read)."""

        async def read(request: web.Request) -> web.StreamResponse:
            if self.config.admin.protect_reads:  # (the config in force: a reload may change it)
                return self.check_token(request) or await handler(request)
            return await handler(request)

        return read

    @web.middleware
    async def host_guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Serve only the Host names this API answers to (the open paths to any)."""
        if request.path in OPEN_PATHS or host_allowed(
            request.host, self.config.admin.allowed_hosts
        ):
            return await handler(request)
        return error_response(
            403,
            "host_not_allowed",
            f"this API answers to IP addresses, localhost and admin.allowed_hosts, "
            f"not to {printable(request.host)[:100]!r}",
        )
