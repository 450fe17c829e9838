"""Refused connections and request heads, made visible: counted, and told in the log without
flooding it.

Invariants
- Every refusal is counted (`grayscale_refused_total{reason}`), whatever is logged.
- At most one WARNING line per reason per `interval` seconds; the next one says how many of
  that reason were refused meanwhile without a line of their own.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from proxy.telemetry.metrics import Recorder

WARNING_INTERVAL = 10.0  # seconds between two warnings of the same reason

log = logging.getLogger("grayscale.refusals")


class RefusalLog:
    """Told of each refusal (a listener's `on_refused`): counts it, and warns of some."""

    def __init__(
        self,
        recorder: Recorder,
        interval: float = WARNING_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._recorder = recorder
        self._interval = interval
        self._clock = clock
        self._warned: dict[str, float] = {}  # reason: when its last line was written
        self._unsaid: dict[str, int] = {}  # reason: refusals since that line

    def __call__(self, reason: str, peer: str | None, detail: str) -> None:
        self._recorder.count_refused(reason)
        now = self._clock()
        if now - self._warned.get(reason, -math.inf) < self._interval:
            self._unsaid[reason] = self._unsaid.get(reason, 0) + 1
            return
        unsaid = self._unsaid.pop(reason, 0)
        self._warned[reason] = now
        more = f" ({unsaid} more refused for {reason} since the last such line)" if unsaid else ""
        log.warning("refused (%s) a client at %s: %s%s", reason, peer or "?", detail, more)
