"""The access log writer: lines, hashing, sampling and drops, without a server."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import select
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.model import AccessLogConfig, Variant
from proxy.records.request_outcome import RequestOutcome
from proxy.routing import Decision, Reason
from proxy.telemetry.access_log import KEPT_KEY_CHARS, USERS_KEPT, AccessLog, _Stamps, hash_key


def entry(key: str | None) -> RequestOutcome:
    decision = Decision(Variant.CANDIDATE, Reason.BUCKET, 0.2, "eu", 42, key)
    return RequestOutcome(
        at=1_796_083_200.0,
        route="r",
        method="GET",
        decision=decision,
        variant=Variant.CANDIDATE,
        status=200,
        duration=0.0123,
        ttfb=0.004,
        bytes_in=10,
        bytes_out=20,
    )


def test_line_hashes_the_key_with_the_secret():
    log = AccessLog(AccessLogConfig(), b"k1", on_drop=lambda: None)
    line = json.loads(log.line(entry("alice")))
    assert line["user"] == hash_key(b"k1", "r", "alice") != hash_key(b"k2", "r", "alice")
    assert hash_key(b"k1", "r", "alice") != hash_key(b"k1", "other-route", "alice")
    assert len(line["user"]) == 16
    assert "bucket" not in line  # with the salt, a bucket narrows a user id down
    assert (line["time"], line["duration_ms"], line["ttfb_ms"]) == (
        "2026-12-01T00:00:00.000+00:00",
        12.3,
        4.0,
    )
    assert json.loads(log.line(entry(None)))["user"] is None


def test_full_queue_drops_and_counts(tmp_path):
    drops: list[int] = []
    config = AccessLogConfig(path=str(tmp_path / "a.log"))
    log = AccessLog(config, b"k", lambda: drops.append(1), limit=2)  # not started: nothing drains
    for _ in range(5):
        log.record(entry("u"))
    assert len(drops) == 3


def test_sampling_uses_the_injected_random(tmp_path):
    path = tmp_path / "a.log"
    draws = iter([0.05, 0.5, 0.09, 0.95])
    log = AccessLog(
        AccessLogConfig(path=str(path), sample=0.1), b"k", lambda: None, rand=lambda: next(draws)
    )
    log.start()
    for _ in range(4):
        log.record(entry("u"))
    log.close()
    assert len(path.read_text().splitlines()) == 2


def test_lines_are_written_whole_in_writes_no_other_process_can_split(tmp_path):
    """Workers share stdout: every write holds whole lines and at most PIPE_BUF bytes (a pipe
    never interleaves such a write with another process's)."""
    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    log = AccessLog(AccessLogConfig(), b"k", on_drop=lambda: None)
    for i in range(500):
        log.record(entry(f"user-{i}"))
    log._drain(Recording())
    assert len(writes) > 1
    assert all(len(w.encode()) <= select.PIPE_BUF and w.endswith("\n") for w in writes)
    lines = "".join(writes).splitlines()
    assert len(lines) == 500 and all(json.loads(line)["route"] == "r" for line in lines)


@settings(max_examples=2000, deadline=None)
@given(
    st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False)
    | st.integers(0, 4_102_444_800).map(lambda s: s + 0.9999995)
    | st.integers(0, 4_102_444_800).map(lambda s: s + 0.0005)
)
def test_a_line_s_time_is_what_datetime_writes(at):
    stamp = _Stamps()
    expected = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    assert stamp(at) == expected
    assert stamp(at) == expected  # (the second's text, made once, is reused)


def test_the_user_hash_is_hmac_sha256_of_route_and_key():
    expected = hmac.new(b"k1", b"r\x00alice", hashlib.sha256).hexdigest()[:16]
    assert hash_key(b"k1", "r", "alice") == expected


def test_user_hashes_are_remembered_up_to_a_bound():
    log = AccessLog(AccessLogConfig(), b"k1", on_drop=lambda: None)
    for index in range(USERS_KEPT + 10):
        user = f"user-{index}"
        assert json.loads(log.line(entry(user)))["user"] == hash_key(b"k1", "r", user)
    assert len(log._users) == 10  # cleared when full, then filled again


def test_long_keys_are_hashed_but_not_remembered():
    log = AccessLog(AccessLogConfig(), b"k1", on_drop=lambda: None)
    for size in (KEPT_KEY_CHARS, KEPT_KEY_CHARS + 1):
        user = "u" * size
        assert json.loads(log.line(entry(user)))["user"] == hash_key(b"k1", "r", user)
    assert list(log._users) == [("r", "u" * KEPT_KEY_CHARS)]
