"""One clock for the fleet: a replica whose host clock is 30 s ahead (libfaketime) computes the
same ramp as the others, says how far off it is, and does not decide."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.support.fleet import fleet_config
from tests.support.replicas import ReplicaFactory
from tests.support.waiting import eventually

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
AHEAD = {
    "LD_PRELOAD": str(FAKETIME),
    "FAKETIME": "+30s",
    "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # (timers and leases run on the monotonic clock)
}


@pytest.mark.skipif(
    not FAKETIME.exists(), reason="libfaketime is not installed (Debian: apt-get install faketime)"
)
async def test_a_replica_with_a_skewed_clock_ramps_on_the_fleets_clock_and_does_not_decide(
    tmp_path, redis_server, upstreams, replicas: ReplicaFactory
):
    stable, candidate = upstreams
    config = fleet_config(tmp_path, redis_server, stable, candidate, share=0.1)
    text = config.read_text().replace(
        "ramp: {base: 0.1}",
        "ramp: {base: 0.1, slope: 0.01, per: 1s, max: 0.9}\n"
        "    analysis: {interval: 200ms, min_requests: 1000, on_inconclusive: continue}",
    )
    config.write_text(text)
    fair = await replicas(config)
    ahead = await replicas(config, AHEAD)
    async with aiohttp.ClientSession() as session:

        async def measured() -> bool:  # (the clock is measured once a second)
            state = (await ahead.status(session))["state"]
            return 29.5 < state["clock_offset_seconds"] < 30.5  # type: ignore[index, no-any-return]

        assert await eventually(measured, within=5)
        for _ in range(10):
            shares = [(await r.status(session))["routes"][0]["share"] for r in (fair, ahead)]  # type: ignore[index]
            # 30 s ahead on its own clock would put it 30 points higher; on the fleet's it is
            # where the others are (the two reads are a few milliseconds apart)
            assert abs(shares[0] - shares[1]) < 0.01, shares
            views = [(await r.status(session))["routes"][0]["analysis"] for r in (fair, ahead)]  # type: ignore[index]
            assert views[0]["this_replica_decides"] and not views[1]["this_replica_decides"]
            await asyncio.sleep(0.1)
        state = (await ahead.status(session))["state"]
        assert 29.5 < state["clock_offset_seconds"] < 30.5, state  # type: ignore[index]
        assert "off the fleet's" in str(state["clock_error"])  # type: ignore[index]
        assert (await fair.status(session))["state"]["clock_error"] is None  # type: ignore[index]
        async with session.get(f"{ahead.admin_url}/metrics") as response:
            metrics = await response.text()
        (line,) = [x for x in metrics.splitlines() if x.startswith("grayscale_clock_offset")]
        assert 29.5 < float(line.split()[-1]) < 30.5
        assert len(ahead.logged("off the fleet's (Redis's)")) == 1
        assert fair.logged("off the fleet's") == []
