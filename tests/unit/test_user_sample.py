"""The sampled users behind the sample-ratio check and the checks' design effects: first sights,
the bounded sample, the design effects, and the check on users and on requests from heavy users,
in seeded simulations."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import mmh3
import pytest

from proxy.analysis.sample_ratio import sample_ratio_check
from proxy.analysis.users import CAPACITY, SEED, UserSample
from proxy.analysis.verdict import Clustering, Result, Sample
from proxy.analysis.window import LocalObservations, Window, WindowRecorder
from proxy.config.model import AnalysisSpec, Variant
from proxy.records.request_outcome import RequestOutcome
from proxy.routing import Decision, Reason
from proxy.routing.bucket import bucket, threshold
from tests.unit.test_selftest import ROUTE as SELFTEST_ROUTE

SPEC = AnalysisSpec(min_requests=100)
SALT = "s"
ROUTE = replace(SELFTEST_ROUTE, cohort=replace(SELFTEST_ROUTE.cohort, salt=SALT))


def test_a_users_first_request_in_the_window_is_new_and_the_next_ones_are_not():
    users = UserSample(span=60.0)
    ann, new = users.see("ann", 0.0)
    assert ann is not None and new
    assert users.see("ann", 1.0) == (ann, False) and users.see("ann", 61.0) == (ann, False)
    assert users.see("ann", 121.0) == (ann, False)  # seen at 61: still within 60 s
    again, new = users.see("ann", 181.5)  # not seen for more than the window: new again...
    assert new and again is not None and again is not ann  # ...with sums of its own
    assert users.see("bob", 181.5)[1] and len(users) == 2
    forever = UserSample(span=math.inf)
    assert forever.see("ann", 0.0)[1] and not forever.see("ann", 1e9)[1]


def test_the_sample_stays_bounded_and_each_user_is_new_once():
    users = UserSample(span=math.inf)
    new = [users.see(f"user-{i}", float(i))[1] for i in range(20_000)]
    assert len(users) <= CAPACITY and users.rate == 0.125  # 20,000 / 8 = 2,500 kept
    assert sum(new) >= len(users)  # every kept user was new once; dropped ones were too
    again = [users.see(f"user-{i}", 20_000.0) for i in range(20_000)]
    assert not any(new for _, new in again)
    assert sum(user is not None for user, _ in again) == len(users)  # the kept ones, and only


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
    kept = [f"u{i}" for i in range(40_000) if users.see(f"u{i}", 0.0)[0] and _sampled(users, i)]
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
    stable = replace(
        Sample.unweighted(served[0], 0),
        assigned=served[0],
        expected=n * (1 - share),
        users=users[0],
        users_expected=u * (1 - share),
        design_effect=design,
    )
    candidate = replace(
        Sample.unweighted(served[1], 0),
        assigned=served[1],
        expected=n * share,
        users=users[1],
        users_expected=u * share,
        design_effect=design,
    )
    return stable, candidate


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
        "the candidate was assigned the first request of 150 of 1000 sampled users where 100.0 "
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
            recorder.record(
                RequestOutcome(
                    at=at,
                    route="r",
                    method="GET",
                    decision=decision,
                    variant=variant,
                    status=200,
                    duration=0.01,
                )
            )
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


def three_users() -> UserSample:
    """A window of 10 s in which three users sent the candidate compared requests at 0 s."""
    users = UserSample(span=10.0)
    candidate = {  # (weight, error, slow) of each compared request of the candidate
        "a": [(0.5, True, False), (0.5, True, False)],
        "b": [(0.5, False, True), (0.25, False, True)],
        "c": [(0.25, False, False)],
    }
    for key, requests in candidate.items():
        for weight, error, slow in requests:
            user, _ = users.see(key, 0.0)
            assert user is not None
            users.add(user, Variant.CANDIDATE, weight, error, slow)
    return users


def test_the_design_effects_are_the_variance_by_users_over_the_variance_by_requests():
    users = three_users()
    c, _ = users.see("c", 0.0)
    assert c is not None
    users.add(c, Variant.STABLE, 0.5, True, False)  # (a user whose share moved: per variant)
    # Errors: weighted mean 1.0 / 2.0 = 0.5. By users, sum w (y - 0.5) is 0.5, -0.375, -0.125:
    # squared, 0.40625. By requests, sum w² (y - 0.5)² = (0.25 + 0.25 + 0.25 + 0.0625 + 0.0625)
    # times 0.25 = 0.21875. Their ratio: 13 / 7.
    # Slow requests: mean 0.75 / 2.0 = 0.375. By users, -0.375, 0.46875 and -0.09375, squared
    # 0.369140625; by requests, 0.3125 · 0.625² + 0.5625 · 0.375² = 0.201171875: 189 / 103.
    found = users.clustering(Variant.CANDIDATE)
    assert found.errors == pytest.approx(13 / 7) and found.latency == pytest.approx(189 / 103)
    # stable's one request alone varies as much by user as by request; nothing is slow
    assert users.clustering(Variant.STABLE) == Clustering(1.0, 1.0)
    # every user with one error and one success: less variance by users than by requests
    mixed = UserSample(span=10.0)
    for key in ("d", "e", "f"):
        for error in (True, False):
            user, _ = mixed.see(key, 0.0)
            assert user is not None
            mixed.add(user, Variant.CANDIDATE, 0.5, error, error)
    assert mixed.clustering(Variant.CANDIDATE) == Clustering(1.0, 1.0)  # never below 1
    # nothing of a variant without requests: nothing to estimate from
    assert UserSample(span=10.0).clustering(Variant.CANDIDATE) == Clustering(1.0, 1.0)


def effects(users: UserSample) -> tuple[float, float]:
    """The candidate's design effects: of its error rate and of its share of slow requests."""
    found = users.clustering(Variant.CANDIDATE)
    return found.errors, found.latency


