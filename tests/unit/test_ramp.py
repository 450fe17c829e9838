"""The ramp share(t) = clamp(base + slope * (t - start) / per, 0, max)."""

from __future__ import annotations

import math

import pytest

from proxy.config.model import Ramp
from proxy.routing import current_share, ramp_share

DAY = 86400.0
START = 1_796_083_200.0  # 2026-12-01T00:00:00Z


@pytest.mark.parametrize(
    ("ramp", "offset", "expected"),
    [
        (Ramp(base=0.001, slope=0.05, per=DAY), -1.0, 0.0),  # before start: 0, not base
        (Ramp(base=0.001, slope=0.05, per=DAY), 0.0, 0.001),  # at start: base
        (Ramp(base=0.001, slope=0.05, per=DAY), DAY, 0.051),
        (Ramp(base=0.001, slope=0.05, per=DAY), DAY / 2, 0.026),
        (Ramp(base=0.0, slope=0.05, per=DAY, max=0.2), 10 * DAY, 0.2),  # clamped at max
        (Ramp(base=0.0, slope=0.5, per=3600.0), 3 * 3600.0, 1.0),  # clamped at 1
        (Ramp(base=0.3, slope=-0.1, per=DAY), 5 * DAY, 0.0),  # a ramp down stops at 0
        (Ramp(base=0.25), 100 * DAY, 0.25),  # constant share
        (Ramp(), 0.0, 0.0),  # the default ramp sends nobody
    ],
)
def test_ramp_share(ramp, offset, expected):
    assert ramp_share(ramp, START, START + offset) == pytest.approx(expected)


def test_explicit_start_wins_over_rollout_start():
    ramp = Ramp(start=START, base=0.1, slope=0.1, per=DAY)
    assert current_share(ramp, started_at=START + 5 * DAY, now=START + DAY) == pytest.approx(0.2)


def test_missing_start_uses_rollout_start():
    ramp = Ramp(base=0.1, slope=0.1, per=DAY)
    assert current_share(ramp, started_at=START, now=START + DAY) == pytest.approx(0.2)
    assert current_share(ramp, started_at=START, now=START - 1) == 0.0


def test_a_share_clamped_at_zero_is_plain_zero_never_negative_zero():
    """A ramp written with `base: -0.0` going down sits at 0 from its start: /status shows 0.0."""
    share = ramp_share(Ramp(base=-0.0, slope=-0.1, per=DAY), START, START)
    assert (share, math.copysign(1.0, share)) == (0.0, 1.0)
