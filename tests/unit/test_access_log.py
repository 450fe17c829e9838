"""The access log writer: lines, hashing, sampling and drops, without a server."""

from __future__ import annotations

import json

from proxy.access_log import AccessLog, hash_key
from proxy.config.model import AccessLogConfig, Variant
from proxy.outcome import Outcome
from proxy.routing import Decision, Reason


def entry(key: str | None) -> Outcome:
    decision = Decision(Variant.CANDIDATE, Reason.BUCKET, 0.2, "eu", 42, key)
    return Outcome(
        1_796_083_200.0,
        "r",
        "GET",
        decision,
        Variant.CANDIDATE,
        200,
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
