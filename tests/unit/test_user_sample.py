"""The sampled users behind the sample-ratio check: first sights, the bounded sample, the design
effect, and the check on users and on requests from heavy users, in seeded simulations."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import mmh3
import pytest

from proxy.analysis.users import CAPACITY, SEED, UserSample
from proxy.analysis.verdict import Result, Sample, sample_ratio_check
from proxy.analysis.window import LocalObservations, Window, WindowRecorder
from proxy.config.model import AnalysisSpec, Variant
from proxy.outcome import Outcome
from proxy.routing import Decision, Reason
from proxy.routing.bucket import bucket, threshold
from tests.unit.test_selftest import ROUTE as SELFTEST_ROUTE

SPEC = AnalysisSpec(min_requests=100)
SALT = "s"
ROUTE = replace(SELFTEST_ROUTE, cohort=replace(SELFTEST_ROUTE.cohort, salt=SALT))


def test_a_users_first_request_in_the_window_is_new_and_the_next_ones_are_not():
    users = UserSample(span=60.0)
    assert users.see("ann", 0.0) and not users.see("ann", 1.0) and not users.see("ann", 61.0)
    assert not users.see("ann", 121.0)  # seen at 61: still within 60 s
    assert users.see("ann", 181.5)  # not seen for more than the window: new again
    assert users.see("bob", 181.5) and len(users) == 2
    forever = UserSample(span=math.inf)
    assert forever.see("ann", 0.0) and not forever.see("ann", 1e9)


def test_the_sample_stays_bounded_and_each_user_is_new_once():
    users = UserSample(span=math.inf)
    new = [users.see(f"user-{i}", float(i)) for i in range(20_000)]
    assert len(users) <= CAPACITY and users.rate == 0.125  # 20,000 / 8 = 2,500 kept
    assert sum(new) >= len(users)  # every kept user was new once; dropped ones were too
    again = [users.see(f"user-{i}", 20_000.0) for i in range(20_000)]
    assert not any(again)


def test_expired_users_leave_before_the_rate_halves():
    users = UserSample(span=10.0)
    for i in range(CAPACITY):
        users.see(f"old-{i}", 0.0)
    for i in range(CAPACITY):
        users.see(f"new-{i}", 100.0)
    assert users.rate == 1.0 and len(users) == CAPACITY


def test_sampling_says_nothing_of_the_bucket():
    users = UserSample(span=math.inf)
    for i in range(40_000):
        users.see(f"u{i}", 0.0)
    kept = [f"u{i}" for i in range(40_000) if not users.see(f"u{i}", 0.0) and _sampled(users, i)]
    low = sum(bucket(SALT, key) < 5000 for key in kept)
    # binomial(n, 1/2): within 4 standard deviations
    assert abs(low - len(kept) / 2) < 4 * math.sqrt(len(kept) / 4), (low, len(kept))


def _sampled(users: UserSample, i: int) -> bool:
    return mmh3.hash(f"u{i}".encode(), SEED, signed=False) < users.rate * (1 << 32)


def test_the_design_effect_is_squared_requests_over_requests_of_users_in_the_window():
    users = UserSample(span=10.0)
    assert users.design_effect(0.0) == 1.0
    for key, count in (("a", 1), ("b", 1), ("c", 2)):
        for _ in range(count):
            users.see(key, 0.0)
    assert users.design_effect(0.0) == 1.5  # (1 + 1 + 4) / 4
    users.see("d", 20.0)
    assert users.design_effect(20.0) == 1.0  # a, b and c left the window


def assigned(
    served: tuple[int, int], share: float, users: tuple[int, int], design: float
) -> tuple[Sample, Sample]:
    n, u = sum(served), sum(users)
    stable = Sample(served[0], 0, (), {}, served[0], n * (1 - share), users[0], u * (1 - share))
    candidate = Sample(served[1], 0, (), {}, served[1], n * share, users[1], u * share)
    return replace(stable, design_effect=design), replace(candidate, design_effect=design)


def test_heavy_users_widen_the_request_test_and_users_are_tested_on_their_own():
    # 150 of 1,000 requests where 100 were due: p 1.4e-7 for independent requests...
    plain = sample_ratio_check(*assigned((850, 150), 0.1, (0, 0), 1.0), SPEC)
    assert plain.result is Result.FAIL and plain.bound is not None and plain.bound < 1e-6
    # ...but the same counts from users of 10 requests each on average are no evidence
    heavy = sample_ratio_check(*assigned((850, 150), 0.1, (0, 0), 10.0), SPEC)
    assert heavy.result is Result.PASS
    assert heavy.bound == pytest.approx(math.erfc(math.sqrt(27.777777777777786 / 10 / 2)))
    assert heavy.candidate["design_effect"] == 10.0
    # users: 150 of 1,000 first sights where 100 were due fails, named as users; two tests made,
    # so the smaller p-value counts twice
    both = sample_ratio_check(*assigned((900, 100), 0.1, (850, 150), 1.0), SPEC)
    assert both.result is Result.FAIL
    assert both.bound == pytest.approx(2 * math.erfc(math.sqrt(27.777777777777786 / 2)))
    assert both.note == (
        "the candidate served the first request of 150 of 1000 sampled users where 100.0 "
        "were expected: assignment or observation is broken"
    )
    assert both.candidate["users"] == 150 and both.stable["users_expected"] == 900.0
    fine = sample_ratio_check(*assigned((900, 100), 0.1, (898, 102), 1.0), SPEC)
    assert fine.result is Result.PASS and fine.bound == 1.0  # (p 0.83, doubled, capped at 1)


def simulate(seed: int, *, share: float = 0.1, lost: float = 0.0) -> tuple[Sample, Sample]:
    """An hour of a route's traffic through the recorder: 2,000 users, their request counts
    heavy-tailed (Pareto, a few users send hundreds); with `lost`, that share of the candidate's
    users never reaches the proxy (a cache or a client failing over around it). The samples with
    the check's inputs."""
    rng = random.Random(seed)
    observations = LocalObservations({"r": math.inf}, {"r": "x"})
    recorder = WindowRecorder(observations)
    recorder.use([ROUTE])
    cut = threshold(share)
    for user in range(2_000):
        key = f"{seed}-{user}"
        b = bucket(SALT, key)
        variant = Variant.CANDIDATE if b < cut else Variant.STABLE
        if variant is Variant.CANDIDATE and rng.random() < lost:
            continue
        decision = Decision(variant, Reason.BUCKET, share, None, b, key)
        for _ in range(min(int(rng.paretovariate(1.2)), 2_000)):
            at = rng.uniform(0, 3600)
            recorder.record(Outcome(at, "r", "GET", decision, variant, 200, duration=0.01))
    return observations.samples("r", 3600.0)


