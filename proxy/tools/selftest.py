"""`grayscale selftest`: what a route's analysis settings buy, measured before deploying them.

The route's own checks (`verdict.assess`), epochs and decision policy (`policy.step`) judge
seeded simulated traffic: equal candidates, to count how often chance alone rolls one back, and
worse ones, to time how soon they are caught: fixed differences (+5 points of errors, twice as
slow, +5 points late in the run) and differences scaled to the route's own limits (twice the
allowed error-rate increase, twice the allowed latency ratio, twice each outcome's allowed
decrease). A difference the route allows, or cannot see, is named with the reason instead.

How it runs in seconds. The runs of a scenario are simulated side by side, one row of arrays a
run: each interval's requests are drawn in bulk (the variant by a draw at the share, errors,
log-normal latencies into the analysis's latency buckets, conversions). A round in which no
check of a run can fail (`_beyond`: its estimates, less what every bound takes off at the least,
are within their limits, since the start and in the current epoch; then the checks that need no
latency, made for real) steps the policy on an inconclusive verdict, which for a rollback is the
same as any word but fail: the row of failures ends. Everywhere else the real `assess` takes
the verdict. `every_round=True` takes it
at every round instead, and a test finds the same rollback times both ways. With `--users-tail`
every request is simulated instead (`proxy.tools.trials`: heavy users need each user's
requests), which is slower.

Invariants
- Seeded: the same arguments print the same figures, however many processes share the work.
- A window (`method: fixed`) is the latest whole intervals that fit in `window`.
- Its worker processes end with it, however it ends (they die with their parent).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from proxy.analysis.epochs import full
from proxy.analysis.histogram import BOUNDS, SIZE, bucket_of, value_of
from proxy.analysis.policy import Act, Memory, Ramp, Rules, step
from proxy.analysis.sequential import z_always
from proxy.analysis.verdict import (
    Bounds,
    Moments,
    Result,
    Sample,
    Verdict,
    analysis_share,
    assess,
    check_alpha,
    error_rate_check,
    outcome_check,
    wilson,
)
from proxy.app.workers import die_with_parent
from proxy.config.model import AnalysisMethod, AnalysisSpec, OutcomeBasis, Route
from proxy.rollout.machine import State
from proxy.tools import trials

ERROR_RATE = 0.01  # both variants' errors when equal
MEDIAN = 0.05  # seconds: the latency's median (log-normal)
SIGMA = 0.5  # of the latency's logarithm
INCIDENT = 600.0  # seconds that an incident (`World.incident`) lasts, a third into each run
_EPS = 1e-9  # (estimates this close to a limit are judged: no rounding hides a failure)
_RUN = "selftest"  # (every run is one rollout run of its own)
_BOUNDS = np.array(BOUNDS)
_VALUES = np.array([value_of(i) for i in range(SIZE)])

Ints = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class World:
    """What every scenario's traffic shares: requests a second (both variants), the candidate's
    share, both variants' error rate, an incident on both (its error rate, for `INCIDENT`
    seconds from a third into each run), the chance that a request converts (for the outcome
    checks `per: request`), and heavy users (Pareto shape, how many)."""

    rate: float = 10.0
    share: float = 0.1
    error_rate: float = ERROR_RATE
    incident: float | None = None
    outcome_rate: float | None = None
    users_tail: float | None = None
    users: int = 1000


@dataclass(frozen=True, slots=True)
class Scenario:
    """How the candidate differs from stable, from `onset` seconds into the run on: more
    errors, slower, fewer conversions (an absolute fall of their rate). `unseen` says why the
    route cannot catch it, if it cannot (then it is not simulated)."""

    name: str
    extra_errors: float = 0.0
    slowdown: float = 1.0
    conversion_drop: float = 0.0
    onset: float = 0.0
    unseen: str | None = None


class _Draws(NamedTuple):
    """One interval's requests of one variant in every run: how many, errors, conversions, and
    each successful request's run and latency bucket (within the band)."""

    requests: Ints
    errors: Ints
    conversions: Ints
    rows: Ints
    buckets: Ints


