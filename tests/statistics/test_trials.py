"""The analysis's stated error rate, checked in the regimes production lives in: seeded
simulated rollouts (`proxy.tools.trials`) through the real recorder, ejection, request ids and
analysis. A fast subset of `loadtests/validate_analysis.py` (which prints the whole table):
the regimes where plain counting failed worst, and failing candidates under ejection.

    GRAYSCALE_TRIAL_RUNS=100 .venv/bin/pytest tests/statistics -s

runs more seeds and prints the rates.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from proxy.analysis.intervals import wilson
from proxy.tools.trials import EQUAL, WORSE, Regime, run

RUNS = int(os.environ.get("GRAYSCALE_TRIAL_RUNS", "12"))
FAST_EQUAL = (
    "incident on both (20 % errors",
    "incident on both (5x slower",
    "heavy users (Pareto 1.2, 300)",
    "conversions at 0.5 %, relative",
    "clicks at 2 % reported 10-30 min late",
)
FAST_WORSE = ("50 % 5xx", "30 % of connections refused")


def _regime(group: tuple[Regime, ...], start: str) -> Regime:
    return next(r for r in group if r.name.startswith(start))


def _quiet() -> None:
    logging.getLogger("grayscale.ejection").setLevel(logging.ERROR)  # (an ejection each run)


def _rollbacks(regime: Regime, runs: int) -> list[float | None]:
    with ProcessPoolExecutor(2, initializer=_quiet) as pool:
        return list(pool.map(run, [regime] * runs, range(runs)))


@pytest.mark.slow  # (seeded trials: 4 to 12 s each)
@pytest.mark.timeout(180)
@pytest.mark.parametrize("start", FAST_EQUAL)
def test_equal_candidates_are_rolled_back_at_most_at_the_stated_rate(start: str) -> None:
    regime = _regime(EQUAL, start)
    found = _rollbacks(regime, RUNS)
    false = sum(t is not None for t in found)
    low, high = wilson(false, RUNS, 1.96)
    print(f"\n{regime.name}: {false} of {RUNS} rolled back (95 % interval {low:.1%} to {high:.1%})")
    # The stated rate lies within the interval (or above it): the rate is not shown to be higher.
    assert low <= 1.0 - regime.spec.confidence


@pytest.mark.parametrize("start", FAST_WORSE)
def test_a_failing_candidate_is_rolled_back_though_ejection_takes_its_users_away(
    start: str,
) -> None:
    regime = _regime(WORSE, start)
    found = _rollbacks(regime, RUNS // 2)
    caught = sorted(t for t in found if t is not None)
    print(f"\n{regime.name}: {len(caught)} of {len(found)} rolled back, at {caught} s")
    assert len(caught) == len(found)
    assert caught[-1] <= 20 * 60  # within 20 minutes, every time
