"""`grayscale simulate`'s arithmetic: steps of any length, and when a ramp reaches its max."""

from __future__ import annotations

import pytest

from proxy.config.loader import load_config
from proxy.config.model import Ramp
from proxy.routing import ramp_reaches_max
from proxy.tools.simulate import render

START = 1_796_083_200.0  # 2026-12-01T00:00:00Z


@pytest.mark.parametrize(
    ("ramp", "expected"),
    [
        (Ramp(base=0.05, slope=0.05, per=10.0, max=0.8), START + 150.0),
        (Ramp(base=0.0, slope=0.25, per=3600.0, max=1.0), START + 4 * 3600.0),
        (Ramp(base=0.8, slope=0.05, per=10.0, max=0.8), START),  # at its max from the start
        (Ramp(base=0.8, slope=0.0, per=10.0, max=0.8), START),  # flat, and already at its max
        (Ramp(base=0.9, slope=0.0, per=10.0, max=0.5), START),  # clamped to max at once
        (Ramp(base=0.25, slope=0.0, per=10.0, max=1.0), None),  # does not grow
        (Ramp(base=0.5, slope=-0.1, per=10.0, max=1.0), None),  # shrinks
    ],
)
def test_when_a_ramp_reaches_its_max(ramp, expected):
    assert ramp_reaches_max(ramp, START) == expected


def test_the_demo_ramp_in_steps_of_two_seconds():
    text = render(load_config("config/demo.yaml"), START, 3, 2000, step=2.0)
    sentiment = text.split("route sentiment")[1].split("route chat")[0].splitlines()
    assert sentiment[1].split()[:2] == ["step", "time"]
    rows = [line.split() for line in sentiment[2:6]]
    assert [row[:3] for row in rows] == [
        ["0", "2026-12-01T00:00:00Z", "5.00%"],
        ["1", "2026-12-01T00:00:02Z", "6.00%"],
        ["2", "2026-12-01T00:00:04Z", "7.00%"],
        ["3", "2026-12-01T00:00:06Z", "8.00%"],
    ]
    assert "(default) reaches its max (80.00%) at 2026-12-01T00:02:30Z, 2m30s after the start" in (
        sentiment
    )
    assert "eu reaches its max (50.00%) at 2026-12-01T00:04:10Z, 4m10s after the start" in (
        sentiment
    )
    chat = text.split("route chat")[1]
    assert "(default) never reaches its max (100.00%): it does not grow" in chat


def test_day_steps_show_dates_and_long_spans():
    text = render(load_config("config/example.yaml"), START, 1, 1000)
    assert text.startswith("Candidate share every 1d:")
    assert " day  date" in text
    assert (
        "(default) reaches its max (100.00%) at 2026-12-20T23:31:12Z, 19d 23h after the start"
        in (text)
    )