class _Tallies:
    """One variant's counts in every run (over a window, since the start, or in the current
    epoch): requests, errors, conversions and latency buckets (within the band of buckets the
    simulation can reach), with the bucket that holds each run's `q` level of latencies kept as
    draws come and go (`histogram.level_index`, run by run: no pass over every bucket)."""

    def __init__(self, runs: int, width: int, q: float):
        self.requests: Ints = np.zeros(runs, np.int64)
        self.errors: Ints = np.zeros(runs, np.int64)
        self.conversions: Ints = np.zeros(runs, np.int64)
        self.latency: Ints = np.zeros((runs, width), np.int64)
        self.latencies: Ints = np.zeros(runs, np.int64)
        self._index: Ints = np.zeros(runs, np.int64)
        self._below: Ints = np.zeros(runs, np.int64)  # latencies in buckets below `_index`
        self._q = q
        self._runs = np.arange(runs)

    def add(self, draws: _Draws, sign: int = 1) -> None:
        """Count `draws` in (or, with `sign` -1, out of) every run."""
        runs = len(self.requests)
        self.requests += sign * draws.requests
        self.errors += sign * draws.errors
        self.conversions += sign * draws.conversions
        np.add.at(self.latency, (draws.rows, draws.buckets), sign)
        self.latencies += sign * np.bincount(draws.rows, minlength=runs)
        lower = draws.buckets < self._index[draws.rows]
        self._below += sign * np.bincount(draws.rows[lower], minlength=runs)
        target = self._q * self.latencies * (1.0 - 1e-12)
        last = self.latency.shape[1] - 1
        while True:  # (the first bucket whose running count reaches the target)
            up = (self._below + self.latency[self._runs, self._index] < target) & (
                self._index < last
            )
            if not up.any():
                break
            self._below[up] += self.latency[up, self._index[up]]
            self._index[up] += 1
        while True:
            down = (self._below >= target) & (self._index > 0)
            if not down.any():
                break
            self._index[down] -= 1
            self._below[down] -= self.latency[down, self._index[down]]

    def clear(self, rows: NDArray[np.bool_]) -> None:
        """Start `rows` anew (an epoch that ended)."""
        for counts in (self.requests, self.errors, self.conversions, self.latencies):
            counts[rows] = 0
        self.latency[rows] = 0
        self._index[rows] = self._below[rows] = 0

    @property
    def level(self) -> Ints:
        """Each run's bucket (within the band) holding the `q` level of its latencies; -1
        without latencies."""
        return np.where(self.latencies > 0, self._index, -1)


def _band(scenario: Scenario) -> tuple[int, int]:
    """The first and last latency bucket a draw can reach (beyond 7 sigma: never)."""
    reach = math.exp(7.0 * SIGMA)
    low = MEDIAN / reach
    high = MEDIAN * max(scenario.slowdown, 1.0) * reach
    return bucket_of(low), min(bucket_of(high), SIZE - 1)