def test_a_user_back_after_the_window_starts_with_fresh_sums_and_its_old_ones_leave():
    users = three_users()
    before = effects(users)
    assert before == pytest.approx((13 / 7, 189 / 103))
    a, new = users.see("a", 10.0)  # exactly one window later: still in it, its sums kept
    assert a is not None and not new
    assert effects(users) == before
    back, new = users.see("a", 20.5)  # more than a window later: counted anew...
    assert back is not None and new and back is not a
    # ...and its two errors are out of the totals: b and c alone, kept though not seen since
    # 0 s (nothing shrank the sample). No error: 1. Slow: mean 0.75 / 1.0; by users b's 0.75 -
    # 0.75 · 0.75 and c's -0.75 · 0.25, squared 0.0703125; by requests 0.3125 · 0.25² + 0.0625
    # · 0.75² = 0.0546875: 9 / 7
    assert effects(users) == pytest.approx((1.0, 9 / 7))
    users.add(back, Variant.CANDIDATE, 0.5, True, False)  # its first request since
    # Errors: mean 0.5 / 1.5 = 1/3; by users 0.5 - 1/6, -0.25, -1/12, squared 26/144; by
    # requests 0.25 · 4/9 + 0.375 · 1/9 = 11/72: 13 / 11. Slow: mean 0.5; by users -0.25,
    # 0.375, -0.125, squared 0.21875; by requests 0.625 · 0.25 = 0.15625: 7 / 5
    assert effects(users) == pytest.approx((13 / 11, 7 / 5))


Request = tuple[Variant, float, bool, bool]  # (variant, weight, error, slow)


def brute_force(requests: dict[str, list[Request]], variant: Variant) -> Clustering:
    """The design effects of `variant` recomputed from every kept user's requests: the variance
    of the weighted mean by users, sum over users of (sum w y - mean sum w)², over its variance
    by requests, sum w² (y - mean)², at least 1 (1 without any variance)."""

    def effect(slow: bool) -> float:
        kept = [
            [(w, float(s if slow else e)) for v, w, e, s in made if v is variant]
            for made in requests.values()
        ]
        weight = math.fsum(w for user in kept for w, _ in user)
        if weight == 0.0:
            return 1.0
        mean = math.fsum(w * y for user in kept for w, y in user) / weight
        by_users = math.fsum(math.fsum(w * (y - mean) for w, y in user) ** 2 for user in kept)
        by_requests = math.fsum(w * w * (y - mean) ** 2 for user in kept for w, y in user)
        return max(1.0, by_users / by_requests) if by_requests > 0.0 else 1.0

    return Clustering(effect(False), effect(True))


