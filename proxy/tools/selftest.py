"""`grayscale selftest`: what a route's analysis settings buy, measured before deploying them.

The route's own checks (`assessment.assess`), epochs and decision policy (`policy.step`) judge
seeded simulated traffic (`proxy.tools.selftest_traffic`, judged round by round in
`proxy.tools.selftest_rounds`): equal candidates, to count how often chance alone rolls one
back, and worse ones, to time how soon they are caught: fixed differences (+5 points of errors,
twice as slow, +5 points late in the run) and differences scaled to the route's own limits
(twice the allowed error-rate increase, twice the allowed latency ratio, twice each outcome's
allowed decrease). A difference the route allows, or cannot see, is named with the reason
instead. With `--users-tail` every request is simulated instead (`proxy.tools.trials`: heavy
users need each user's requests), which is slower.

Invariants
- Seeded: the same arguments print the same figures, however many processes share the work.
- Its worker processes end with it, however it ends (they die with their parent).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from proxy.analysis.intervals import wilson
from proxy.app.workers import die_with_parent
from proxy.config.model import AnalysisMethod, AnalysisSpec, OutcomeBasis, Route
from proxy.tools import trials
from proxy.tools.selftest_rounds import simulate
from proxy.tools.selftest_traffic import INCIDENT, MEDIAN, Scenario, World

__all__ = ["World", "report", "scenarios"]  # the command line builds a World and prints the report


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
