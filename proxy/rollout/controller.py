"""The rollout controller: every route's rollout state, its changes, and their persistence."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from proxy.config.model import Route
from proxy.rollout.machine import (
    Action,
    IllegalTransition,
    Rollout,
    State,
    Status,
    Transition,
    apply,
    forced_variant,
    fresh,
    gated,
    hold,
    holding,
    identity_of,
    open_gate,
    release,
    route_share,
    run_of,
    state_of,
)
from proxy.rollout.store import (
    Change,
    Fence,
    LeaseLost,
    NotReplicated,
    StateError,
    StateStore,
    StateUnavailable,
)
from proxy.routing import RolloutTerms
from proxy.runtime import clock

log = logging.getLogger("grayscale.rollout")
audit = logging.getLogger("grayscale.audit")


RollbackListener = Callable[[Route, Transition, dict[str, Any] | None], None]


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The result of an action: the transition, and whether it reached the state store."""

    transition: Transition
    persisted: bool
    error: str | None = None


DURABLE = frozenset({Action.ROLLBACK, Action.PAUSE, Action.PROMOTE})  # wait for replicas
FORGET_AFTER = 30 * 86400.0  # a route out of the config this long loses its stored rollout


def last_activity(rollout: Rollout) -> float:
    """When a rollout last changed: its latest transition, or its start."""
    return rollout.last.at if rollout.last is not None else rollout.started_at


