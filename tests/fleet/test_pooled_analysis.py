"""Pooled observations and the decider's lease against a real redis-server."""

from __future__ import annotations

import math
from dataclasses import astuple

import pytest
from redis.exceptions import RedisError

from proxy.analysis.histogram import bucket_of
from proxy.analysis.verdict import Moments, Sample
from proxy.analysis.window import LocalObservations
from proxy.config.model import Variant
from proxy.fleet import decider as decider_module
from proxy.fleet.decider import Decider
from proxy.fleet.observations import LOW_BITS, PooledObservations
from proxy.fleet.redis_connection import connect
from proxy.records.request_id import Served, rollout_digest
from tests.support.redis_server import RedisServer
from tests.support.rollouts import T0
from tests.support.waiting import eventually


def observe(
    local: LocalObservations,
    now: float,
    variant: str,
    n: int,
    *,
    errors: int = 0,
    weight: float = 1.0,
) -> None:
    """`n` compared requests of `weight` (see `verdict`), the first `errors` of them failed, the
    others answered in 20 ms."""
    for i in range(n):
        local.windows["r"][variant].add(now, weight, i < errors, 0.02)


def served(variant: Variant | None, share: float, route: str = "r") -> Served:
    """What a request id of `route` says: assigned `variant` at the candidate's `share`."""
    return Served(route, variant, rollout_digest("x"), T0, share)


async def test_the_fleet_sample_is_the_sum_of_every_replicas_observations(redis_server):
    client = connect(redis_server.url)
    replicas = [LocalObservations({"r": 60.0}) for _ in range(3)]
    pools = [PooledObservations(local, client, "t") for local in replicas]
    try:
        for i, local in enumerate(replicas):  # at a share of 0.25: weights 0.25 and 0.75
            observe(local, T0 + i, "stable", 10 + i, weight=0.25)
            observe(local, T0 + 20 + i, "candidate", 5, errors=i, weight=0.75)
        assert [await pool.flush(T0 + 30) for pool in pools] == [2, 2, 2]
        assert [await pool.flush(T0 + 30) for pool in pools] == [0, 0, 0]  # nothing new
        # same slot, the share moved to 0.5: only the change is sent
        observe(replicas[0], T0 + 31, "candidate", 4, errors=4, weight=0.5)
        assert await pools[0].flush(T0 + 31) == 1
        stable, candidate = await pools[1].samples("r", T0 + 31)
        assert (stable.requests, stable.errors) == (33, 0)
        assert (stable.weight, stable.weight2) == (33 * 0.25, 33 * 0.0625)
        assert (stable.error_weight, stable.error_weight2) == (0.0, 0.0)
        assert (candidate.requests, candidate.errors) == (19, 7)
        # 15 requests of 0.75 (3 failed) and 4 failed of 0.5
        assert (candidate.weight, candidate.weight2) == pytest.approx((13.25, 9.4375))
        assert (candidate.error_weight, candidate.error_weight2) == pytest.approx((4.25, 2.6875))
        assert candidate.error_rate == pytest.approx(4.25 / 13.25)
        assert candidate.latency[bucket_of(0.02)] == 12 * 0.75  # errors carry no latency
        assert candidate.latency_weight2 == pytest.approx(12 * 0.5625)
        assert sum(stable.latency) == 33 * 0.25 and stable.latency_weight2 == 33 * 0.0625
        # The window moves on: slots older than it are out of the sample (and expire in Redis).
        stable, candidate = await pools[2].samples("r", T0 + 65)
        assert (stable.requests, candidate.requests) == (0, 19)
    finally:
        await client.aclose()


