"""Property-based tests of the decision core."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.model import Ramp
from proxy.routing import BUCKETS, bucket, ramp_share, threshold

keys = st.text(min_size=1, max_size=40)
salts = st.text(max_size=20)
shares = st.floats(min_value=0.0, max_value=1.0)


@given(salt=salts, key=keys)
def test_bucket_in_range_and_deterministic(salt, key):
    b = bucket(salt, key)
    assert 0 <= b < BUCKETS
    assert bucket(salt, key) == b


@given(salt=salts, key=keys, low=shares, high=shares)
def test_monotonic_a_candidate_stays_candidate_as_share_grows(salt, key, low, high):
    low, high = min(low, high), max(low, high)
    if bucket(salt, key) < threshold(low):
        assert bucket(salt, key) < threshold(high)


@given(share=shares)
def test_threshold_bounds(share):
    assert 0 <= threshold(share) <= BUCKETS
    assert abs(threshold(share) / BUCKETS - share) <= 0.5 / BUCKETS


@settings(max_examples=25, deadline=None)
@given(salt=salts, share=st.floats(min_value=0.01, max_value=0.99))
def test_uniform_share_of_many_ids_matches_share(salt, share):
    n = 20_000
    hits = sum(bucket(salt, f"user-{i}") < threshold(share) for i in range(n))
    # 5 standard deviations of a binomial proportion: fails by chance < 1 in 10^6.
    tolerance = 5 * (share * (1 - share) / n) ** 0.5
    assert abs(hits / n - share) <= tolerance + 0.5 / BUCKETS


@settings(max_examples=20, deadline=None)
@given(
    a=st.text(min_size=1, max_size=10),
    b=st.text(min_size=1, max_size=10),
    share_a=st.floats(min_value=0.05, max_value=0.95),
    share_b=st.floats(min_value=0.05, max_value=0.95),
)
def test_two_salts_are_independent(a, b, share_a, share_b):
    if a == b:
        return
    n = 20_000
    in_a = [bucket(a, f"u{i}") < threshold(share_a) for i in range(n)]
    in_b = [bucket(b, f"u{i}") < threshold(share_b) for i in range(n)]
    both = sum(x and y for x, y in zip(in_a, in_b, strict=True)) / n
    pa, pb = sum(in_a) / n, sum(in_b) / n
    # Independent: P(a and b) = P(a)·P(b), within 5 standard deviations.
    tolerance = 5 * (pa * pb * (1 - pa * pb) / n) ** 0.5
    assert abs(both - pa * pb) <= tolerance


@given(
    base=shares,
    slope=st.floats(min_value=-10, max_value=10),
    per=st.floats(min_value=0.001, max_value=1e7),
    top=shares,
    elapsed=st.floats(min_value=-1e9, max_value=1e9),
)
def test_ramp_clamped_to_zero_and_max(base, slope, per, top, elapsed):
    ramp = Ramp(base=min(base, top), slope=slope, per=per, max=top)
    share = ramp_share(ramp, start=0.0, now=elapsed)
    assert 0.0 <= share <= top
    if elapsed < 0:
        assert share == 0.0


@given(
    base=shares,
    slope=st.floats(min_value=0, max_value=10),
    t1=st.floats(min_value=0, max_value=1e8),
    t2=st.floats(min_value=0, max_value=1e8),
)
def test_non_negative_slope_never_lowers_the_share(base, slope, t1, t2):
    ramp = Ramp(base=base, slope=slope, per=86400.0)
    early, late = min(t1, t2), max(t1, t2)
    assert ramp_share(ramp, 0.0, early) <= ramp_share(ramp, 0.0, late)
