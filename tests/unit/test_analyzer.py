"""The analysis loop's decisions, driven round by round with made-up samples."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from proxy.analysis.analyzer import Analyzer
from proxy.analysis.assessment import analysis_share
from proxy.analysis.histogram import SIZE, bucket_of, value_of
from proxy.analysis.sources import Unavailable
from proxy.analysis.verdict import Clustering, Result, Sample
from proxy.config.model import (
    AnalysisMethod,
    AnalysisSpec,
    Cohort,
    Inconclusive,
    KeySource,
    OnError,
    Promotion,
    Ramp,
    Route,
    Source,
    Upstream,
)
from proxy.fleet.member import own_ratio
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import Action, State
from proxy.rollout.store import FileStore, MemoryStore
from proxy.telemetry.metrics import Recorder

T0 = 1_796_083_200.0
SPEC = AnalysisSpec(interval=10.0, window=60.0, min_requests=200, failures_before_rollback=3)
ROUTE = Route(
    name="r",
    path_prefix="/",
    stable=Upstream("http://127.0.0.1:1"),
    candidate=Upstream("http://127.0.0.1:2"),
    cohort=Cohort((KeySource(Source.HEADER, "X-User-Id"),), "s"),
    ramp=Ramp(base=0.1, slope=0.1, per=100.0),
    analysis=SPEC,
)


def good(n: int = 300) -> Sample:
    counts = [0] * SIZE
    counts[bucket_of(0.02)] = n
    return Sample.unweighted(n, 0, counts)


def bad(n: int = 300) -> Sample:
    counts = [0] * SIZE
    counts[bucket_of(0.02)] = n - n // 5
    return Sample.unweighted(n, n // 5, counts)


class FakeSource:
    """Hands out the (stable, candidate) pairs a test sets, or fails as `broken` says; keeps
    the latencies it is told and the routes it was told to restart."""

    def __init__(self) -> None:
        self.pair = (good(), good())
        self.broken: str | None = None
        self.referred: list[tuple[str, float]] = []
        self.counted: list[tuple[str, str]] = []

    async def samples(self, route: str, now: float) -> tuple[Sample, Sample]:
        if self.broken is not None:
            raise Unavailable(self.broken)
        return self.pair

    def refer(self, route: str, seconds: float) -> None:
        self.referred.append((route, seconds))

    def count(self, route: str, run: str) -> None:
        self.counted.append((route, run))


async def make(
    route: Route = ROUTE,
) -> tuple[Analyzer, RolloutController, FakeSource, Recorder, list[Any]]:
    controller = RolloutController(MemoryStore())
    await controller.start([route], T0)
    recorder = Recorder()
    notified: list[Any] = []
    controller.rollback_listeners += [
        recorder.count_rollback,
        lambda r, t, d: notified.append((r.name, t, d)),
    ]
    source = FakeSource()
    return Analyzer([route], controller, source, recorder), controller, source, recorder, notified


async def test_consecutive_failures_roll_back_with_the_verdict():
    analyzer, controller, source, recorder, notified = await make()
    source.pair = (good(), bad())
    for i in range(2):
        verdict = await analyzer.round("r", T0 + 10 * (i + 1))
        assert verdict.result is Result.FAIL
        assert controller.state("r", T0 + 10 * (i + 1)) is not State.ROLLED_BACK
    await analyzer.round("r", T0 + 30)
    assert controller.state("r", T0 + 30) is State.ROLLED_BACK
    transition = controller.rollout("r").last
    assert transition.actor == "analysis"
    assert transition.reason.startswith("analysis: error_rate 0.2 (bound")
    ((name, _, details),) = notified
    assert name == "r" and details["result"] == "fail"
    assert (
        recorder.registry.get_sample_value(
            "grayscale_rollbacks_total", {"route": "r", "trigger": "analysis"}
        )
        == 1
    )
    assert await analyzer.round("r", T0 + 40) is None  # rolled back: nothing left to judge


async def test_failures_must_be_consecutive():
    analyzer, controller, source, _, notified = await make()
    for i, pair in enumerate(
        [(good(), bad()), (good(), bad()), (good(), good()), (good(), bad()), (good(), bad())]
    ):
        source.pair = pair
        await analyzer.round("r", T0 + 10 * (i + 1))
    assert controller.state("r", T0 + 60) is State.RAMPING
    assert analyzer.routes["r"].memory.failures == 2 and not notified


async def test_thin_data_holds_the_ramp_and_a_pass_releases_it():
    analyzer, controller, source, _, _ = await make()
    assert controller.share("r", T0 + 100) == pytest.approx(0.2)
    source.pair = (good(), good(50))
    await analyzer.round("r", T0 + 100)
    assert controller.holding("r")
    assert controller.share("r", T0 + 400) == pytest.approx(0.2)  # frozen while held
    # (enough for an always-valid upper bound of stable's p95 within the data: 300 are not)
    source.pair = (good(1000), good(1000))
    await analyzer.round("r", T0 + 400)
    assert not controller.holding("r")
    assert controller.share("r", T0 + 500) == pytest.approx(0.3)  # 300 s later than planned


async def test_a_failing_verdict_holds_too():
    analyzer, controller, source, _, _ = await make()
    source.pair = (good(), bad())
    await analyzer.round("r", T0 + 100)
    assert controller.holding("r")


async def test_continue_keeps_ramping_on_thin_data():
    route = replace(ROUTE, analysis=replace(SPEC, on_inconclusive=Inconclusive.CONTINUE))
    analyzer, controller, source, _, _ = await make(route)
    source.pair = (good(), good(50))
    await analyzer.round("r", T0 + 100)
    assert not controller.holding("r")


async def test_no_hold_when_the_candidate_gets_no_traffic():
    route = replace(ROUTE, ramp=Ramp(base=0.0))
    analyzer, controller, source, _, _ = await make(route)
    source.pair = (good(), good(0))
    verdict = await analyzer.round("r", T0 + 100)
    assert verdict.result is Result.INCONCLUSIVE
    assert not controller.holding("r")


async def test_status_shows_the_last_verdict():
    analyzer, _, source, _, _ = await make()
    assert (analyzer.status(ROUTE) or {})["last_verdict"] is None
    source.pair = (good(), bad())
    await analyzer.round("r", T0 + 10)
    status = analyzer.status(ROUTE)
    assert status is not None
    assert status["consecutive_failures"] == 1 and status["holding"] is True
    assert status["last_verdict"]["result"] == "fail"
    assert analyzer.status(replace(ROUTE, name="other")) is None


async def test_update_keeps_history_of_unchanged_analyses_only():
    other = replace(ROUTE, name="o")
    analyzer, _, source, _, _ = await make()
    source.pair = (good(), bad())
    await analyzer.round("r", T0 + 10)
    kept = analyzer.routes["r"]
    analyzer.use([ROUTE, other, replace(ROUTE, name="plain", analysis=None)])
    assert analyzer.routes["r"] is kept and kept.memory.failures == 1
    assert set(analyzer.routes) == {"r", "o"}
    analyzer.use([replace(ROUTE, analysis=replace(SPEC, min_requests=50))])
    assert analyzer.routes["r"] is not kept and analyzer.routes["r"].memory.failures == 0
    assert set(analyzer.routes) == {"r"}


def test_each_analysis_of_a_rollout_spends_its_own_share_of_the_error_rate():
    assert [analysis_share(n) for n in (1, 2, 3)] == [1 / 2, 1 / 6, 1 / 12]
    assert sum(analysis_share(n) for n in range(1, 10_000)) < 1.0


async def test_a_restarted_process_judges_as_the_next_analysis_with_a_smaller_share(tmp_path):
    sequential = replace(ROUTE, analysis=replace(SPEC, method=AnalysisMethod.SEQUENTIAL))
    store = tmp_path / "state.json"
    numbers, bounds = [], []
    for _ in range(3):  # a process, then two restarts on the same state file
        controller = RolloutController(FileStore(store))
        await controller.start([sequential], T0)
        source = FakeSource()
        source.pair = (Sample.unweighted(1000, 10), Sample.unweighted(1000, 30))
        analyzer = Analyzer([sequential], controller, source, Recorder())
        verdict = await analyzer.round("r", T0 + 10)
        assert verdict is not None
        numbers.append(analyzer.status(sequential)["analysis_number"])  # type: ignore[index]
        bounds.append(verdict.checks[0].bound)
        await analyzer.round("r", T0 + 20)  # the same analysis goes on with its number
        assert controller.rollout("r").judged == numbers[-1]
    assert numbers == [1, 2, 3]
    for number, bound in zip(numbers, bounds, strict=True):
        # the analysis's share, split between the two checks, half of it on the total
        alpha = 0.05 * analysis_share(number) / 2 * 0.5
        assert bound == pytest.approx(always_valid_rate_bound(10, 30, 1000, 200, alpha))


def always_valid_rate_bound(es: int, ec: int, n: int, n0: int, alpha: float) -> float:
    """The always-valid lower bound of p_c - p_s, n requests of weight 1 each, written out: each
    variance its own or, if more, that of its n requests with two errors and two successes added
    (Agresti and Coull), the normal mixture's factor at information (vs + vc) / (n0 · variance),
    and Bernstein's correction max(p_s, 1 - p_c) / n."""
    ps, pc = es / n, ec / n
    ts, tc = (es + 2) / (n + 4), (ec + 2) / (n + 4)
    vs = max(ps * (1 - ps), ts * (1 - ts))
    vc = max(pc * (1 - pc), tc * (1 - tc))
    variance = (vs + vc) / n
    x = (vs + vc) / (n0 * variance)
    z = math.sqrt((1 + 1 / x) * (2 * math.log(1 / alpha) + math.log1p(x)))
    return pc - ps - (z * math.sqrt(variance) + z * z * max(ps, 1 - pc) / n / 6)


