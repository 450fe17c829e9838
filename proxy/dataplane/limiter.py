"""A bound on the exchanges with one upstream: connection slots, and a short line to wait in.

Invariants
- At most `max_active` slots are taken at once, and at most `max_pending` requests wait.
- A freed slot passes to the first waiter still in line (first come, first served) without
  being freed in between, so a newcomer cannot overtake the line.
- A waiter that times out or is cancelled leaves the line; one handed a slot just as its wait
  ended passes the slot on: no slot is ever lost.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Overloaded(Exception):
    """No connection slot to the upstream came free in time."""


class Limiter:
    """At most `max_active` exchanges with one upstream; at most `max_pending` more may wait."""

    __slots__ = ("_waiters", "active", "max_active", "max_pending")

    def __init__(self, max_active: int, max_pending: int):
        self.max_active, self.max_pending = max_active, max_pending
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free now."""
        if self.active < self.max_active and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self, wait: float) -> None:
        """Take a slot, waiting at most `wait` seconds in line; raises `Overloaded`."""
        if self.try_acquire():
            return
        if len(self._waiters) >= self.max_pending:
            raise Overloaded
        slot = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            async with asyncio.timeout(wait):
                await slot
        except BaseException as exc:  # timed out, or the request was cancelled
            if slot.done() and not slot.cancelled():
                self.release()  # handed a slot just as the wait ended: pass it on
            elif slot in self._waiters:
                self._waiters.remove(slot)
            if isinstance(exc, TimeoutError):
                raise Overloaded from None
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter still in line, else free it."""
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes on: `active` stays
                return
        self.active -= 1
