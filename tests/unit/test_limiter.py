"""The per-upstream connection limiter: slots, a bounded line, hand-over in order."""

from __future__ import annotations

import asyncio

import pytest

from proxy.dataplane.limiter import Limiter, Overloaded


async def test_slots_are_taken_at_once_until_none_is_free():
    limiter = Limiter(2, 0)
    assert limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()
    with pytest.raises(Overloaded):  # no room to wait in line
        await limiter.acquire(1.0)
    limiter.release()
    assert limiter.active == 1
    await limiter.acquire(1.0)
    assert limiter.active == 2


async def test_waiters_get_released_slots_in_order():
    limiter = Limiter(1, 3)
    await limiter.acquire(1.0)
    order: list[int] = []

    async def wait(i: int) -> None:
        await limiter.acquire(5.0)
        order.append(i)

    waiters = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert not limiter.try_acquire()  # others are in line: no jumping it
    for _ in range(3):
        limiter.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]
    assert limiter.active == 1
    limiter.release()
    assert limiter.active == 0


async def test_a_wait_that_runs_out_is_overloaded_and_leaves_the_line():
    limiter = Limiter(1, 1)
    await limiter.acquire(1.0)
    with pytest.raises(Overloaded):
        await limiter.acquire(0.05)
    waiter = asyncio.create_task(limiter.acquire(5.0))  # the line has room again
    await asyncio.sleep(0)
    limiter.release()
    await asyncio.wait_for(waiter, 1.0)
    assert limiter.active == 1


async def test_a_cancelled_waiter_does_not_keep_a_slot():
    limiter = Limiter(1, 2)
    await limiter.acquire(1.0)
    gone = asyncio.create_task(limiter.acquire(5.0))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    limiter.release()
    assert limiter.active == 0
    assert limiter.try_acquire()


async def test_a_slot_handed_over_as_the_waiter_is_cancelled_is_passed_on():
    limiter = Limiter(1, 2)
    await limiter.acquire(1.0)
    first = asyncio.create_task(limiter.acquire(5.0))
    second = asyncio.create_task(limiter.acquire(5.0))
    await asyncio.sleep(0)
    limiter.release()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it runs again
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1.0)  # the slot went on to the next in line
    assert limiter.active == 1