async def test_a_round_tells_the_source_stables_latency_quantile():
    analyzer, _, source, _, _ = await make()
    await analyzer.round("r", T0 + 10)
    assert source.referred == [("r", value_of(bucket_of(0.02)))]
    source.pair = (good(), good(50))  # (too few: the latency check has no quantile to tell)
    await analyzer.round("r", T0 + 20)
    assert source.referred == [("r", value_of(bucket_of(0.02)))]


async def test_a_new_candidate_is_a_first_analysis_again():
    sequential = replace(ROUTE, analysis=replace(SPEC, method=AnalysisMethod.SEQUENTIAL))
    analyzer, controller, _, _, _ = await make(sequential)
    await analyzer.round("r", T0 + 10)
    assert analyzer.status(sequential)["analysis_number"] == 1  # type: ignore[index]
    candidate = replace(sequential, candidate=Upstream("http://127.0.0.1:3"))
    await controller.reconcile([candidate], T0 + 11)
    analyzer.use([candidate])
    await analyzer.round("r", T0 + 20)
    assert controller.rollout("r").judged == 1
    assert analyzer.status(candidate)["analysis_number"] == 1  # type: ignore[index]


def test_a_deciders_design_effects_are_scaled_to_the_fleets_share_of_each_user():
    # The decider saw a quarter of the fleet's weight: a user's requests spread over four
    # replicas put a quarter of them here, so the excess that clustering adds is four times it.
    own = replace(
        Sample.unweighted(100, 5),
        assigned=90,
        expected=88.5,
        users=40,
        users_expected=41.0,
        design_effect=1.5,
        clustering=Clustering(errors=1.5, latency=1.25),
    )
    pooled = Sample.unweighted(400, 20)
    judged = own_ratio(pooled, own)
    assert judged.clustering == Clustering(errors=3.0, latency=2.0)
    assert (judged.assigned, judged.expected, judged.users, judged.users_expected) == (
        90,
        88.5,
        40,
        41.0,
    )
    assert judged.design_effect == 1.5 and judged.requests == 400 and judged.errors == 20
    # A decider that saw it all (or more than the pool, before a flush) keeps its own.
    assert own_ratio(own, own).clustering == own.clustering
    assert own_ratio(Sample.unweighted(50, 1), own).clustering == own.clustering


