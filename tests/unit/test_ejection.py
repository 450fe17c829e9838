"""The outlier-ejection breaker, with time as an argument."""

from __future__ import annotations

from proxy.config.model import Ejection
from proxy.ejection import Breaker

SPEC = Ejection(consecutive_errors=3, base_time=30.0, max_time=100.0)


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
