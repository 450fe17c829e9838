"""Waiting for a condition with a deadline, rather than sleeping for a time guessed to be long
enough: a test waits no longer than its condition takes, however loaded the machine, and fails
when the condition does not come in time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

EVERY = 0.02  # seconds between two checks


async def until(
    check: Callable[[], object], within: float = 5.0, every: float = EVERY
) -> float | None:
    """Seconds until `check()` is true (a function, or a coroutine function), or None if it is
    still false after `within` seconds. It is checked at once, then every `every` seconds, and
    once more at the deadline."""
    started = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        elapsed = time.monotonic() - started
        if result:
            return elapsed
        if elapsed >= within:
            return None
        await asyncio.sleep(min(every, within - elapsed))


async def eventually(
    check: Callable[[], object], within: float = 5.0, every: float = EVERY
) -> bool:
    """Whether `check()` becomes true within `within` seconds (see `until`): `assert await
    eventually(lambda: ..., within=5.0)`."""
    return await until(check, within, every) is not None


def eventually_blocking(check: Callable[[], object], within: float, every: float = 0.05) -> bool:
    """Whether `check()` becomes true within `within` seconds, blocking meanwhile: for code
    outside an event loop (starting a server process, a synchronous test)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return bool(check())
        time.sleep(every)  # (a poll interval: the condition is checked again)
    return True


def wait_until(
    check: Callable[[], object], within: float, failure: str, every: float = 0.05
) -> None:
    """Block until `check()` is true; RuntimeError(`failure`) after `within` seconds."""
    if not eventually_blocking(check, within, every):
        raise RuntimeError(f"{failure} (within {within} s)")