def test_the_running_totals_equal_a_recomputation_after_random_requests_and_a_shrink():
    rng = random.Random(21)
    span = 50.0
    users = UserSample(span=span)
    # the model: the rate, and each kept user's requests since it was last new, by the module's
    # invariants (new after more than a window away; beyond the capacity the expired leave,
    # then the rate halves until the rest fits)
    rate = 1 << 32
    kept: dict[str, list[Request]] = {}
    last: dict[str, float] = {}
    leaning: dict[str, float] = {}  # each user's own error rate: its requests fail together
    returns = 0

    def hashed(key: str) -> int:
        return mmh3.hash(key.encode(), SEED, signed=False)

    def request(key: str, now: float) -> None:
        nonlocal rate, kept, returns
        user, new = users.see(key, now)
        fresh = key not in kept or now - last[key] > span
        if hashed(key) < rate:
            returns += fresh and key in kept
            if fresh:
                kept[key] = []
            last[key] = now
        if len(kept) > CAPACITY:
            kept = {k: made for k, made in kept.items() if now - last[k] <= span}
            while len(kept) > CAPACITY:
                rate //= 2
                kept = {k: made for k, made in kept.items() if hashed(k) < rate}
        if key not in kept:
            assert (user, new) == (None, False)
            return
        assert user is not None and new is fresh
        p = leaning.setdefault(key, rng.random() ** 3)
        for _ in range(rng.choice((1, 1, 2))):  # its compared requests (a retry: two)
            variant = Variant.CANDIDATE if rng.random() < 0.4 else Variant.STABLE
            weight = rng.choice((0.1, 0.25, 0.5, 0.75, 0.9))
            error, slow = rng.random() < p, rng.random() < p / 2 + 0.05
            users.add(user, variant, weight, error, slow)
            kept[key].append((variant, weight, error, slow))

    def agrees() -> None:
        assert (len(users), users.rate) == (len(kept), rate / (1 << 32))
        for variant in Variant:
            expected, found = brute_force(kept, variant), users.clustering(variant)
            assert found.errors == pytest.approx(expected.errors, rel=1e-9)
            assert found.latency == pytest.approx(expected.latency, rel=1e-9)

    for step in range(20_000):  # 300 users over 1,000 s: many come back after the window
        request(f"early-{rng.randrange(300)}", step * 0.05)
    assert returns > 300 and rate == 1 << 32
    agrees()
    effects = [users.clustering(v) for v in Variant]
    assert all(e.errors > 1.5 and e.latency > 1.2 for e in effects), effects  # (clustered)
    for i in range(6_000):  # more users within a window than fit: the sample shrinks
        now = 1_000.0 + i * 0.005
        request(f"late-{i}", now)
        if rng.random() < 0.3:
            request(f"early-{rng.randrange(300)}", now)
    assert rate < 1 << 32 and len(kept) <= CAPACITY
    agrees()


def clustered(seed: int, together: bool) -> tuple[Clustering, Clustering]:
    """Stable's and the candidate's design effects after 400 users of 10 requests each went
    through the recorder at a share of 0.5; a user fails 10 % of requests and is slow on 10 %
    of the successful ones, for all of them at once (`together`) or each on its own."""
    rng = random.Random(seed)
    observations = LocalObservations({"r": math.inf}, {"r": "x"})
    recorder = WindowRecorder(observations)
    recorder.use([ROUTE])
    observations.refer("r", 0.05)  # slower than 50 ms: slow
    cut = threshold(0.5)
    for user in range(400):
        key = f"{seed}-{user}"
        b = bucket(SALT, key)
        variant = Variant.CANDIDATE if b < cut else Variant.STABLE
        decision = Decision(variant, Reason.BUCKET, 0.5, None, b, key)
        failing, slow = rng.random() < 0.1, rng.random() < 0.1
        for i in range(10):
            if not together:
                failing, slow = rng.random() < 0.1, rng.random() < 0.1
            status, duration = 500 if failing else 200, 0.1 if slow else 0.01
            at = user * 10.0 + i
            recorder.record(
                RequestOutcome(
                    at=at,
                    route="r",
                    method="GET",
                    decision=decision,
                    variant=variant,
                    status=status,
                    duration=duration,
                )
            )
    stable, candidate = observations.samples("r", 4000.0)
    return stable.clustering, candidate.clustering


def test_users_whose_requests_fail_together_widen_the_checks_and_independent_ones_do_not():
    for seed in range(3):
        together, alone = clustered(seed, True), clustered(seed, False)
        print(f"\ndesign effects, failing together: {together}; each on its own: {alone}")
        for effects in together:  # 10 requests per user that are as one: 10 times the variance
            assert effects.errors == pytest.approx(10.0) and effects.latency == pytest.approx(10.0)
        for effects in alone:
            assert 1.0 <= effects.errors < 1.3 and 1.0 <= effects.latency < 1.3


def test_a_user_is_sampled_by_the_sampling_hash_alone_and_any_key_can_be_hashed():
    users = UserSample(span=math.inf)
    for i in range(CAPACITY + 1):
        users.see(f"fill-{i}", 0.0)
    assert users.rate == 0.5
    limit = users.rate * (1 << 32)
    for i in range(500):
        key = f"fresh-{i}"
        sampled = mmh3.hash(key.encode(), SEED, signed=False) < limit
        user, new = users.see(key, 1.0)
        assert new is sampled and (user is not None) is sampled
    odd = "caf\udce9"  # a key whose bytes were not UTF-8 on the wire: hashed as received
    expected = mmh3.hash(odd.encode("utf-8", "surrogateescape"), SEED, signed=False) < limit
    assert users.see(odd, 1.0)[1] is expected


def test_exactly_the_capacity_is_kept_without_halving():
    users = UserSample(span=math.inf)
    for i in range(CAPACITY):
        assert users.see(f"u{i}", 0.0)[1]
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
    observations.use({"r": math.inf}, {"r": "one"})
    assert observations.users["r"] is sample
    observations.use({"r": math.inf}, {"r": "two"})
    assert observations.users["r"] is not sample


def test_a_fresh_window_expects_no_users_even_at_the_start_of_time():
    window = Window(span=60.0)
    sample = window.sample(0.0)
    assert (sample.users, sample.users_expected) == (0, 0.0)