async def test_outcomes_reported_to_any_replica_are_pooled_by_name(redis_server):
    client = connect(redis_server.url)
    replicas = [LocalObservations({"r": 60.0}) for _ in range(2)]
    pools = [PooledObservations(local, client, "t") for local in replicas]
    try:
        # requests assigned at a share of 0.2: the candidate's weigh 0.8, stable's 0.2
        candidate_request, stable_request = (
            served(Variant.CANDIDATE, 0.2),
            served(Variant.STABLE, 0.2),
        )
        replicas[0].add_outcome(candidate_request, "click", 1.0, T0)
        replicas[1].add_outcome(candidate_request, "click", 1.0, T0 + 1)
        replicas[1].add_outcome(stable_request, "rating", 4.5, T0 + 1)
        other = served(Variant.STABLE, 0.2, route="other")  # not analysed
        replicas[1].add_outcome(other, "click", 1.0, T0 + 1)
        replicas[1].add_outcome(served(None, 0.0), "click", 1.0, T0 + 1)  # not compared
        for pool in pools:
            await pool.flush(T0 + 2)
        replicas[0].add_outcome(candidate_request, "click", 3.0, T0 + 2)  # same slot
        assert await pools[0].flush(T0 + 2) == 1
        stable, candidate = await pools[1].samples("r", T0 + 2)
        # count, and the sums of w, w², w·value, w²·value, w²·value² (values 1, 1 and 3)
        clicks = Moments(3, 2.4, 3 * 0.64, 0.8 * 5, 0.64 * 5, 0.64 * 11)
        assert candidate.outcomes.keys() == {"click"}
        assert candidate.outcomes["click"].count == 3
        assert astuple(candidate.outcomes["click"]) == pytest.approx(astuple(clicks))
        assert stable.outcomes.keys() == {"rating"}
        rating = Moments(1, 0.2, 0.04, 0.2 * 4.5, 0.04 * 4.5, 0.04 * 4.5**2)
        assert astuple(stable.outcomes["rating"]) == pytest.approx(astuple(rating))
        assert (stable.requests, candidate.requests) == (0, 0)
    finally:
        await client.aclose()


async def test_counts_since_a_rollout_began_are_pooled_per_rollout(redis_server):
    client = connect(redis_server.url)
    replicas = [LocalObservations({"r": math.inf}, {"r": "candidate-1"}) for _ in range(2)]
    pools = [PooledObservations(local, client, "t") for local in replicas]
    try:
        observe(replicas[0], T0, "candidate", 5, errors=1)
        observe(replicas[1], T0 + 86_400, "candidate", 7)  # a day later: still counted
        for pool in pools:
            await pool.flush(T0 + 86_400)
        _, candidate = await pools[0].samples("r", T0 + 2 * 86_400)
        assert (candidate.requests, candidate.errors) == (12, 1)
        # A new candidate on the route: its counts start from nothing, in the fleet too.
        replicas[0].use({"r": math.inf}, {"r": "candidate-2"})
        observe(replicas[0], T0 + 3 * 86_400, "candidate", 2)
        await pools[0].flush(T0 + 3 * 86_400)
        _, candidate = await pools[0].samples("r", T0 + 3 * 86_400)
        assert candidate.requests == 2
        key = pools[0].key("r", math.inf, "candidate", 0)
        assert key.startswith("t:obs4:{r}:") and ":total:" in key  # (no other format adds to it)
        assert 0 < await client.ttl(key) <= 30 * 86_400
    finally:
        await client.aclose()


async def test_a_new_run_or_candidate_is_judged_on_its_own_requests_in_every_window(redis_server):
    # A rollback, then a resume (run 2) and later a new candidate: within the same 60 s window,
    # no pooled count of one run reaches another's, whichever replica flushes when.
    client = connect(redis_server.url)
    replicas = [LocalObservations({"r": 60.0}, {"r": "candidate-1"}) for _ in range(2)]
    pools = [PooledObservations(local, client, "t") for local in replicas]
    try:
        for local in replicas:
            local.count("r", "candidate-1@1")
        observe(replicas[0], T0, "candidate", 40, errors=20)  # the failing run
        observe(replicas[1], T0, "candidate", 10, errors=5)
        for pool in pools:
            await pool.flush(T0 + 1)
        assert (await pools[1].samples("r", T0 + 2))[1].requests == 50
        replicas[0].count("r", "candidate-1@2")  # the resume reached this replica first
        observe(replicas[0], T0 + 3, "candidate", 4)
        observe(replicas[1], T0 + 3, "candidate", 3, errors=3)  # (still run 1's, it thinks)
        for pool in pools:
            await pool.flush(T0 + 4)
        _, candidate = await pools[0].samples("r", T0 + 5)
        assert (candidate.requests, candidate.errors) == (4, 0)  # run 2's only
        replicas[1].count("r", "candidate-1@2")  # now it knows: counts anew
        observe(replicas[1], T0 + 6, "candidate", 6)
        await pools[1].flush(T0 + 7)
        _, candidate = await pools[1].samples("r", T0 + 8)
        assert (candidate.requests, candidate.errors) == (10, 0)
        for local in replicas:  # a new candidate, run 1 of its own
            local.use({"r": 60.0}, {"r": "candidate-2"})
            local.count("r", "candidate-2@1")
        observe(replicas[0], T0 + 9, "candidate", 2)
        await pools[0].flush(T0 + 10)
        assert (await pools[1].samples("r", T0 + 11))[1].requests == 2
    finally:
        await client.aclose()


