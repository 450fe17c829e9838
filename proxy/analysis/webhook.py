"""Rollback and promotion notifications: a JSON POST to each route's `on_rollback.webhook` or
`on_promote.webhook`, never blocking."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from proxy.config.model import RollbackHook, Route
from proxy.rollout.machine import Transition

log = logging.getLogger("grayscale.webhook")
RETRY_DELAY = 0.5  # seconds before the second attempt; doubled before each next one


def _where(url: str) -> str:
    """A webhook URL as logged: scheme and host only (secrets often live in the path)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class RollbackNotifier:
    """Sends rollback (and automatic promotion) accounts to webhooks from background tasks,
    with retries and timeouts."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open the HTTP client."""
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        """Give pending notifications a moment, then close the client."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for task in self._tasks:
            task.cancel()
        if self._session is not None:
            await self._session.close()

    def __call__(
        self, route: Route, transition: Transition, verdict: dict[str, Any] | None
    ) -> None:
        """Queue the notification of a rollback of `route` (a controller rollback listener)."""
        self._queue("rollback", route, route.on_rollback, transition, verdict)

    def promoted(
        self, route: Route, transition: Transition, verdict: dict[str, Any] | None
    ) -> None:
        """Queue the notification of an automatic promotion of `route` (a controller promotion
        listener; an operator's promotion is not notified)."""
        if transition.actor == "analysis":
            self._queue("promote", route, route.on_promote, transition, verdict)

    def _queue(
        self,
        event: str,
        route: Route,
        hook: RollbackHook | None,
        transition: Transition,
        verdict: dict[str, Any] | None,
    ) -> None:
        if hook is None or self._session is None:
            return
        payload = {
            "event": event,
            "route": route.name,
            "stable": route.stable.url,
            "candidate": route.candidate.url,
            "at": transition.at,
            "actor": transition.actor,
            "before": transition.before.value,
            "reason": transition.reason,
            "verdict": verdict,
        }
        task = asyncio.get_running_loop().create_task(self._send(route, hook, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, route: Route, hook: RollbackHook, payload: dict[str, Any]) -> None:
        assert self._session is not None
        event = payload["event"]
        delay = RETRY_DELAY
        for attempt in range(1, hook.attempts + 1):
            try:
                async with self._session.post(
                    hook.webhook,
                    json=payload,
                    timeout=aiohttp.ClientTimeout(total=hook.timeout),
                    allow_redirects=False,  # a redirect is not followed: the payload stays put
                ) as answer:
                    if answer.status < 300:
                        log.info(
                            "%s of %s notified", event, route.name, extra={"route": route.name}
                        )
                        return
                    problem = f"status {answer.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = type(exc).__name__
            log.warning(
                "%s webhook attempt %d/%d failed: %s",
                event,
                attempt,
                hook.attempts,
                problem,
                extra={"route": route.name, "url": _where(hook.webhook)},
            )
            if attempt < hook.attempts:
                await asyncio.sleep(delay)
                delay *= 2
