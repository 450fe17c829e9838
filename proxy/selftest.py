"""`grayscale selftest`: what a route's analysis settings buy, measured before deploying them.

The route's own analysis (the real windows, checks and failure count, on a simulated clock)
judges simulated traffic: equal candidates, to count how often chance alone rolls one back, and
candidates with 5 more points of errors or twice as slow, to time how soon they are caught.
Seeded: the same arguments print the same figures.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from proxy.analysis.epochs import Epochs
from proxy.analysis.verdict import Result, analysis_share, assess, wilson
from proxy.analysis.window import Window
from proxy.config.model import AnalysisMethod, AnalysisSpec, Route

ERROR_RATE = 0.01  # both variants' errors when equal
MEDIAN = 0.05  # seconds: the latency's median (log-normal, sigma 0.5)


@dataclass(frozen=True, slots=True)
class Traffic:
    """One variant's simulated requests: how many a second, how many fail and how slow from
    `onset` seconds into the rollout on (before it, as many as stable, as fast)."""

    rate: float
    error_rate: float = ERROR_RATE
    slowdown: float = 1.0
    onset: float = 0.0


def seconds_to_roll_back(
    spec: AnalysisSpec, stable: Traffic, candidate: Traffic, horizon: float, seed: int
) -> float | None:
    """When the analysis rolls the candidate back (seconds into the rollout), or None if it
    does not within `horizon`."""
    rng = random.Random(seed)
    span = math.inf if spec.method is AnalysisMethod.SEQUENTIAL else spec.window
    windows = (Window(span), Window(span))
    epochs = Epochs() if spec.method is AnalysisMethod.SEQUENTIAL else None
    carry = [0.0, 0.0]
    failures = 0
    for index in range(int(horizon // spec.interval)):
        start = index * spec.interval
        for side, (window, traffic) in enumerate(zip(windows, (stable, candidate), strict=True)):
            wanted = traffic.rate * spec.interval + carry[side]
            n = int(wanted)
            carry[side] = wanted - n
            changed = start >= traffic.onset
            error_rate = traffic.error_rate if changed else ERROR_RATE
            slowdown = traffic.slowdown if changed else 1.0
            for i in range(n):
                failed = rng.random() < error_rate
                latency = slowdown * MEDIAN * math.exp(0.5 * rng.gauss())  # log-normal
                window.add(start + spec.interval * i / n, 1.0, failed, None if failed else latency)
        now = start + spec.interval
        stable_sample, candidate_sample = windows[0].sample(now), windows[1].sample(now)
        recent = None
        if epochs is not None:
            recent = epochs.recent(stable_sample, candidate_sample, spec.min_requests)
        # (the first analysis of a rollout: half the error rate; see analysis_share)
        verdict = assess(
            stable_sample, candidate_sample, spec, now, recent=recent, share=analysis_share(1)
        )
        failures = failures + 1 if verdict.result is Result.FAIL else 0
        if failures >= spec.failures_before_rollback:
            return now
    return None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _delays(found: list[float | None], horizon: float) -> str:
    caught = sorted(s for s in found if s is not None)
    if not caught:
        return f"never caught within {_duration(horizon)} ({len(found)} runs)"
    median = statistics.median(caught)
    p90 = caught[min(len(caught) - 1, math.ceil(0.9 * len(caught)) - 1)]
    return (
        f"rolled back in median {_duration(median)}, p90 {_duration(p90)} "
        f"({len(caught)} of {len(found)} within {_duration(horizon)})"
    )


def report(
    route: Route,
    *,
    rate: float,
    share: float,
    runs: int,
    hours: float,
    seed: int = 0,
    workers: int | None = None,
) -> str:
    """The figures for one route's analysis (it must have one), simulated in `workers`
    processes (default: one a core; 1: in this one)."""
    spec = route.analysis
    assert spec is not None
    horizon = hours * 3600.0
    stable = Traffic(rate * (1.0 - share))
    onset = horizon / 2
    scenarios = (
        Traffic(rate * share),  # equal (A/A)
        Traffic(rate * share, error_rate=ERROR_RATE + 0.05),
        Traffic(rate * share, slowdown=2.0),
        Traffic(rate * share, error_rate=ERROR_RATE + 0.05, onset=onset),
    )
    tasks = [(spec, stable, c, horizon, seed + run) for c in scenarios for run in range(runs)]
    if workers == 1:
        found = list(itertools.starmap(seconds_to_roll_back, tasks))
    else:  # (seeded per run: the same figures however many processes share them)
        with ProcessPoolExecutor(workers) as pool:
            found = list(pool.map(seconds_to_roll_back, *zip(*tasks, strict=True)))
    per = {c: found[i * runs : (i + 1) * runs] for i, c in enumerate(scenarios)}
    false = sum(t is not None for t in per[scenarios[0]])
    low, high = wilson(false, runs, 1.96)

    def delays(candidate: Traffic) -> str:
        since = [None if t is None else t - candidate.onset for t in per[candidate]]
        return _delays(since, horizon - candidate.onset)

    lines = [
        f"route {route.name}: {spec.method.value} analysis every {spec.interval:g}s, "
        f"min_requests {spec.min_requests}, confidence {spec.confidence:.0%}, "
        f"{spec.failures_before_rollback} failures to roll back",
        f"  traffic: {rate:g} requests/s, {share:.0%} to the candidate, 1 % errors, "
        f"median latency {MEDIAN * 1000:.0f} ms; {runs} seeded runs each",
        f"  equal candidates (A/A): {false} of {runs} rolled back within {_duration(horizon)}: "
        f"{false / runs:.1%} (95 % interval {low:.1%} to {high:.1%})",
        "  +5 points of errors: " + delays(scenarios[1]),
        "  2x slower: " + delays(scenarios[2]),
        f"  +5 points of errors from {_duration(onset)} in (times since then): "
        + delays(scenarios[3]),
    ]
    if spec.metrics:
        names = ", ".join(metric.name for metric in spec.metrics)
        lines.append(
            f"  not simulated: the custom metric checks ({names}), whose values Prometheus has"
        )
    return "\n".join(lines)
