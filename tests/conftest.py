"""Suite-wide settings: GRAYSCALE_TEST_LOOP=uvloop runs every async test on uvloop, as
`grayscale serve` does."""

from __future__ import annotations

import asyncio
import os

import pytest


@pytest.fixture(scope="session")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    if os.environ.get("GRAYSCALE_TEST_LOOP") == "uvloop":
        import uvloop  # noqa: PLC0415

        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()
