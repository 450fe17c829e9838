"""The time-varying candidate share: a clamped linear ramp ``y = m·x + b``."""

from __future__ import annotations

from proxy.config.model import Ramp


def ramp_share(ramp: Ramp, start: float, now: float) -> float:
    """The candidate share at `now` for a ramp that started at `start` (POSIX seconds).

    Before `start` the share is 0: a config can be deployed ahead of its rollout. From `start` on it
    is ``clamp(base + slope * (now - start) / per, 0, max)``.

    >>> r = Ramp(base=0.01, slope=0.05, per=86400.0, max=0.5)
    >>> ramp_share(r, start=0.0, now=-1.0), ramp_share(r, 0.0, 0.0), ramp_share(r, 0.0, 2 * 86400.0)
    (0.0, 0.01, 0.11)
    >>> ramp_share(r, 0.0, 100 * 86400.0)
    0.5
    """
    if now < start:
        return 0.0
    share = ramp.base + ramp.slope * (now - start) / ramp.per
    if share > ramp.max:
        return ramp.max
    return share if share > 0.0 else 0.0


def ramp_reaches_max(ramp: Ramp, start: float) -> float | None:
    """When a ramp that starts at `start` first reaches its `max` (POSIX seconds), or None if
    it never does (it does not grow).

    >>> round(ramp_reaches_max(Ramp(base=0.01, slope=0.05, per=86400.0, max=0.5), 0.0) / 86400, 6)
    9.8
    >>> ramp_reaches_max(Ramp(base=0.6, max=0.5), 0.0), ramp_reaches_max(Ramp(base=0.1), 0.0)
    (0.0, None)
    """
    if ramp.base >= ramp.max:
        return start
    if ramp.slope <= 0.0:
        return None
    return start + (ramp.max - ramp.base) / ramp.slope * ramp.per
