"""The suite exercises the event loop production uses."""

from __future__ import annotations

import asyncio

from proxy.runtime.event_loop import loop_factory


async def test_async_tests_run_on_uvloop():
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")


def test_the_proxy_prefers_uvloop():
    loop = loop_factory()()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
