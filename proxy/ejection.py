"""Outlier ejection of a route's candidate: faster than the analysis, and independent of it."""

from __future__ import annotations

import logging
from typing import Any

from proxy.config.model import Ejection

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
        """Note one candidate exchange: ok, or a connect error, timeout, reset or 5xx."""
        if ok:
            self.failures = 0
            if self.ejections and now - self.until > self.spec.max_time:
                self.ejections = 0  # healthy for a long while: forgive earlier ejections
            return
        self.failures += 1
        if self.failures < self.spec.consecutive_errors or self.ejected(now):
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
