"""Bucket rule: pinned vectors so a refactor can never silently re-bucket users."""

from __future__ import annotations

import mmh3
import pytest

from proxy.routing.bucket import bucket, threshold

# (salt, key, bucket) computed once from the documented rule and pinned forever.
VECTORS = [
    ("sentiment-v2", "user-42", 6725),
    ("sentiment-v2", "user-1", 7062),
    ("sentiment-v2", "alice", 4526),
    ("chat-v2", "user-42", 4325),
    ("", "x", 1968),
    ("salt", "üser-ünicode", 165),
    ("a:b", "c", 4227),
]


def test_murmur3_is_the_unsigned_x86_32_variant():
    assert mmh3.hash("foo", 0, signed=False) == 4138058784


@pytest.mark.parametrize(("salt", "key", "expected"), VECTORS)
def test_pinned_vectors(salt, key, expected):
    assert bucket(salt, key) == expected


@pytest.mark.parametrize(("salt", "key", "_"), VECTORS)
def test_rule_is_multiply_shift_of_salt_colon_key(salt, key, _):
    raw = mmh3.hash(f"{salt}:{key}".encode(), 0, signed=False)
    assert bucket(salt, key) == raw * 10000 // 2**32


def test_a_key_that_was_not_utf8_on_the_wire_is_hashed_as_its_raw_bytes():
    """The HTTP layer decodes such bytes as surrogate escapes; the hash sees the bytes again."""
    key = b"\xff".decode("utf-8", "surrogateescape")
    assert bucket("salt-1", key) == mmh3.hash(b"salt-1:\xff", 0, signed=False) * 10000 // 2**32
    assert bucket("salt-1", key) == 136


@pytest.mark.parametrize(
    ("share", "expected"),
    [(0.0, 0), (0.0001, 1), (0.00004, 0), (0.05, 500), (0.29, 2900), (0.5, 5000), (1.0, 10000)],
)
def test_threshold_rounds_share_to_buckets(share, expected):
    assert threshold(share) == expected


def test_raising_the_share_only_moves_users_to_the_candidate():
    keys = [f"user-{i}" for i in range(5000)]
    buckets = [bucket("s", k) for k in keys]
    previous: set[int] = set()
    for share in (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0):
        candidates = {i for i, b in enumerate(buckets) if b < threshold(share)}
        assert previous <= candidates
        previous = candidates
    assert len(previous) == len(keys)