def test_a_sound_route_with_heavy_users_passes_and_losing_users_is_caught():
    false_alarms = plain_alarms = 0
    for seed in range(40):
        stable, candidate = simulate(seed)
        false_alarms += sample_ratio_check(stable, candidate, SPEC).result is Result.FAIL
        plain = replace(stable, design_effect=1.0), replace(candidate, design_effect=1.0)
        plain_alarms += sample_ratio_check(*plain, SPEC).result is Result.FAIL
    print(f"\nsound routes failed: {false_alarms}/40 (requests as independent: {plain_alarms}/40)")
    assert false_alarms == 0
    assert plain_alarms >= 10  # what counting requests as independent draws did
    caught = sum(
        sample_ratio_check(*simulate(seed, lost=0.5), SPEC).result is Result.FAIL
        for seed in range(10)
    )
    print(f"routes losing half of the candidate's users caught: {caught}/10")
    assert caught >= 9


def test_a_user_is_sampled_by_the_sampling_hash_alone_and_any_key_can_be_hashed():
    users = UserSample(span=math.inf)
    for i in range(CAPACITY + 1):
        users.see(f"fill-{i}", 0.0)
    assert users.rate == 0.5
    limit = users.rate * (1 << 32)
    for i in range(500):
        key = f"fresh-{i}"
        sampled = mmh3.hash(key.encode(), SEED, signed=False) < limit
        assert users.see(key, 1.0) is sampled
    odd = "caf\udce9"  # a key whose bytes were not UTF-8 on the wire: hashed as received
    expected = mmh3.hash(odd.encode("utf-8", "surrogateescape"), SEED, signed=False) < limit
    assert users.see(odd, 1.0) is expected


def test_exactly_the_capacity_is_kept_without_halving():
    users = UserSample(span=math.inf)
    for i in range(CAPACITY):
        assert users.see(f"u{i}", 0.0)
    assert (len(users), users.rate) == (CAPACITY, 1.0)


def test_a_user_seen_exactly_one_window_ago_is_still_in_it():
    users = UserSample(span=10.0)
    users.see("a", 0.0)
    users.see("a", 0.0)
    assert users.design_effect(10.0) == 2.0  # 4 / 2: still counted at exactly 10 s
    for i in range(CAPACITY):  # one more than fits: "a" is exactly 10 s old, so it stays...
        users.see(f"u{i}", 10.0)
    assert users.rate == 0.5  # ...and the rate halves to make room
    older = UserSample(span=10.0)
    older.see("a", 0.0)
    for i in range(CAPACITY):  # "a" is 10.5 s old: it leaves, and the rest fits
        older.see(f"u{i}", 10.5)
    assert (older.rate, len(older)) == (1.0, CAPACITY)


def test_a_reload_keeps_the_user_sample_and_a_new_rollout_starts_one():
    observations = LocalObservations({"r": math.inf}, {"r": "one"})
    sample = observations.users["r"]
    observations.update({"r": math.inf}, {"r": "one"})
    assert observations.users["r"] is sample
    observations.update({"r": math.inf}, {"r": "two"})
    assert observations.users["r"] is not sample


def test_a_fresh_window_expects_no_users_even_at_the_start_of_time():
    window = Window(span=60.0)
    sample = window.sample(0.0)
    assert (sample.users, sample.users_expected) == (0, 0.0)
