"""The rollout controller: every route's rollout state, its changes, and their persistence."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.config.model import Route
from proxy.rollout.machine import (
    Action,
    Rollout,
    State,
    Transition,
    apply,
    forced_variant,
    identity_of,
    route_share,
    state_of,
)
from proxy.rollout.store import StateError, StateStore
from proxy.routing import Control

log = logging.getLogger("grayscale.rollout")
audit = logging.getLogger("grayscale.audit")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of an action: the transition, and whether it reached the state store."""

    transition: Transition
    persisted: bool
    error: str | None = None


class RolloutController:
    """Holds each route's `Rollout`, applies actions to it, and saves it to a `StateStore`.

    Changes take effect in this process at once; the store is written after, so a failing store
    never delays a rollback.
    """

    def __init__(self, store: StateStore):
        self._store = store
        self._rollouts: dict[str, Rollout] = {}
        self._routes: dict[str, Route] = {}
        self._lock = asyncio.Lock()

    async def start(self, routes: Sequence[Route], now: float) -> None:
        """Load the stored state and line it up with `routes`.

        A route whose candidate (URL and salt) is unchanged keeps its rollout; a new route or a
        new candidate starts a fresh rollout at `now`. Rollouts of routes absent from `routes`
        are kept, so a route that comes back resumes where it was.
        """
        rollouts = await self._store.load()
        for route in routes:
            stored = rollouts.get(route.name)
            identity = identity_of(route)
            if stored is not None and stored.identity == identity:
                continue
            if stored is not None:
                log.info("new candidate on route %s: a new rollout starts", route.name)
            rollouts[route.name] = Rollout(identity, started_at=now)
        async with self._lock:
            self._rollouts = rollouts
            self._routes = {route.name: route for route in routes}
            await self._store.save(rollouts)

    def __contains__(self, name: object) -> bool:
        return name in self._routes

    def routes(self) -> tuple[Route, ...]:
        """The routes under control, in config order."""
        return tuple(self._routes.values())

    def rollout(self, name: str) -> Rollout:
        """The rollout of route `name` (KeyError for an unknown route)."""
        return self._rollouts[name]

    def control(self, name: str, now: float) -> Control:
        """What the rollout of route `name` says about decisions at `now`."""
        rollout = self._rollouts[name]
        return Control(
            rollout.started_at, rollout.clock(now), forced_variant(rollout), rollout.share_override
        )

    def state(self, name: str, now: float) -> State:
        """The state an operator sees for route `name` at `now`."""
        return state_of(self._rollouts[name], self._routes[name], now)

    def share(self, name: str, now: float) -> float:
        """The candidate's share outside segments for route `name` at `now`."""
        return route_share(self._rollouts[name], self._routes[name], now)

    async def act(
        self,
        name: str,
        action: Action,
        now: float,
        *,
        actor: str,
        reason: str | None = None,
        share: float | None = None,
    ) -> Outcome:
        """Apply `action` to route `name`; raises `IllegalTransition` or KeyError."""
        async with self._lock:
            changed = apply(
                self._rollouts[name],
                self._routes[name],
                action,
                now,
                actor=actor,
                reason=reason,
                share=share,
            )
            self._rollouts[name] = changed
            transition = changed.history[-1]
            audit.info(
                "%s %s by %s: %s -> %s%s%s",
                action.value,
                name,
                actor,
                transition.before.value,
                transition.after.value,
                f" at share {share:g}" if action is Action.SET_SHARE else "",
                f" ({reason})" if reason else "",
                extra={"route": name},
            )
            try:
                await self._store.save(self._rollouts)
            except StateError as exc:
                log.error("%s; the change holds in this process only", exc, extra={"route": name})
                return Outcome(transition, persisted=False, error=str(exc))
        return Outcome(transition, persisted=True)