def _beyond(
    s: _Tallies, c: _Tallies, spec: AnalysisSpec, lo: int, z: float
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
    t: _Tallies,
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


class _Traffic:
    """Each interval's draws of a scenario, for every run."""

    def __init__(self, world: World, scenario: Scenario, runs: int, seed: int, horizon: float):
        self._rng = np.random.default_rng(seed)
        self._world, self._scenario, self._runs = world, scenario, runs
        self.lo, self.hi = _band(scenario)
        self._incident = (horizon / 3.0, horizon / 3.0 + INCIDENT)
        self._carry = 0.0

    def draw(self, begin: float, interval: float) -> tuple[int, _Draws, _Draws]:
        """How many requests both variants had in the interval from `begin` (the same in every
        run), and stable's and the candidate's draws."""
        world, scenario, rng, runs = self._world, self._scenario, self._rng, self._runs
        wanted = world.rate * interval + self._carry
        n = int(wanted)
        self._carry = wanted - n
        to_candidate = rng.binomial(n, world.share, runs)
        base = world.error_rate
        if world.incident is not None and self._incident[0] <= begin < self._incident[1]:
            base = world.incident
        changed = begin >= scenario.onset
        found = []
        for side, requests in enumerate((n - to_candidate, to_candidate)):
            worse = side == 1 and changed
            error_rate = min(1.0, base + (scenario.extra_errors if worse else 0.0))
            errors = rng.binomial(requests, error_rate)
            fine = requests - errors
            slowdown = scenario.slowdown if worse else 1.0
            drawn = MEDIAN * slowdown * np.exp(SIGMA * rng.standard_normal(int(fine.sum())))
            buckets = np.clip(np.searchsorted(_BOUNDS, drawn, side="left"), self.lo, self.hi)
            conversions = np.zeros(runs, np.int64)
            if world.outcome_rate is not None:
                chance = world.outcome_rate - (scenario.conversion_drop if worse else 0.0)
                conversions = rng.binomial(requests, max(chance, 0.0))
            rows = np.repeat(np.arange(runs), fine)
            found.append(_Draws(requests, errors, conversions, rows, buckets - self.lo))
        return n, found[0], found[1]


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
    traffic = _Traffic(world, scenario, runs, seed, horizon)
    lo, width = traffic.lo, traffic.hi - traffic.lo + 1
    q, interval, share = spec.latency_quantile, spec.interval, world.share
    weights = (share, 1.0 - share)  # stable's, the candidate's (see `routing.weight_of`)
    rules = Rules.of(spec)
    sequential = spec.method is AnalysisMethod.SEQUENTIAL
    totals = (_Tallies(runs, width, q), _Tallies(runs, width, q))  # a window, or all
    recent = (_Tallies(runs, width, q), _Tallies(runs, width, q))  # the epoch (sequential)
    kept: list[tuple[_Draws, _Draws, int]] = []  # fixed: the window's intervals, oldest first
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


def _trial(
    spec: AnalysisSpec, world: World, scenario: Scenario, hours: float, seed: int
) -> float | None:
    """One run with every request simulated (heavy users): `trials.run`."""
    assert world.users_tail is not None
    regime = trials.Regime(
        scenario.name,
        rate=world.rate,
        hours=hours,
        share=world.share,
        users=world.users,
        tail=world.users_tail,
        error_rate=world.error_rate,
        incident=None
        if world.incident is None
        else trials.Incident(hours * 1200.0, hours * 1200.0 + INCIDENT, world.incident),
        extra_errors=scenario.extra_errors,
        slowdown=scenario.slowdown,
        onset=scenario.onset,
        conversion=world.outcome_rate,
        conversion_drop=0.0
        if not world.outcome_rate
        else scenario.conversion_drop / world.outcome_rate,
        spec=spec,
    )
    return trials.run(regime, seed)


def scenarios(spec: AnalysisSpec, world: World, horizon: float) -> list[Scenario]:
    """The scenarios a route is tested on: equal first, then the fixed and the scaled ones."""
    errors, ratio = spec.max_error_rate_increase, spec.max_latency_ratio
    found = [
        Scenario("equal candidates (A/A)"),
        Scenario(
            "+5 points of errors",
            extra_errors=0.05,
            unseen=None if errors < 0.05 else f"within the allowed increase of {errors:g}",
        ),
        Scenario(
            f"+{200 * errors:g} points of errors (2x the allowed)",
            extra_errors=2.0 * errors,
            unseen=None if errors > 0 else "max_error_rate_increase is 0: see +5 points",
        ),
        Scenario(
            "2x slower",
            slowdown=2.0,
            unseen=None if ratio < 2.0 else f"within the allowed ratio of {ratio:g}",
        ),
        Scenario(f"{2 * ratio:g}x slower (2x the allowed ratio)", slowdown=2.0 * ratio),
        Scenario(
            f"+5 points of errors from {_duration(horizon / 2)} in (times since then)",
            extra_errors=0.05,
            onset=horizon / 2,
            unseen=None if errors < 0.05 else f"within the allowed increase of {errors:g}",
        ),
    ]
    for check in spec.outcomes:
        name = f"{check.name} falls by 2x the allowed"
        if check.per is not OutcomeBasis.REQUEST:
            found.append(Scenario(name, unseen="per: outcome values are not simulated"))
            continue
        if world.outcome_rate is None:
            found.append(Scenario(name, unseen="give --outcome-rate to simulate conversions"))
            continue
        drop = 2.0 * check.max_decrease * (world.outcome_rate if check.relative else 1.0)
        unseen = None
        if check.max_decrease <= 0:
            unseen = "max_decrease is 0: no multiple of it"
        elif drop >= world.outcome_rate:
            unseen = f"2x the allowed is more than the {world.outcome_rate:g} rate itself"
        found.append(Scenario(name, conversion_drop=drop, unseen=unseen))
    return [_visible(s, spec, world, horizon) for s in found]


def _visible(scenario: Scenario, spec: AnalysisSpec, world: World, horizon: float) -> Scenario:
    """`scenario`, or why the route's analysis cannot see it at this traffic."""
    if scenario.unseen is not None:
        return scenario
    per_second = world.rate * min(world.share, 1.0 - world.share)
    if spec.method is AnalysisMethod.FIXED:
        held = per_second * spec.window
        if held < spec.min_requests:
            why = (
                f"a {spec.window:g}s window holds ~{held:.0f} requests of the smaller variant, "
                f"fewer than min_requests {spec.min_requests}: every verdict is inconclusive"
            )
            return replace(scenario, unseen=why)
    seen = per_second * (horizon - scenario.onset)
    if seen < spec.min_requests:
        why = (
            f"~{seen:.0f} requests of the smaller variant in the run, fewer than "
            f"min_requests {spec.min_requests}"
        )
        return replace(scenario, unseen=why)
    return scenario


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _delays(found: Sequence[float | None], horizon: float) -> str:
    caught = sorted(s for s in found if s is not None)
    if not caught:
        return f"never caught within {_duration(horizon)} ({len(found)} runs)"
    median = statistics.median(caught)
    p90 = caught[min(len(caught) - 1, math.ceil(0.9 * len(caught)) - 1)]
    return (
        f"rolled back in median {_duration(median)}, p90 {_duration(p90)} "
        f"({len(caught)} of {len(found)} within {_duration(horizon)})"
    )


def _simulated(task: tuple[AnalysisSpec, World, Scenario, float, int, int]) -> list[float | None]:
    spec, world, scenario, horizon, runs, seed = task
    if world.users_tail is not None:
        return [_trial(spec, world, scenario, horizon / 3600.0, seed + run) for run in range(runs)]
    return simulate(spec, world, scenario, horizon=horizon, runs=runs, seed=seed)


def _worker(parent: int) -> None:
    """A worker process: it ends when the command (`parent`) does, however the command ends,
    even if that was before this worker asked to."""
    die_with_parent()
    if os.getppid() != parent:  # (gone before the kernel was asked to tell: end now)
        os._exit(1)


def report(
    route: Route,
    world: World,
    *,
    runs: int,
    hours: float,
    seed: int = 0,
    workers: int | None = None,
) -> str:
    """The figures for one route's analysis (it must have one), its scenarios simulated in
    `workers` processes (default: one a core, at most one a scenario; 1: in this one)."""
    spec = route.analysis
    assert spec is not None
    horizon = hours * 3600.0
    chosen = scenarios(spec, world, horizon)
    simulated = [s for s in chosen if s.unseen is None]
    # (with heavy users, a task a run: each is long; the seeds are the same either way)
    split = world.users_tail is not None
    tasks = [
        (spec, world, s, horizon, 1 if split else runs, 1000 * i + (run if split else 0) + seed)
        for i, s in enumerate(simulated)
        for run in (range(runs) if split else (0,))
    ]
    count = workers or min(len(tasks), os.cpu_count() or 1)
    if count <= 1 or len(tasks) <= 1:  # (nothing to share: no processes to start)
        parts = [_simulated(task) for task in tasks]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            count, mp_context=context, initializer=_worker, initargs=(os.getpid(),)
        ) as pool:
            parts = list(pool.map(_simulated, tasks))
    each = runs if split else 1  # tasks a scenario
    per = {
        s: [t for part in parts[i * each : (i + 1) * each] for t in part]
        for i, s in enumerate(simulated)
    }
    lines = [
        f"route {route.name}: {spec.method.value} analysis every {spec.interval:g}s, "
        f"min_requests {spec.min_requests}, confidence {spec.confidence:.0%}, "
        f"{spec.failures_before_rollback} failures to roll back",
        f"  traffic: {world.rate:g} requests/s, {world.share:.0%} to the candidate, "
        f"{world.error_rate:.0%} errors, median latency {MEDIAN * 1000:.0f} ms"
        + _regimes(world)
        + f"; {runs} seeded runs each",
    ]
    for scenario in chosen:
        if scenario.unseen is not None:
            what = "never judged" if scenario is chosen[0] else "cannot be caught"
            lines.append(f"  {scenario.name}: {what}: {scenario.unseen}")
        elif scenario.name.startswith("equal"):
            false = sum(t is not None for t in per[scenario])
            low, high = wilson(false, runs, 1.96)
            lines.append(
                f"  {scenario.name}: {false} of {runs} rolled back within {_duration(horizon)}: "
                f"{false / runs:.1%} (95 % interval {low:.1%} to {high:.1%})"
            )
        else:
            since = [None if t is None else t - scenario.onset for t in per[scenario]]
            lines.append(f"  {scenario.name}: " + _delays(since, horizon - scenario.onset))
    if spec.metrics:
        names = ", ".join(metric.name for metric in spec.metrics)
        lines.append(
            f"  not simulated: the custom metric checks ({names}), whose values Prometheus has"
        )
    return "\n".join(lines)


def _regimes(world: World) -> str:
    parts = []
    if world.incident is not None:
        parts.append(f"an incident on both ({world.incident:.0%} errors, {INCIDENT / 60:g} min)")
    if world.outcome_rate is not None:
        parts.append(f"{world.outcome_rate:g} conversions a request")
    if world.users_tail is not None:
        parts.append(
            f"{world.users} users of Pareto({world.users_tail:g}) rates (every request simulated)"
        )
    return "".join(f", {part}" for part in parts)
