"""The outlier-ejection breaker, with time as an argument."""

from __future__ import annotations

import logging

import pytest

from proxy.config.model import Ejection
from proxy.dataplane.ejection import Breaker

SPEC = Ejection(consecutive_errors=3, base_time=30.0, max_time=100.0)
EPOCH = 1_800_000_000.0  # wall-clock time as the proxy passes it: 2027-01-15


def ejected_at(now: float) -> Breaker:
    """A breaker that has just ejected the candidate at `now` (until now + 30 s)."""
    breaker = Breaker("r", SPEC)
    for _ in range(SPEC.consecutive_errors):
        breaker.record(False, now)
    return breaker


def test_ejects_after_consecutive_errors_only():
    breaker = Breaker("r", SPEC)
    for ok in (False, False, True, False, False):
        breaker.record(ok, 0.0)
    assert not breaker.ejected(0.0)
    breaker.record(False, 1.0)
    assert breaker.ejected(1.0) and breaker.ejected(30.9) and not breaker.ejected(31.0)


def test_back_off_grows_with_each_ejection_up_to_max_time():
    breaker = Breaker("r", SPEC)
    now, periods = 0.0, []
    for _ in range(5):
        for _ in range(3):
            breaker.record(False, now)
        periods.append(breaker.until - now)
        now = breaker.until
    assert periods == [30.0, 60.0, 90.0, 100.0, 100.0]


def test_errors_while_ejected_do_not_extend_it():
    breaker = Breaker("r", SPEC)
    for _ in range(3):
        breaker.record(False, 0.0)
    for _ in range(10):
        breaker.record(False, 5.0)
    assert breaker.until == 30.0 and breaker.ejections == 1


def test_a_long_healthy_spell_forgives_earlier_ejections():
    breaker = Breaker("r", SPEC)
    for _ in range(3):
        breaker.record(False, 0.0)
    breaker.record(True, 50.0)  # 20 s after the ejection ended: remembered
    assert breaker.ejections == 1
    breaker.record(True, 131.0)  # more than max_time after it ended: forgotten
    assert breaker.ejections == 0
    assert breaker.status(131.0) == {
        "ejected": False,
        "until": None,
        "ejections": 0,
        "consecutive_errors": 0,
    }


def test_a_success_soon_after_an_ejection_at_wall_clock_times_keeps_the_count():
    breaker = ejected_at(EPOCH)
    breaker.record(True, EPOCH + 50.0)  # 20 s after the ejection ended
    assert breaker.ejections == 1


def test_a_success_exactly_max_time_after_the_ejection_ended_does_not_yet_forgive_it():
    """Forgiven only *more* than `max_time` after the ejection ended."""
    breaker = ejected_at(EPOCH)
    breaker.record(True, EPOCH + 30.0 + 100.0)
    assert breaker.ejections == 1
    breaker.record(True, EPOCH + 30.0 + 100.5)
    assert breaker.ejections == 0


def test_an_ejection_starts_the_error_count_again():
    breaker = ejected_at(EPOCH)
    assert breaker.status(EPOCH)["consecutive_errors"] == 0
    for _ in range(SPEC.consecutive_errors - 1):
        breaker.record(False, EPOCH + 30.0)  # the ejection has ended
    assert not breaker.ejected(EPOCH + 30.0)
    breaker.record(False, EPOCH + 30.0)
    assert breaker.ejected(EPOCH + 30.0) and breaker.until == EPOCH + 30.0 + 60.0


def test_status_while_ejected_shows_until_when():
    assert ejected_at(EPOCH).status(EPOCH + 29.0) == {
        "ejected": True,
        "until": EPOCH + 30.0,
        "ejections": 1,
        "consecutive_errors": 0,
    }


def test_an_ejection_is_logged_as_a_warning_naming_the_route_period_and_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="grayscale.ejection"):
        ejected_at(EPOCH)
    [record] = caplog.records
    assert (record.levelno, record.name, record.getMessage()) == (
        logging.WARNING,
        "grayscale.ejection",
        "candidate ejected for 30 s after 3 consecutive errors (ejection 1)",
    )
    assert getattr(record, "route", None) == "r"


def test_errors_of_requests_in_flight_during_an_ejection_do_not_count_toward_the_next():
    breaker = ejected_at(EPOCH)  # until EPOCH + 30
    for _ in range(10):
        breaker.record(False, EPOCH + 5)  # answers to requests sent before the ejection
    breaker.record(False, EPOCH + 31)  # the first error after it: one of three, not a fourth
    assert not breaker.ejected(EPOCH + 31)
    breaker.record(False, EPOCH + 32)
    breaker.record(False, EPOCH + 33)
    assert breaker.ejected(EPOCH + 33) and breaker.until == EPOCH + 33 + 60