def errors_of(n: int, errors: int) -> Sample:
    counts = [0] * SIZE
    counts[bucket_of(0.02)] = n - errors
    return Sample.unweighted(n, errors, counts)


async def test_a_suspect_candidate_holds_the_ramp_even_under_continue():
    route = replace(ROUTE, analysis=replace(SPEC, on_inconclusive=Inconclusive.CONTINUE))
    analyzer, controller, source, _, _ = await make(route)
    source.pair = (good(), errors_of(300, 6))  # 2 % against none: looks worse, not proven
    verdict = await analyzer.round("r", T0 + 100)
    assert verdict is not None and verdict.result is Result.SUSPECT
    assert controller.holding("r")
    status = analyzer.status(route) or {}
    assert (status["action"], status["why"]) == (
        "hold",
        "suspect: the candidate looks worse than allowed",
    )


async def test_rounds_that_cannot_be_measured_hold_then_follow_on_error():
    rolling = replace(
        ROUTE, analysis=replace(SPEC, max_errors_in_a_row=2, on_error=OnError.ROLLBACK)
    )
    analyzer, controller, source, recorder, notified = await make(rolling)
    source.broken = "redis at 127.0.0.1:6379: Connection refused"
    first = await analyzer.round("r", T0 + 10)
    assert first is not None and first.result is Result.ERROR and first.checks == ()
    assert first.note == "cannot read the observations: redis at 127.0.0.1:6379: Connection refused"
    assert controller.holding("r") and controller.state("r", T0 + 10) is State.RAMPING
    assert (
        recorder.registry.get_sample_value("grayscale_analysis_errors_in_a_row", {"route": "r"})
        == 1
    )
    await analyzer.round("r", T0 + 20)
    assert controller.state("r", T0 + 20) is State.ROLLED_BACK
    assert controller.rollout("r").last.reason == (
        "analysis: 2 verdicts in a row could not be measured (on_error: rollback)"
    )
    assert len(notified) == 1


