"""Shadow comparison: a copy of some requests that stable answered goes to the candidate, and the
two answers are compared, before any user sees the candidate.

Invariants
- The user's answer is never delayed, altered or failed by a shadow: the copy is sent from a
  background task after the user's answer was sent whole, with its own timeout, and whatever
  happens to it (a hang, a reset, a 5xx) only counts as a comparison `error`.
- Bounded: at most `shadow.max_in_flight` copies of a route at once, holding at most
  `shadow.max_bytes_in_flight` bytes (each copy's request body, as the candidate gets it, and
  stable's answer), and only on a free connection slot of the candidate (it never waits for
  one): beyond, the copy is dropped and counted. A copy keeps those bytes only, nothing of the
  request's parse. Answers are kept for comparison up to `CAPTURE` bytes (larger ones are not
  compared: `error`).
- The gate (`min_agreement`) opens when the last `min_comparisons` comparisons (errors aside)
  agree at least that often, so a candidate fixed in place can still pass it; once open, it
  stays open for the rollout (see `proxy.rollout.machine`).
- Only requests whose method is in `shadow.methods` are copied (inference with side effects
  can be left out); the copy carries `X-Grayscale-Shadow: 1`.
- Shadow copies are not user requests: they are in none of the request metrics, the analysis
  windows, the ejection breaker or the access log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from proxy.analysis.intervals import wilson
from proxy.config.model import Route, Shadow, TextCompare
from proxy.dataplane.compare import ComparedAnswer, agree
from proxy.dataplane.forwarding import CAPTURE, Target
from proxy.dataplane.model_body import BodyError, ReadBody
from proxy.http.client import UpstreamClient
from proxy.http.errors import UpstreamError
from proxy.http.headers import answer_for_client
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import identity_of
from proxy.routing import bucket, threshold
from proxy.runtime import clock

log = logging.getLogger("grayscale.shadow")

SHADOW_HEADER = b"X-Grayscale-Shadow: 1\r\n"
RESULTS = ("agree", "differ", "error")
Z_95 = NormalDist().inv_cdf(0.975)  # the agreement's two-sided 95 % interval


def chosen(shadow: Shadow, key: str | None, draw: float) -> bool:
    """Whether a request with cohort `key` is copied: its bucket under the shadow's own salt,
    or, without a key, the random `draw` in [0, 1)."""
    if key is None:
        return draw < shadow.share
    return bucket(shadow.salt, key) < threshold(shadow.share)


@dataclass
class ShadowRequest:
    """What a shadow copy needs of its request, taken before the user's exchange ends."""

    method: str
    target: bytes  # the path and query, as received
    headers: bytes  # as forwarded upstream
    body: ReadBody | None  # (made into the candidate's bytes at launch, and let go)


@dataclass(frozen=True, slots=True)
class Sending:
    """A copy on its way: its request as the candidate gets it."""

    method: str
    target: bytes
    headers: bytes
    body: bytes | None
    unreadable: bool  # the body could not be rewritten for the candidate: an `error`
    size: int  # the bytes it holds: its body and stable's answer


@dataclass
class RouteShadow:
    """One route's comparisons (for its current rollout) and copies in flight."""

    identity: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    dropped: int = 0
    in_flight: int = 0
    bytes_in_flight: int = 0  # the copies' request bodies and stable's answers, held
    recent: deque[bool] = field(default_factory=deque)  # the last comparisons: agreed?

    def count(self, result: str, shadow: Shadow) -> None:
        """Count a comparison's result."""
        self.counts[result] += 1
        if result != "error":
            self.recent.append(result == "agree")
            while len(self.recent) > shadow.min_comparisons:
                self.recent.popleft()

    def status(self, shadow: Shadow, gated: bool) -> dict[str, Any]:
        """The `/status` view: counts, the agreement rate with a 95 % interval, the gate."""
        compared = self.counts["agree"] + self.counts["differ"]
        view: dict[str, Any] = {
            "share": shadow.share,
            "comparisons": dict(self.counts),
            "dropped": self.dropped,
            "in_flight": self.in_flight,
            "bytes_in_flight": self.bytes_in_flight,
            "agreement": self.counts["agree"] / compared if compared else None,
            "agreement_interval": (
                list(wilson(self.counts["agree"], compared, Z_95)) if compared else None
            ),
        }
        if shadow.min_agreement is not None:
            view["gate"] = {
                "min_agreement": shadow.min_agreement,
                "min_comparisons": shadow.min_comparisons,
                "recent_comparisons": len(self.recent),
                "recent_agreement": sum(self.recent) / len(self.recent) if self.recent else None,
                "open": not gated,
            }
        return view

    def gate_met(self, shadow: Shadow) -> bool:
        """Whether the last `min_comparisons` comparisons agree enough to open the gate."""
        minimum = shadow.min_agreement
        return (
            minimum is not None
            and len(self.recent) >= shadow.min_comparisons
            and sum(self.recent) >= minimum * len(self.recent)
        )


