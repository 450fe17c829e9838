"""Helpers for asyncio tasks."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has ended. The Redis client sometimes loses a
    cancellation that arrives while it reads an answer (the call then returns as usual), so
    the task is cancelled again until it ends rather than trusted to end after one."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.05)
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
