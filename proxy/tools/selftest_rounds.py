"""`grayscale selftest`'s rounds: the route's own checks (`assessment.assess`), epochs and
decision policy (`policy.step`) over the runs of one scenario, simulated side by side, one row
of arrays a run (`proxy.tools.selftest_traffic`).

How it runs in seconds. A round in which no check of a run can fail (`_beyond`: its estimates,
less what every bound takes off at the least, are within their limits, since the start and in
the current epoch; then the checks that need no latency, made for real) steps the policy on an
inconclusive verdict, which for a rollback is the same as any word but fail: the row of failures
ends. Everywhere else the real `assess` takes the verdict. `every_round=True` takes it at every
round instead, and a test finds the same rollback times both ways.

Invariants:
- Seeded: the same arguments give the same rollback times.
- A window (`method: fixed`) is the latest whole intervals that fit in `window`.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from proxy.analysis.assessment import analysis_share, assess, check_alpha
from proxy.analysis.checks import error_rate_check, outcome_check
from proxy.analysis.epochs import full
from proxy.analysis.histogram import SIZE, value_of
from proxy.analysis.intervals import Bounds
from proxy.analysis.policy import Act, Memory, Ramp, Rules, step
from proxy.analysis.sequential import z_always
from proxy.analysis.verdict import Moments, Result, Sample, Verdict
from proxy.config.model import AnalysisMethod, AnalysisSpec, OutcomeBasis
from proxy.rollout.machine import State
from proxy.tools.selftest_traffic import Draws, Scenario, Tallies, Traffic, World

_EPS = 1e-9  # (estimates this close to a limit are judged: no rounding hides a failure)
_RUN = "selftest"  # (every run is one rollout run of its own)
_VALUES = np.array([value_of(i) for i in range(SIZE)])


def _beyond(
    s: Tallies, c: Tallies, spec: AnalysisSpec, lo: int, z: float
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Runs in which the error-rate or an outcome check can fail, and runs in which the latency
    check can. Necessary conditions only, from the checks' documented floors: a check's lower
    bound is never above its estimate less `z` (the fixed one-sided factor at the largest share
    of the error rate a check spends: `sequential.z_always` is never below it) times the
    standard error of the plain means (`spreads` never gives a variant less than its own
    variance); a latency ratio's bound is never above the ratio of the quantiles' buckets,
    give or take one."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate_s, rate_c = s.errors / s.requests, c.errors / c.requests
        error = np.sqrt(rate_s * (1 - rate_s) / s.requests + rate_c * (1 - rate_c) / c.requests)
        counts = rate_c - rate_s - z * error > spec.max_error_rate_increase - _EPS
        mean_s, mean_c = s.conversions / s.requests, c.conversions / c.requests
        for check in spec.outcomes:
            if check.per is OutcomeBasis.REQUEST:
                fall = (mean_s - mean_c) / mean_s if check.relative else mean_s - mean_c
                counts |= fall > check.max_decrease - _EPS
        width = s.latency.shape[1]
        level_s, level_c = s.level, c.level
        fast = _VALUES[lo + np.clip(level_c + 1, 0, width - 1)]
        slow = _VALUES[lo + np.clip(level_s - 1, 0, width - 1)]
        slower = (level_s >= 0) & (level_c >= 0) & (fast / slow > spec.max_latency_ratio - _EPS)
    return np.asarray(counts, dtype=np.bool_), np.asarray(slower, dtype=np.bool_)


def _failing_counts(
    spec: AnalysisSpec, samples: tuple[Sample, Sample], alpha: float, scope: str, outcomes: bool
) -> bool:
    """Whether the error-rate check or (with `outcomes`) an outcome check fails on `samples`
    (without latency: the checks that need none, made as `assess` makes them)."""
    bounds = Bounds(spec.method, spec.min_requests, alpha, scope)
    s, c = samples
    if error_rate_check(s, c, spec, bounds).result is Result.FAIL:
        return True
    return outcomes and any(
        outcome_check(s, c, o, spec, bounds).result is Result.FAIL for o in spec.outcomes
    )


def _least_factor(spec: AnalysisSpec, alpha: float) -> float:
    """A factor that no bound of a check spending at most `alpha` goes below: the fixed one,
    or the least of `sequential.z_always` over every sample size (found on a fine grid, less a
    margin for what lies between its points)."""
    if spec.method is AnalysisMethod.FIXED:
        return NormalDist().inv_cdf(1.0 - alpha)
    grid = (10.0 ** (i / 1000.0) for i in range(-3000, 7001))
    return min(z_always(x, alpha) for x in grid) * (1.0 - 1e-4)


def _sample(
    t: Tallies,
    run: int,
    weight: float,
    *,
    lo: int | None,
    spec: AnalysisSpec,
    ratio: tuple[int, float] = (0, 0.0),
) -> Sample:
    """Run `run`'s `Sample` of one variant whose requests weigh `weight`, with its assignments
    (`ratio`: assigned, expected; none for an epoch's counts) and its latencies (none when
    `lo` is None)."""
    n, e = int(t.requests[run]), int(t.errors[run])
    band = t.latency[run]
    latency = np.zeros(SIZE if lo is not None else 0)
    if lo is not None:
        latency[lo : lo + len(band)] = band * weight
    w2 = weight * weight
    k = int(t.conversions[run])
    moments = Moments(k, k * weight, k * w2, k * weight, k * w2, k * w2)
    outcomes = {c.name: moments for c in spec.outcomes if c.per is OutcomeBasis.REQUEST}
    return Sample(
        n,
        e,
        n * weight,
        n * w2,
        e * weight,
        e * w2,
        tuple(latency.tolist()),
        float(t.latencies[run]) * w2 if lo is not None else 0.0,
        outcomes,
        assigned=ratio[0],
        expected=ratio[1],
    )


def simulate(
    spec: AnalysisSpec,
    world: World,
    scenario: Scenario,
    *,
    horizon: float,
    runs: int,
    seed: int,
    every_round: bool = False,
) -> list[float | None]:
    """When the policy rolled each run's candidate back (seconds into the run), or None if it
    did not within `horizon`; `every_round`: a verdict at every round (see the module's text)."""
    traffic = Traffic(world, scenario, runs, seed, horizon)
    lo, width = traffic.lo, traffic.hi - traffic.lo + 1
    q, interval, share = spec.latency_quantile, spec.interval, world.share
    weights = (share, 1.0 - share)  # stable's, the candidate's (see `routing.weight_of`)
    rules = Rules.of(spec)
    sequential = spec.method is AnalysisMethod.SEQUENTIAL
    totals = (Tallies(runs, width, q), Tallies(runs, width, q))  # a window, or all
    recent = (Tallies(runs, width, q), Tallies(runs, width, q))  # the epoch (sequential)
    kept: list[tuple[Draws, Draws, int]] = []  # fixed: the window's intervals, oldest first
    span = max(1, int(spec.window // interval))
    number = np.ones(runs, np.int64)  # each run's epoch
    expected = [0.0, 0.0]  # the share of the randomly assigned requests each variant was due
    memories = [Memory()] * runs
    unjudged = Verdict(0.0, Result.INCONCLUSIVE, ())
    ramp = Ramp(_RUN, State.RAMPING, share)
    rest = step(Memory(_RUN), unjudged, ramp, rules, 0.0)[0]  # (a row of nothing)
    caught: list[float | None] = [None] * runs
    alive = np.ones(runs, np.bool_)
    share_of_rate = analysis_share(1)  # (the first analysis of a rollout: see analysis_share)
    scope = "total" if sequential else "window"
    z = _least_factor(spec, check_alpha(spec, share_of_rate))
    outcomes = world.outcome_rate is not None  # (without conversions no outcome check fails)

    def fails_on_counts(run: int) -> bool:
        """Whether a check that needs no latency fails in `run`, since the start or lately."""
        found = (
            _sample(totals[0], run, weights[0], lo=None, spec=spec),
            _sample(totals[1], run, weights[1], lo=None, spec=spec),
        )
        if _failing_counts(spec, found, check_alpha(spec, share_of_rate), scope, outcomes):
            return True
        if not sequential:
            return False
        lately = (
            _sample(recent[0], run, weights[0], lo=None, spec=spec),
            _sample(recent[1], run, weights[1], lo=None, spec=spec),
        )
        alpha = check_alpha(spec, share_of_rate, int(number[run]))
        return _failing_counts(spec, lately, alpha, "recent", outcomes)

    for index in range(int(horizon // interval)):
        begin, now = index * interval, (index + 1) * interval
        n, *new = traffic.draw(begin, interval)
        for side in (0, 1):
            totals[side].add(new[side])
            if sequential and index > 0:  # (the first verdict's counts start the first epoch)
                recent[side].add(new[side])
        expected[0] += n * (1.0 - share)
        expected[1] += n * share
        if not sequential:
            kept.append((new[0], new[1], n))
            if len(kept) > span:
                old_stable, old_candidate, old_n = kept.pop(0)
                totals[0].add(old_stable, -1)
                totals[1].add(old_candidate, -1)
                expected[0] -= old_n * (1.0 - share)
                expected[1] -= old_n * share
        stable, candidate = totals
        counts, slower = _beyond(stable, candidate, spec, lo, z)
        lately = np.zeros(runs, np.bool_)
        if sequential:
            late_counts, late_slower = _beyond(*recent, spec, lo, z)
            lately = late_counts | late_slower
            counts |= late_counts
            slower |= late_slower
        judged = alive & (counts | slower | every_round)
        for run in np.flatnonzero(judged):
            if not (every_round or slower[run] or fails_on_counts(run)):
                memories[run] = step(memories[run], unjudged, ramp, rules, now)[0]
                continue
            s = _sample(
                stable,
                run,
                weights[0],
                lo=lo,
                spec=spec,
                ratio=(int(stable.requests[run]), expected[0]),
            )
            c = _sample(
                candidate,
                run,
                weights[1],
                lo=lo,
                spec=spec,
                ratio=(int(candidate.requests[run]), expected[1]),
            )
            late = None
            if sequential and (lately[run] or every_round):
                late = (
                    _sample(recent[0], run, weights[0], lo=lo, spec=spec),
                    _sample(recent[1], run, weights[1], lo=lo, spec=spec),
                    int(number[run]),
                )
            verdict = assess(s, c, spec, now, recent=late, share=share_of_rate)
            memories[run], done = step(memories[run], verdict, ramp, rules, now)
            if done.act is Act.ROLLBACK:
                caught[run], alive[run] = now, False
        for run in np.flatnonzero(alive & ~judged):
            if memories[run] != rest:
                memories[run] = step(memories[run], unjudged, ramp, rules, now)[0]
        if sequential:  # (a full epoch ends after its verdict)
            ended = full(recent[0].requests, recent[1].requests, spec.min_requests)
            if ended.any():
                recent[0].clear(ended)
                recent[1].clear(ended)
                number += ended
        if not alive.any():
            break
    return caught
