"""Wall time as the fleet agrees on it.

Invariants
- `now()` is this host's wall clock plus the offset last measured to the shared store's clock
  (Redis `TIME`, by `proxy.fleet.member`); the offset is 0 without a shared store. Ramp shares,
  holds and releases, actions' stamps and observation slots all read it, so replicas whose host
  clocks disagree still agree on the ramp, and one host's clock never moves another's ramp.
- An offset is Redis's time less the midpoint of the call that asked for it; of the last few,
  the one whose call took least is kept (its midpoint is the closest to when Redis answered).
"""

from __future__ import annotations

import time


class _Offset:
    seconds = 0.0  # (one per process: what `set_offset` took last)


_OFFSET = _Offset()


def now() -> float:
    """Seconds since the epoch, on the fleet's clock."""
    return time.time() + _OFFSET.seconds


def offset() -> float:
    """Seconds this host's clock is behind the fleet's (negative: ahead)."""
    return _OFFSET.seconds


def set_offset(seconds: float) -> None:
    """Take `seconds` as this host's offset to the fleet's clock."""
    _OFFSET.seconds = seconds