async def test_a_flush_that_fails_is_sent_whole_next_time_and_never_twice(redis_server):
    client = connect(redis_server.url)
    local = LocalObservations({"r": 60.0})
    pool = PooledObservations(local, client, "t")
    try:
        observe(local, T0, "stable", 10)
        await pool.flush(T0)
        redis_server.kill()
        observe(local, T0 + 1, "stable", 7)
        with pytest.raises((RedisError, OSError)):
            await pool.flush(T0 + 1)
        redis_server.start()  # empty: what the first flush sent is gone with the old instance
        assert await pool.flush(T0 + 2) == 1
        assert (await pool.samples("r", T0 + 2))[0].requests == 7
    finally:
        await client.aclose()


WEIGHTED = ("weight", "weight2", "error_weight", "error_weight2", "latency_weight2")


def counts(sample: Sample) -> tuple[float, ...]:
    """`sample`'s requests, errors, weight sums and latency histogram, in a row."""
    return (
        sample.requests,
        sample.errors,
        *(getattr(sample, n) for n in WEIGHTED),
        *sample.latency,
    )


def summed(samples: list[Sample]) -> tuple[float, ...]:
    """The `counts` of `samples` added up, as the fleet's sample should hold them."""
    return tuple(map(math.fsum, zip(*map(counts, samples), strict=True)))


async def test_the_fleets_weight_sums_are_the_local_windows_to_a_billionth(redis_server):
    # Weights with no exact binary or decimal form, errors and latencies in many buckets, over
    # several flushes a slot and slots moving on: each replica's slot is rounded to a billionth
    # once, whatever its number of flushes (half a billionth at most per replica and slot).
    client = connect(redis_server.url)
    replicas = [LocalObservations({"r": 60.0}) for _ in range(2)]
    pools = [PooledObservations(local, client, "t") for local in replicas]
    weights = (1 / 3, 0.1, 2 / 7, 0.9, 1e-7)
    try:
        for step in range(12):
            now = T0 + step * 1.5
            for i, local in enumerate(replicas):
                for n, weight in enumerate(weights):
                    windows = local.windows["r"]
                    windows["candidate"].add(now, weight, (n + step) % 3 == i, 0.01 * (n + 1))
                    windows["stable"].add(now, 1 - weight, False, 0.3 + step + n)
            assert [await pool.flush(now) for pool in pools] == [2, 2]
        now = T0 + 18
        fleet = await pools[1].samples("r", now)
        slots = len(replicas[0].windows["r"]["stable"].slots(now))
        assert slots == 4
        for variant, sample in zip(("stable", "candidate"), fleet, strict=True):
            own = summed([replica.windows["r"][variant].sample(now) for replica in replicas])
            assert counts(sample) == pytest.approx(own, rel=0, abs=0.5e-9 * 2 * slots)
        assert fleet[1].errors > 0 and fleet[1].latency_weight2 > 0
    finally:
        await client.aclose()


async def test_a_flush_that_redis_refuses_is_sent_in_full_once_the_next_time(redis_server):
    client = connect(redis_server.url)
    local = LocalObservations({"r": 60.0})
    pool = PooledObservations(local, client, "t")
    try:
        observe(local, T0, "candidate", 10, errors=2, weight=1 / 3)
        await pool.flush(T0)
        observe(local, T0 + 1, "candidate", 7, errors=1, weight=2 / 3)
        await client.config_set("maxmemory", "1")  # the transaction is refused whole
        with pytest.raises(RedisError):
            await pool.flush(T0 + 1)
        await client.config_set("maxmemory", "0")
        _, candidate = await pool.samples("r", T0 + 1)
        assert candidate.requests == 10 and candidate.weight == pytest.approx(10 / 3, abs=1e-9)
        assert await pool.flush(T0 + 2) == 1  # what was refused, once
        assert await pool.flush(T0 + 3) == 0
        _, candidate = await pool.samples("r", T0 + 3)
        expected = local.windows["r"]["candidate"].sample(T0 + 3)
        assert (candidate.requests, candidate.errors) == (17, 3)
        assert counts(candidate) == pytest.approx(counts(expected), rel=0, abs=1e-9)
    finally:
        await client.config_set("maxmemory", "0")
        await client.aclose()


