"""Outlier ejection of a route's candidate: faster than the analysis, and independent of it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from proxy.config.model import Ejection, Route, Variant
from proxy.records.request_outcome import RequestOutcome

log = logging.getLogger("grayscale.ejection")


class Breaker:
    """Counts the candidate's consecutive failures and ejects it for a growing back-off.

    The n-th ejection lasts `base_time * n` (at most `max_time`), as Envoy's outlier detection
    does; a success more than `max_time` after the last ejection ended starts the count again.
    Time is an argument.
    """

    __slots__ = ("ejections", "failures", "route", "spec", "until")

    def __init__(self, route: str, spec: Ejection):
        self.route = route
        self.spec = spec
        self.failures = 0
        self.ejections = 0
        self.until = 0.0

    def ejected(self, now: float) -> bool:
        """Whether the candidate's traffic goes to stable at `now`."""
        return now < self.until

    def record(self, ok: bool, now: float) -> None:
        """Note one candidate exchange: ok, or a connect error, timeout, reset or 5xx.

        Failures while it is ejected (requests that were in flight when it was) do not count
        toward the next ejection."""
        if ok:
            self.failures = 0
            if self.ejections and now - self.until > self.spec.max_time:
                self.ejections = 0  # healthy for a long while: forgive earlier ejections
            return
        if self.ejected(now):
            return
        self.failures += 1
        if self.failures < self.spec.consecutive_errors:
            return
        self.failures = 0
        self.ejections += 1
        period = min(self.spec.base_time * self.ejections, self.spec.max_time)
        self.until = now + period
        log.warning(
            "candidate ejected for %.0f s after %d consecutive errors (ejection %d)",
            period,
            self.spec.consecutive_errors,
            self.ejections,
            extra={"route": self.route},
        )

    def status(self, now: float) -> dict[str, Any]:
        """The `/status` view."""
        return {
            "ejected": self.ejected(now),
            "until": self.until if self.ejected(now) else None,
            "ejections": self.ejections,
            "consecutive_errors": self.failures,
        }


class Ejections:
    """Every route's candidate breaker (an `Observer`): a breaker outlives reloads as long as
    its route keeps its candidate and ejection settings."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str, Ejection], Breaker] = {}
        self._current: dict[str, Breaker] = {}

    def use(self, routes: Sequence[Route]) -> None:
        """Follow a (new) config."""
        known = {}
        for route in routes:
            if route.ejection is not None:
                key = (route.name, route.candidate.url, route.ejection)
                known[key] = self._known.get(key) or Breaker(route.name, route.ejection)
        self._known = known
        self._current = {key[0]: breaker for key, breaker in known.items()}

    def breaker(self, route: str) -> Breaker | None:
        """The breaker of `route`, None when its ejection is off."""
        return self._current.get(route)

    def record(self, outcome: RequestOutcome) -> None:
        """Count the candidate's success or failure, when it was asked."""
        breaker = self._current.get(outcome.route)
        if breaker is None:
            return
        if outcome.variant is Variant.CANDIDATE:
            breaker.record(not outcome.failed, outcome.at)
        elif outcome.candidate_failed:
            breaker.record(False, outcome.at)