class RolloutController:
    """Holds each route's `Rollout` as last known, applies actions through the `StateStore`, and
    follows what other processes change there.

    With a shared store (Redis) an action is applied to the stored rollout and refused when the
    store cannot be reached (`StateUnavailable`): nothing changes anywhere. With a file, a change
    the file cannot take is still applied in this process, so a failing disk never delays a
    rollback. Either way the data plane reads the last known state and never waits for a store.
    """

    def __init__(self, store: StateStore):
        self._store = store
        self._rollouts: dict[str, Rollout] = {}
        self._routes: dict[str, Route] = {}
        self._provisional: set[str] = set()  # routes whose state could not be read yet
        self._reports: dict[str, int] = {}  # changes made elsewhere reported, by route
        self._behind: dict[str, int] = {}  # route -> the older revision last warned of
        self._lock = asyncio.Lock()
        self.rollback_listeners: list[RollbackListener] = []
        self.promotion_listeners: list[RollbackListener] = []  # (called like the above)
        self._write_error: str | None = None  # the last write's error, None when it worked
        # routes rolled back here that the store lacks yet: the rollback's transition
        self._unrecorded: dict[str, Transition] = {}
        self.load_error: str | None = None  # why the state could not be read at start
        # other users of the shared store (the fleet's pooled observations): why they fail
        self.store_checks: list[Callable[[], str | None]] = []

    @property
    def store_error(self) -> str | None:
        """Why the state store is not working now, or None."""
        if self._unrecorded:
            names = ", ".join(sorted(self._unrecorded))
            return f"rolled back here, not yet recorded in the state store (retrying): {names}"
        refusing = self._store.refusing
        if refusing:
            return f"the state store refuses writes ({refusing}); serving on the last known state"
        if not self._store.healthy:
            return "the state store cannot be reached; serving on the last known state"
        for check in self.store_checks:
            if (error := check()) is not None:
                return error
        return self._write_error

    async def start(self, routes: Sequence[Route], now: float) -> None:
        """Load the stored state and line it up with `routes` (see `reconcile`).

        Unreadable state is set aside and every route starts rolled back (the candidate off):
        with no record of what an operator or the analysis decided, that is the safe choice. A
        shared store that cannot be reached gives the same start, kept in this process only
        until the store answers and says what the fleet decided.
        """
        identities = {route.name: identity_of(route) for route in routes}
        try:
            loaded = await self._store.load(identities)
        except StateError as exc:
            aside = await self._store.set_aside()
            self.load_error = str(exc) + (f" (set aside as {aside})" if aside else "")
            log.error("%s; every route starts rolled back until resumed", self.load_error)
            loaded = _rolled_back(routes, now, "rollout state unreadable at start")
        except StateUnavailable:  # (the store logs the outage, once)
            log.info("no rollout state yet: every route on stable until the state store answers")
            loaded = _rolled_back(routes, now, "rollout state store unavailable at start")
            self._provisional = set(loaded)
        async with self._lock:
            self._rollouts = loaded
        await self.reconcile(routes, now)

    async def reconcile(self, routes: Sequence[Route], now: float) -> str | None:
        """Follow a (new) config; the store's error message when saving failed or the store
        could not be reached (routes are then lined up when it answers again).

        A route whose candidate (URL and salt) is unchanged keeps its rollout; a new route or a
        new candidate starts a fresh rollout at `now`, unless another process started it first
        (the first one's start stands, for the whole fleet). A stored rollout that is behind
        what this process knows (the store came back empty, or older) is written back: a route
        rolled back here never flips back to ramping. Rollouts of routes absent from `routes`
        are kept, so a route that comes back resumes where it was, until nothing has happened
        to them for `FORGET_AFTER`: then they are dropped.
        """
        async with self._lock:
            self._routes = {route.name: route for route in routes}
            error = None
            for route in routes:
                try:
                    error = (await self._change(route.name, self._reconciling(route, now)))[
                        1
                    ] or error
                except StateUnavailable as exc:  # lined up when the store answers again
                    error = error or str(exc)
            for name, rollout in list(self._rollouts.items()):
                if name not in self._routes and now - last_activity(rollout) >= FORGET_AFTER:
                    del self._rollouts[name]
                    with contextlib.suppress(StateError, StateUnavailable):
                        await self._store.forget(name)
        identities = {route.name: identity_of(route) for route in routes}
        await self._store.follow(identities, self._changed_elsewhere, self._recovered)
        return error

    def _reconciling(self, route: Route, now: float) -> Change:
        """The change that lines up the stored rollout of `route` with what this process knows."""
        identity = identity_of(route)
        local = self._rollouts.get(route.name)
        known = None
        if local is not None and local.identity == identity and route.name not in self._provisional:
            known = local

        def keep(stored: Rollout | None) -> Rollout:
            if stored is not None and stored.identity == identity:
                if known is not None and known.revision > stored.revision:
                    return known  # the store lost changes: what happened here stands
                return stored
            if known is not None:
                return known
            if stored is not None:
                log.info("new candidate on route %s: a new rollout starts", route.name)
            return fresh(route, now)

        return keep

    async def _change(
        self, name: str, change: Change, fence: Fence | None = None, durable: bool = False
    ) -> tuple[Rollout, str | None]:
        """Apply `change` to route `name` in the store and here: the rollout it made, and the
        file's error, if any (the change is then applied here only). Raises
        `StateUnavailable`, changing nothing, when a shared store cannot be reached (`LeaseLost`
        when `fence` is no longer held). `durable`: see `StateStore.change`; a change its
        replicas did not acknowledge is made, with the reason as its error."""
        identity = identity_of(self._routes[name])
        reports = self._reports.get(name, 0)
        change = _counted(self._keeping_rollback(name, change))
        try:
            try:
                changed = latest = await self._store.change(name, identity, change, fence, durable)
            except NotReplicated as exc:
                log.warning("%s: %s", name, exc, extra={"route": name})
                self._rollouts[name] = exc.rollout
                return exc.rollout, str(exc)
            if self._reports.get(name, 0) != reports:
                # A change made elsewhere was reported meanwhile, before or after ours: ask
                # which is the latest rather than guess.
                latest = (await self._store.load({name: identity})).get(name, changed)
        except StateUnavailable:
            local = self._rollouts.get(name)
            if local is None or local.identity != identity:  # new here: serve it on stable
                self._rollouts[name] = _rolled_back(
                    [self._routes[name]], clock.now(), "rollout state store unavailable"
                )[name]
                self._provisional.add(name)
            raise
        except StateError as exc:
            log.error("%s; the change holds in this process only", exc)
            self._write_error = str(exc)
            self._rollouts[name] = changed = change(self._rollouts.get(name))
            return changed, self._write_error
        self._write_error = None
        self._rollouts[name] = latest
        self._provisional.discard(name)
        self._behind.pop(name, None)  # (the store has ours: a later loss is warned of anew)
        if self._unrecorded.pop(name, None) is not None:
            log.info("rollback of %s recorded in the state store", name, extra={"route": name})
        return changed, None

    def _keeping_rollback(self, name: str, change: Change) -> Change:
        """`change`, made on top of the rollback of route `name` that this process applied
        and the store lacks yet (`_roll_back_here`), whatever record the store holds now: a
        record written meanwhile by a replica that knew nothing of the rollback has the
        revision the rollback has, or a later one, and must not make it lost."""
        rollback = self._unrecorded.get(name)
        if rollback is None:
            return change
        route = self._routes[name]

        def on_top(stored: Rollout | None) -> Rollout:
            if (
                stored is not None
                and stored.identity == identity_of(route)
                and stored.status is not Status.ROLLED_BACK
            ):
                with contextlib.suppress(IllegalTransition):
                    stored = apply(
                        stored,
                        route,
                        Action.ROLLBACK,
                        rollback.at,
                        actor=rollback.actor,
                        reason=rollback.reason,
                    )
            return change(stored)

        return on_top

    def _changed_elsewhere(self, name: str, rollout: Rollout) -> bool:
        """Adopt a record read from the store, unless it is older than this process's (then
        True: the store lost changes, and what this process knows is written back)."""
        route = self._routes.get(name)
        if route is None or rollout.identity != identity_of(route):
            return False
        self._reports[name] = self._reports.get(name, 0) + 1
        if name in self._unrecorded:
            if rollout.status is not Status.ROLLED_BACK:
                return True  # (not adopted: written back with the rollback made here on top)
            del self._unrecorded[name]  # (rolled back in the store too, by another replica)
        local = self._rollouts.get(name)
        if (
            local is not None
            and local.identity == rollout.identity
            and local.revision > rollout.revision
            and name not in self._provisional
        ):
            if self._behind.get(name) == rollout.revision:
                return True  # (said once; written back at each re-read until the store takes it)
            self._behind[name] = rollout.revision
            log.warning(
                "rollout of %s in the state store is older (revision %d, %s) than this "
                "replica's (revision %d, %s): the store lost changes (restored from an older "
                "snapshot, failed over) or has not taken them yet; writing this replica's back",
                name,
                rollout.revision,
                state_of(rollout, route, clock.now()).value,
                local.revision,
                state_of(local, route, clock.now()).value,
                extra={"route": name},
            )
            return True
        if local != rollout:
            self._rollouts[name] = rollout
            self._provisional.discard(name)
            log.info(
                "rollout of %s changed elsewhere: %s",
                name,
                state_of(rollout, route, clock.now()).value,
                extra={"route": name},
            )
        return False

    async def _recovered(self) -> None:
        """The shared store answers again: line it up with what this process knows."""
        with contextlib.suppress(StateUnavailable):
            await self.reconcile(tuple(self._routes.values()), clock.now())

    async def close(self) -> None:
        """Stop following the store."""
        await self._store.close()

    def __contains__(self, name: object) -> bool:
        return name in self._routes

    def routes(self) -> tuple[Route, ...]:
        """The routes under control, in config order."""
        return tuple(self._routes.values())

    def rollout(self, name: str) -> Rollout:
        """The rollout of route `name` (KeyError for an unknown route)."""
        return self._rollouts[name]

    def run(self, name: str) -> str:
        """Which run of route `name`'s rollout is current (`machine.run_of`)."""
        return run_of(self._rollouts[name])

    def control(self, name: str, now: float) -> RolloutTerms:
        """What the rollout of route `name` says about decisions at `now`."""
        rollout = self._rollouts[name]
        return RolloutTerms(
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
        keep_share: bool = False,
        details: dict[str, Any] | None = None,
        fence: Fence | None = None,
    ) -> ActionResult:
        """Apply `action` to route `name`; raises `IllegalTransition` or KeyError.

        Rollback listeners are called with the transition and `details` (e.g. the verdict).
        `keep_share`: a resume after a rollback continues where it stopped (`machine.apply`).
        `fence`: only while the decider's lease is held (`LeaseLost` otherwise, nothing done).
        """
        route = self._routes[name]

        def change(stored: Rollout | None) -> Rollout:
            ours = stored is not None and stored.identity == identity_of(route)
            return apply(
                stored if stored is not None and ours else self._rollouts[name],
                route,
                action,
                now,
                actor=actor,
                reason=reason,
                share=share,
                keep_share=keep_share,
            )

        async with self._lock:
            try:
                changed, error = await self._change(name, change, fence, action in DURABLE)
            except LeaseLost:
                raise
            except StateUnavailable as exc:
                if action is not Action.ROLLBACK or name in self._provisional:
                    raise
                changed, error = self._roll_back_here(name, change, exc)
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
                    listener(route, transition, details)
            elif action is Action.PROMOTE:
                for listener in self.promotion_listeners:
                    listener(route, transition, details)
        return ActionResult(transition, persisted=error is None, error=error)

    def _roll_back_here(
        self, name: str, change: Change, exc: StateUnavailable
    ) -> tuple[Rollout, str]:
        """A rollback the store cannot take now, applied in this process at once and kept
        until the store has it: this process never adopts a record that is not rolled back
        meanwhile (see `_changed_elsewhere`), and its next write, the write-back at the re-read
        every second included, makes the rollback on top of whatever the store holds then
        (`_keeping_rollback`)."""
        self._rollouts[name] = changed = _counted(change)(self._rollouts[name])
        assert changed.last is not None
        self._unrecorded[name] = changed.last
        log.warning(
            "rollback of %s applied in this process; the state store cannot take it now (%s): "
            "written as soon as it can",
            name,
            exc,
            extra={"route": name},
        )
        return changed, f"{exc}; applied here, recorded as soon as the store takes it"

    async def set_hold(self, name: str, held: bool, now: float, fence: Fence | None = None) -> bool:
        """Hold or release route `name`'s ramp clock; True when that changed anything (with
        `fence`, only while the decider's lease is held)."""

        route = self._routes[name]

        def change(stored: Rollout | None) -> Rollout:
            rollout = stored if stored is not None else self._rollouts[name]
            if held:
                return hold(rollout, now)
            return rollout if gated(rollout, route, now) else release(rollout, now)

        async with self._lock:
            before = self._rollouts[name]
            if change(before) is before:
                return False  # already so here (and, as last known, in the store)
            try:
                await self._change(name, change, fence)
            except StateUnavailable:
                return False
            log.info(
                "%s the ramp of %s", "holding" if held else "releasing", name, extra={"route": name}
            )
        return True

    async def judge_anew(self, name: str, fence: Fence | None = None) -> int:
        """Count one more analysis judging route `name`'s rollout from fresh counts (a process
        that starts, or a new decider) and return its number, from 1: the analysis spends its
        error rate over these (see `proxy.analysis.assessment.assess`). 0 when a shared store
        cannot be reached, or `fence` is no longer held (no verdict is taken then); a state file
        that cannot be written keeps the count in this process, as it does every change."""

        def change(stored: Rollout | None) -> Rollout:
            rollout = stored if stored is not None else self._rollouts[name]
            return replace(rollout, judged=rollout.judged + 1)

        async with self._lock:
            try:
                changed, _ = await self._change(name, change, fence)
            except StateUnavailable:
                return 0
        return changed.judged

    async def open_gate(self, name: str, now: float) -> bool:
        """Let route `name`'s ramp start, if it waits at its shadow gate; whether it did."""
        route = self._routes.get(name)
        if route is None or not gated(self._rollouts[name], route, now):
            return False

        def change(stored: Rollout | None) -> Rollout:
            return open_gate(stored if stored is not None else self._rollouts[name], route, now)

        async with self._lock:
            try:
                await self._change(name, change)
            except StateUnavailable:
                return False
        log.info("shadow gate of %s open: the ramp starts", name, extra={"route": name})
        return True

    def gated(self, name: str, now: float) -> bool:
        """Whether route `name`'s ramp waits at its shadow gate."""
        return gated(self._rollouts[name], self._routes[name], now)

    def holding(self, name: str) -> bool:
        """Whether route `name`'s ramp is held by the analysis."""
        return holding(self._rollouts[name])


def _counted(change: Change) -> Change:
    """`change`, with the revision of what it makes one past the stored one's (and past its own,
    for a record written back over an older one); nothing changed, nothing counted."""

    def counted(stored: Rollout | None) -> Rollout:
        changed = change(stored)
        if stored is not None and changed == stored:
            return stored
        past = max(changed.revision, stored.revision if stored is not None else 0)
        return replace(changed, revision=past + 1)

    return counted


def _rolled_back(routes: Sequence[Route], now: float, reason: str) -> dict[str, Rollout]:
    """Every route rolled back by the system: the state to serve when none can be read."""
    return {
        route.name: Rollout(
            identity_of(route),
            started_at=now,
            status=Status.ROLLED_BACK,
            frozen_at=now,
            history=(
                Transition(
                    Action.ROLLBACK, now, "system", State.RAMPING, State.ROLLED_BACK, reason
                ),
            ),
        )
        for route in routes
    }
