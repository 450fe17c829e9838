"""The rollout controller: every route's rollout state, its changes, and their persistence."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.config.model import Route
from proxy.rollout.machine import (
    Action,
    Rollout,
    State,
    Status,
    Transition,
    apply,
    forced_variant,
    hold,
    holding,
    identity_of,
    release,
    route_share,
    state_of,
)
from proxy.rollout.store import StateError, StateStore
from proxy.routing import Control

log = logging.getLogger("grayscale.rollout")
audit = logging.getLogger("grayscale.audit")


RollbackListener = Callable[[Route, Transition, dict[str, Any] | None], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of an action: the transition, and whether it reached the state store."""

    transition: Transition
    persisted: bool
    error: str | None = None


FORGET_AFTER = 30 * 86400.0  # a route out of the config this long loses its stored rollout


def last_activity(rollout: Rollout) -> float:
    """When a rollout last changed: its latest transition, or its start."""
    return rollout.last.at if rollout.last is not None else rollout.started_at


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
        self.rollback_listeners: list[RollbackListener] = []
        self.store_error: str | None = None  # the last save's error, None when it worked
        self.load_error: str | None = None  # why the state could not be read at start

    async def start(self, routes: Sequence[Route], now: float) -> None:
        """Load the stored state and line it up with `routes` (see `reconcile`).

        Unreadable state is set aside and every route starts rolled back (the candidate off):
        with no record of what an operator or the analysis decided, that is the safe choice.
        """
        try:
            loaded = await self._store.load()
        except StateError as exc:
            aside = await self._store.set_aside()
            self.load_error = str(exc) + (f" (set aside as {aside})" if aside else "")
            log.error("%s; every route starts rolled back until resumed", self.load_error)
            loaded = {
                route.name: Rollout(
                    identity_of(route),
                    started_at=now,
                    status=Status.ROLLED_BACK,
                    frozen_at=now,
                    history=(
                        Transition(
                            Action.ROLLBACK,
                            now,
                            "system",
                            State.RAMPING,
                            State.ROLLED_BACK,
                            "rollout state unreadable at start",
                        ),
                    ),
                )
                for route in routes
            }
        async with self._lock:
            self._rollouts = loaded
        await self.reconcile(routes, now)

    async def reconcile(self, routes: Sequence[Route], now: float) -> str | None:
        """Follow a (new) config; the store's error message when saving failed.

        A route whose candidate (URL and salt) is unchanged keeps its rollout; a new route or a
        new candidate starts a fresh rollout at `now`. Rollouts of routes absent from `routes`
        are kept, so a route that comes back resumes where it was, until nothing has happened
        to them for `FORGET_AFTER`: then they are dropped.
        """
        async with self._lock:
            present = {route.name for route in routes}
            rollouts = {
                name: rollout
                for name, rollout in self._rollouts.items()
                if name in present or now - last_activity(rollout) < FORGET_AFTER
            }
            for route in routes:
                stored = rollouts.get(route.name)
                identity = identity_of(route)
                if stored is not None and stored.identity == identity:
                    continue
                if stored is not None:
                    log.info("new candidate on route %s: a new rollout starts", route.name)
                rollouts[route.name] = Rollout(identity, started_at=now)
            self._rollouts = rollouts
            self._routes = {route.name: route for route in routes}
            return await self._save()

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
        details: dict[str, Any] | None = None,
    ) -> Outcome:
        """Apply `action` to route `name`; raises `IllegalTransition` or KeyError.

        Rollback listeners are called with the transition and `details` (e.g. the verdict).
        """
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
            if action is Action.ROLLBACK:
                for listener in self.rollback_listeners:
                    listener(self._routes[name], transition, details)
            error = await self._save()
        return Outcome(transition, persisted=error is None, error=error)

    async def set_hold(self, name: str, held: bool, now: float) -> bool:
        """Hold or release route `name`'s ramp clock; True when that changed anything."""
        async with self._lock:
            rollout = self._rollouts[name]
            changed = hold(rollout, now) if held else release(rollout, now)
            if changed is rollout:
                return False
            self._rollouts[name] = changed
            log.info(
                "%s the ramp of %s", "holding" if held else "releasing", name, extra={"route": name}
            )
            await self._save()
        return True

    def holding(self, name: str) -> bool:
        """Whether route `name`'s ramp is held by the analysis."""
        return holding(self._rollouts[name])

    async def _save(self) -> str | None:
        """Write every rollout; the error message when the store failed."""
        try:
            await self._store.save(self._rollouts)
        except StateError as exc:
            log.error("%s; the change holds in this process only", exc)
            self.store_error = str(exc)
            return self.store_error
        self.store_error = None
        return None