async def test_on_error_hold_keeps_holding_loudly_and_a_measured_verdict_ends_the_row():
    analyzer, controller, source, recorder, _ = await make()  # (default: 4, then hold)
    source.broken = "down"
    for i in range(5):
        await analyzer.round("r", T0 + 10 * (i + 1))
    status = analyzer.status(ROUTE) or {}
    assert (status["errors_in_a_row"], status["max_errors_in_a_row"], status["on_error"]) == (
        5,
        4,
        "hold",
    )
    assert status["alarm"] is True and controller.holding("r")
    assert controller.state("r", T0 + 50) is State.RAMPING
    assert (
        recorder.registry.get_sample_value("grayscale_analysis_errors_in_a_row", {"route": "r"})
        == 5
    )
    source.broken, source.pair = None, (good(1000), good(1000))
    verdict = await analyzer.round("r", T0 + 60)
    assert verdict is not None and verdict.result is Result.PASS
    status = analyzer.status(ROUTE) or {}
    assert status["errors_in_a_row"] == 0 and status["alarm"] is False
    assert not controller.holding("r")


async def test_a_rollback_ends_the_run_and_a_resume_starts_a_new_one_from_the_base():
    sequential = replace(ROUTE, analysis=replace(SPEC, method=AnalysisMethod.SEQUENTIAL))
    analyzer, controller, source, _, _ = await make(sequential)
    assert controller.share("r", T0 + 200) == pytest.approx(0.3)
    source.pair = (good(), bad())
    for at in (T0 + 200, T0 + 210, T0 + 220):
        await analyzer.round("r", at)
    assert controller.state("r", T0 + 220) is State.ROLLED_BACK
    assert await analyzer.round("r", T0 + 230) is None
    # (the run is over; its counts stay to be seen until a new run begins)
    assert analyzer.routes["r"].memory.run is None
    assert {run for _, run in source.counted} == {controller.run("r")}  # (run 1 only)
    outcome = await controller.act("r", Action.RESUME, T0 + 300, actor="operator")
    assert outcome.transition.reason == (
        "run 2 of this candidate, from the ramp's base, judged on fresh counts"
    )
    assert controller.share("r", T0 + 300) == pytest.approx(0.1)  # the base, not 0.3
    assert controller.rollout("r").judged == 0
    source.pair = (good(1000), good(1000))
    await analyzer.round("r", T0 + 310)
    status = analyzer.status(sequential) or {}
    assert status["analysis_number"] == 1 and status["consecutive_failures"] == 0
    assert analyzer.routes["r"].memory.run == controller.run("r")
    assert source.counted[-1] == ("r", controller.run("r"))  # (its own requests: run 2's)
    assert controller.run("r").endswith("@2")


async def test_resume_keep_share_continues_where_it_stopped_on_fresh_counts():
    analyzer, controller, source, _, _ = await make()
    source.pair = (good(), bad())
    for at in (T0 + 200, T0 + 210, T0 + 220):
        await analyzer.round("r", at)
    assert controller.state("r", T0 + 220) is State.ROLLED_BACK
    outcome = await controller.act("r", Action.RESUME, T0 + 300, actor="operator", keep_share=True)
    assert outcome.transition.reason == (
        "run 2 of this candidate, where it stopped, judged on fresh counts"
    )
    assert controller.share("r", T0 + 300) == pytest.approx(0.3)
    source.pair = (good(), bad())
    await analyzer.round("r", T0 + 310)  # a new run: the row of failures starts at 1
    assert (analyzer.status(ROUTE) or {})["consecutive_failures"] == 1
    assert source.counted[-1] == ("r", controller.run("r")) and controller.run("r").endswith("@2")


async def test_a_passing_streak_belongs_to_one_run():
    at_max = replace(ROUTE, ramp=Ramp(base=0.5, max=0.5), promote=Promotion(after=30.0))
    analyzer, controller, source, _, _ = await make(at_max)
    source.pair = (good(1000), good(1000))
    await analyzer.round("r", T0 + 10)
    assert (analyzer.status(at_max) or {})["promotes_at"] == T0 + 40
    await controller.act("r", Action.ROLLBACK, T0 + 15, actor="operator")
    await controller.act("r", Action.RESUME, T0 + 16, actor="operator")
    await analyzer.round("r", T0 + 45)  # passes, but the streak begins anew with this run
    assert controller.state("r", T0 + 45) is State.COMPLETE
    assert (analyzer.status(at_max) or {})["promotes_at"] == T0 + 75
    await analyzer.round("r", T0 + 75)
    assert controller.state("r", T0 + 75) is State.PROMOTED