class Shadower:
    """Sends shadow copies, compares their answers, and opens shadow gates."""

    def __init__(self, client: UpstreamClient, controller: RolloutController):
        self._client = client
        self._controller = controller
        self._routes: dict[str, RouteShadow] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Told of each comparison's result (`RESULTS`), or of a dropped copy ("dropped").
        self.on_result: list[Callable[[str, str], None]] = []

    def use(self, routes: tuple[Route, ...]) -> None:
        """Follow a (new) config: a route keeps its counts while its rollout is the same."""
        kept = {}
        for route in routes:
            if route.shadow is None:
                continue
            identity = identity_of(route)
            known = self._routes.get(route.name)
            kept[route.name] = (
                known if known and known.identity == identity else RouteShadow(identity)
            )
        self._routes = kept

    def status(self, route: Route) -> dict[str, Any] | None:
        """The route's `/status` view, if it has a shadow."""
        state = self._routes.get(route.name)
        if route.shadow is None or state is None:
            return None
        return state.status(route.shadow, self._controller.gated(route.name, clock.now()))

    def launch(
        self, route: Route, candidate: Target, copy: ShadowRequest, stable: ComparedAnswer
    ) -> bool:
        """Send `copy` to the candidate in the background and compare its answer with
        `stable`'s; False when dropped (too many in flight, or no free connection)."""
        shadow, state = route.shadow, self._routes.get(route.name)
        if shadow is None or state is None:
            return False
        try:
            body = None if copy.body is None else copy.body.to(candidate.upstream.model) or None
        except BodyError:
            body, unreadable = None, True
        else:
            unreadable = False
        size = len(body or b"") + len(stable.body)
        if (
            state.in_flight >= shadow.max_in_flight
            or state.bytes_in_flight + size > shadow.max_bytes_in_flight
            or not candidate.limiter.try_acquire()
        ):
            state.dropped += 1
            for tell in self.on_result:
                tell(route.name, "dropped")
            return False
        state.in_flight += 1
        state.bytes_in_flight += size
        sending = Sending(copy.method, copy.target, copy.headers, body, unreadable, size)
        task = asyncio.get_running_loop().create_task(
            self._compare(route, state, candidate, sending, stable)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def stop(self) -> None:
        """Cancel the copies in flight."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _compare(
        self,
        route: Route,
        state: RouteShadow,
        candidate: Target,
        copy: Sending,
        stable: ComparedAnswer,
    ) -> None:
        shadow = route.shadow
        assert shadow is not None
        try:
            try:
                if copy.unreadable:
                    raise BodyError("the body cannot be rewritten for the candidate")
                async with asyncio.timeout(shadow.timeout):
                    seen = await self._ask(candidate, copy, shadow.timeout)
            except (UpstreamError, BodyError, TimeoutError, OSError):
                seen = None
            finally:
                candidate.limiter.release()
            if seen is None:
                result = "error"
            elif isinstance(shadow.compare, TextCompare):  # difflib: off the event loop
                same = await asyncio.to_thread(agree, shadow.compare, stable, seen)
                result = "agree" if same else "differ"
            else:
                result = "agree" if agree(shadow.compare, stable, seen) else "differ"
            state.count(result, shadow)
            for tell in self.on_result:
                tell(route.name, result)
            if result != "error" and state.gate_met(shadow):
                await self._controller.open_gate(route.name, clock.now())
        finally:
            state.in_flight -= 1
            state.bytes_in_flight -= copy.size

    async def _ask(self, candidate: Target, copy: Sending, limit: float) -> ComparedAnswer | None:
        """The candidate's answer to the copy, or None if it is too large to compare."""
        upstream = candidate.upstream
        body = copy.body
        answer = await self._client.request(
            candidate.origin,
            copy.method,
            target=copy.target,
            headers=copy.headers + SHADOW_HEADER,
            body=body,
            content_length=None if body is None else len(body),
            connect_timeout=upstream.connect_timeout,
            first_byte_timeout=min(upstream.first_byte_timeout, limit),
        )
        try:
            kept, size = [], 0
            deadline = time.monotonic() + limit
            async for chunk in answer.chunks(upstream.idle_timeout, deadline):
                size += len(chunk)
                if size > CAPTURE:
                    return None
                kept.append(chunk)
            _, event_stream = answer_for_client(answer.headers)
            return ComparedAnswer(answer.status, b"".join(kept), event_stream)
        finally:
            answer.release()