async def test_rounding_does_not_drift_over_ten_thousand_flushes(redis_server):
    # Each flush adds a request of weight 1/3 to the one slot of the counts since the run began:
    # the differences sent are of the rounded cumulative sum, so the pooled sum stays within a
    # billionth of the local one. 3,333 units of weight also carry into the high words (a low
    # word holds 2^40 billionths, about 1,099 units) and leave each low word below 2^40.
    client = connect(redis_server.url)
    local = LocalObservations({"r": math.inf})
    pool = PooledObservations(local, client, "t")
    window = local.windows["r"]["candidate"]
    try:
        for i in range(10_000):
            window.add(T0 + i, 1 / 3, False, 0.02)
            await pool.flush(T0 + i)
        _, candidate = await pool.samples("r", T0 + 10_000)
        assert candidate.requests == 10_000
        assert candidate.weight == pytest.approx(10_000 / 3, rel=0, abs=1e-6)
        local_sample = window.sample(T0 + 10_000)
        assert counts(candidate) == pytest.approx(counts(local_sample), rel=0, abs=1e-9)
        key = pool.key("r", math.inf, "candidate", 0)
        low, high = await client.bitfield(key).get("i64", "#2").get("i64", "#3").execute()
        assert (high, 0 <= low < 2**LOW_BITS) == (3, True)
    finally:
        await client.aclose()


async def test_every_key_carries_the_routes_hash_tag_its_run_and_an_expiry(redis_server):
    client = connect(redis_server.url)
    local = LocalObservations({"r": 60.0, "s": math.inf}, {"r": "c-1", "s": "c-2"})
    pool = PooledObservations(local, client, "t")
    try:
        for route in ("r", "s"):
            local.windows[route]["stable"].add(T0, 0.5, True, None)
            local.windows[route]["candidate"].add(T0, 0.5, False, 0.02)
            local.windows[route]["candidate"].add_outcome(T0, "click", 1.0, 0.5)
        assert await pool.flush(T0) == 4
        keys = sorted(key.decode() for key in await client.keys("*"))
        assert len(keys) == 6  # counts of 2 variants and outcomes of 1, in each of 2 routes
        for key in keys:
            route = "r" if key.startswith("t:obs4:{r}:") else "s"
            assert key.startswith(f"t:obs4:{{{route}}}:{local.generation(route)}:")
            assert 0 < await client.ttl(key) <= (130 if route == "r" else 30 * 86_400)
        _, candidate = await pool.samples("s", T0 + 86_400)
        assert candidate.outcomes["click"] == Moments.of(1.0, 0.5)
    finally:
        await client.aclose()


async def test_one_decider_at_a_time_and_a_takeover_when_it_stops_or_dies(
    redis_server: RedisServer, monkeypatch
):
    monkeypatch.setattr(decider_module, "LEASE", 0.5)
    client = connect(redis_server.url)
    a, b, c = (Decider(client, "t", name) for name in ("a", "b", "c"))
    try:
        assert await a.attempt() is True
        assert await b.attempt() is False and await c.attempt() is False
        assert (b.holder, c.holder) == ("a", "a")
        assert await a.attempt() is True  # renewed
        await a.stop()  # a clean stop hands over at once
        assert await b.attempt() is True
        assert await c.attempt() is False
        # b dies without a word: its lease lapses (0.5 s), and c takes it at its next attempt.
        assert await eventually(c.attempt, within=3)
        assert await b.attempt() is False and b.holder == "c"
        redis_server.kill()
        assert await c.attempt() is False  # cannot renew: stops deciding at once
        assert c.holder is None
    finally:
        await client.aclose()


async def test_two_processes_with_one_name_never_both_decide(redis_server: RedisServer):
    client = connect(redis_server.url)
    first, second = Decider(client, "t", "pod-0:1"), Decider(client, "t", "pod-0:1")
    try:
        assert await first.attempt() is True
        assert await second.attempt() is False
        assert (second.holder, second.deciding) == ("pod-0:1", False)
        assert await first.attempt() is True  # the holder still renews
        assert await second.attempt() is False  # the other never renews it as its own
        await first.stop()
        assert await second.attempt() is True and second.deciding
    finally:
        await client.aclose()
