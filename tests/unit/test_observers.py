"""Each observer of finished requests on its own, fed outcomes without sockets."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from proxy.analysis.window import LocalObservations, WindowRecorder
from proxy.config.loader import parse_config
from proxy.config.model import Route, Variant
from proxy.dataplane.ejection import Ejections
from proxy.records.request_outcome import CLIENT_CLOSED, Failure, FallbackReason, RequestOutcome
from proxy.routing import Decision, Reason
from proxy.telemetry.metrics import Recorder

T0 = 1_800_000_000.0
DECISION = Decision(Variant.CANDIDATE, Reason.BUCKET, 0.5, None, 10, "u")


def routes(extra: str = "") -> tuple[Route, ...]:
    return parse_config(
        "routes:\n  - name: r\n    match: {path_prefix: /}\n"
        '    stable: {url: "http://127.0.0.1:1"}\n    candidate: {url: "http://127.0.0.1:2"}\n'
        '    cohort: {keys: ["header:U"]}\n' + extra
    ).routes


def outcome(variant: Variant, status: int | None, **fields: Any) -> RequestOutcome:
    return RequestOutcome(
        at=T0, route="r", method="POST", decision=DECISION, variant=variant, status=status, **fields
    )


def test_the_outcome_says_its_code_and_whether_it_failed():
    assert outcome(Variant.STABLE, None).code == CLIENT_CLOSED
    assert not outcome(Variant.STABLE, None).failed  # a client leaving is nobody's failure
    assert outcome(Variant.STABLE, 503).failed and not outcome(Variant.STABLE, 499).failed
    assert outcome(Variant.STABLE, 502, error=Failure.RESET).failed
    assert outcome(Variant.STABLE, 200, candidate_status=503).candidate_failed
    assert outcome(Variant.STABLE, 200, candidate_error=Failure.CONNECT).candidate_failed
    assert not outcome(Variant.STABLE, 200, fallback=FallbackReason.EJECTED).candidate_failed


def test_metrics_count_the_answer_the_fallback_and_the_candidates_failure():
    recorder = Recorder()
    recorder.route("r")
    recorder.record(
        outcome(
            Variant.STABLE, 200, fallback=FallbackReason.CONNECT, candidate_error=Failure.CONNECT
        )
    )
    recorder.record(
        outcome(Variant.STABLE, 200, fallback=FallbackReason.FIVE_XX, candidate_status=503)
    )
    recorder.record(outcome(Variant.CANDIDATE, None))
    counts = recorder.counts("r")
    assert counts["stable"]["2xx"] == 2
    assert counts["candidate"]["5xx"] == 1 and counts["candidate"]["4xx"] == 1  # 499
    assert recorder.route("r")["candidate"].errors["connect"] == 1
    fallbacks = {
        reason: recorder.registry.get_sample_value(
            "grayscale_fallbacks_total", {"route": "r", "reason": reason}
        )
        for reason in ("connect", "5xx", "overloaded", "ejected")
    }
    assert fallbacks == {"connect": 1, "5xx": 1, "overloaded": None, "ejected": None}


def test_metrics_of_a_route_that_left_the_config_are_not_recreated():
    recorder = Recorder()
    recorder.record(outcome(Variant.STABLE, 200))
    assert recorder.counts("r")["stable"]["2xx"] == 0


def analysed() -> tuple[LocalObservations, WindowRecorder]:
    observations = LocalObservations({"r": 60.0})
    windows = WindowRecorder(observations)
    windows.use(routes("    analysis: {window: 60s, latency: duration}\n"))
    return observations, windows


def test_windows_count_errors_and_latency_but_not_what_the_proxy_refused():
    observations, windows = analysed()
    windows.record(outcome(Variant.CANDIDATE, 200, duration=0.1))
    windows.record(outcome(Variant.CANDIDATE, 502, error=Failure.TIMEOUT, duration=5.0))
    windows.record(outcome(Variant.CANDIDATE, None, duration=0.3))  # the client left
    windows.record(outcome(Variant.CANDIDATE, 413, refused=True))
    # assigned to the candidate, answered by stable after the candidate failed: its error
    windows.record(outcome(Variant.STABLE, 200, candidate_error=Failure.CONNECT, duration=0.2))
    stable, candidate = observations.samples("r", T0 + 10)
    assert (candidate.requests, candidate.errors, sum(candidate.latency)) == (4, 2, 0.5)
    assert (stable.requests, stable.errors, sum(stable.latency)) == (0, 0, 0.0)


AT_A_QUARTER = Decision(Variant.CANDIDATE, Reason.BUCKET, 0.25, None, 10, "u")


def assigned(variant: Variant, status: int | None, **fields: Any) -> RequestOutcome:
    """A request assigned to the candidate at a share of 0.25 (weight 0.75)."""
    return RequestOutcome(
        at=T0,
        route="r",
        method="POST",
        decision=AT_A_QUARTER,
        variant=variant,
        status=status,
        **fields,
    )


@pytest.mark.parametrize(
    "fallback",
    [
        {"fallback": FallbackReason.CONNECT, "candidate_error": Failure.CONNECT},
        {"fallback": FallbackReason.FIVE_XX, "candidate_status": 503},
    ],
)
def test_a_fallback_after_the_candidate_failed_is_one_candidate_error_and_nothing_for_stable(
    fallback,
):
    observations, windows = analysed()
    windows.record(assigned(Variant.STABLE, 200, duration=0.2, **fallback))
    stable, candidate = observations.samples("r", T0 + 10)
    assert (candidate.requests, candidate.errors) == (1, 1)
    assert (candidate.weight, candidate.error_weight, candidate.error_weight2) == (
        0.75,
        0.75,
        0.5625,
    )
    assert sum(candidate.latency) == 0.0  # (stable's speed says nothing of the candidate's)
    assert (stable.requests, stable.weight, sum(stable.latency)) == (0, 0.0, 0.0)
    # assigned to the candidate, for the sample-ratio check
    assert (candidate.assigned, candidate.expected, stable.assigned, stable.expected) == (
        1,
        0.25,
        0,
        0.75,
    )


@pytest.mark.parametrize(
    "overload",
    [
        # the candidate's slots full: stable answered in its place
        {"variant": Variant.STABLE, "status": 200, "fallback": FallbackReason.OVERLOADED}
        | {"candidate_error": Failure.OVERLOADED},
        # the candidate's slots full, no fallback: the proxy's own 503
        {"variant": Variant.CANDIDATE, "status": 503, "error": Failure.OVERLOADED},
    ],
)
def test_overload_is_nobodys_failure_counted_as_assigned_and_measured_for_neither(overload):
    observations, windows = analysed()
    variant, status = overload.pop("variant"), overload.pop("status")
    outcome = assigned(variant, status, duration=0.2, **overload)
    assert outcome.overloaded and not outcome.failed and not outcome.candidate_failed
    windows.record(outcome)
    stable, candidate = observations.samples("r", T0 + 10)
    assert (candidate.requests, candidate.errors, stable.requests) == (0, 0, 0)
    assert (candidate.assigned, stable.assigned) == (1, 0)  # (the sample-ratio check sees it)


def test_an_ejected_request_counts_as_assigned_to_the_candidate_and_is_measured_for_neither():
    observations, windows = analysed()
    windows.record(
        assigned(
            Variant.STABLE, 200, duration=0.2, fallback=FallbackReason.EJECTED, candidate_out=True
        )
    )
    windows.record(
        assigned(
            Variant.STABLE, 503, duration=0.2, fallback=FallbackReason.EJECTED, candidate_out=True
        )
    )
    stable, candidate = observations.samples("r", T0 + 10)
    assert (candidate.assigned, candidate.expected) == (2, 0.5)
    assert (stable.assigned, stable.expected) == (0, 1.5)
    assert (stable.requests, candidate.requests) == (0, 0)
    assert (stable.weight, candidate.weight) == (0.0, 0.0)
    assert (sum(stable.latency), sum(candidate.latency)) == (0.0, 0.0)


@pytest.mark.parametrize(
    "decision",
    [
        Decision(Variant.CANDIDATE, Reason.PINNED, 1.0, "staff", None, "u"),
        Decision(Variant.STABLE, Reason.PINNED, 0.0, "staff", None, "u"),
        Decision(Variant.STABLE, Reason.NO_KEY, 0.25),
        Decision(Variant.CANDIDATE, Reason.NO_KEY, 1.0),
        Decision(Variant.CANDIDATE, Reason.ROLLOUT, 1.0, None, None, "u"),
        Decision(Variant.STABLE, Reason.ROLLOUT, 0.0, None, None, "u"),
    ],
)
def test_requests_not_assigned_at_random_are_neither_measured_nor_tested(decision):
    observations, windows = analysed()
    windows.record(
        RequestOutcome(
            at=T0,
            route="r",
            method="POST",
            decision=decision,
            variant=decision.variant,
            status=200,
            duration=0.1,
        )
    )
    for sample in observations.samples("r", T0 + 10):
        assert (sample.requests, sample.weight, sum(sample.latency)) == (0, 0.0, 0.0)
        assert (sample.assigned, sample.expected, sample.users) == (0, 0.0, 0)


@pytest.mark.parametrize(
    ("decision", "counted"),
    [
        (Decision(Variant.STABLE, Reason.BUCKET, 0.0, None, 10, "u"), Variant.STABLE),
        (Decision(Variant.CANDIDATE, Reason.BUCKET, 1.0, None, 10, "u"), Variant.CANDIDATE),
        (Decision(Variant.CANDIDATE, Reason.RANDOM, 1.0, None, 10), Variant.CANDIDATE),
    ],
)
def test_a_random_assignment_at_share_zero_or_one_is_tested_but_not_measured(decision, counted):
    """Nothing to compare with: the other variant gets none of them (and a weight of 0)."""
    observations, windows = analysed()
    windows.record(
        RequestOutcome(
            at=T0,
            route="r",
            method="POST",
            decision=decision,
            variant=decision.variant,
            status=503,
            duration=0.1,
        )
    )
    stable, candidate = observations.samples("r", T0 + 10)
    for sample in (stable, candidate):
        assert (sample.requests, sample.errors, sample.weight) == (0, 0, 0.0)
    seen = stable if counted is Variant.STABLE else candidate
    other = candidate if counted is Variant.STABLE else stable
    assert (seen.assigned, seen.expected, other.assigned, other.expected) == (1, 1.0, 0, 0.0)


def test_windows_ignore_routes_without_analysis():
    observations = LocalObservations({})
    windows = WindowRecorder(observations)
    windows.use(routes())
    windows.record(outcome(Variant.CANDIDATE, 200))  # nothing to feed, nothing raised


@pytest.mark.parametrize(
    ("seen", "ejected"),
    [
        ([outcome(Variant.CANDIDATE, 503)] * 2, True),
        ([outcome(Variant.STABLE, 200, candidate_error=Failure.CONNECT)] * 2, True),
        ([outcome(Variant.CANDIDATE, 503), outcome(Variant.CANDIDATE, 200)] * 2, False),
        ([outcome(Variant.STABLE, 503)] * 2, False),  # stable's failures are not the candidate's
        ([outcome(Variant.CANDIDATE, None)] * 2, False),  # nor are clients that left
        # nor the proxy's own overload answers, with or without a fallback
        ([outcome(Variant.CANDIDATE, 503, error=Failure.OVERLOADED)] * 2, False),
        ([outcome(Variant.STABLE, 200, candidate_error=Failure.OVERLOADED)] * 2, False),
    ],
)
def test_ejection_counts_only_the_candidates_own_failures(seen, ejected):
    ejections = Ejections()
    ejections.use(routes("    ejection: {consecutive_errors: 2, base_time: 30s}\n"))
    for finished in seen:
        ejections.record(finished)
    breaker = ejections.breaker("r")
    assert breaker is not None and breaker.ejected(T0 + 1) is ejected


def test_a_breaker_outlives_a_reload_that_keeps_the_candidate_and_not_one_that_changes_it():
    ejections = Ejections()
    ejections.use(routes("    ejection: {consecutive_errors: 1}\n"))
    first = ejections.breaker("r")
    ejections.use(routes("    ejection: {consecutive_errors: 1}\n    ramp: {base: 0.5}\n"))
    assert ejections.breaker("r") is first
    ejections.use(routes("    ejection: {consecutive_errors: 2}\n"))
    assert ejections.breaker("r") is not first
    ejections.use(routes("    ejection: false\n"))
    assert ejections.breaker("r") is None


def test_observers_not_yet_given_a_config_record_nothing():
    ejections, windows = Ejections(), WindowRecorder(LocalObservations({"r": 60.0}))
    ejections.record(outcome(Variant.CANDIDATE, 503))
    windows.record(outcome(Variant.CANDIDATE, 503))
    assert ejections.breaker("r") is None


def test_a_breaker_made_for_a_config_names_its_route(caplog):
    ejections = Ejections()
    ejections.use(routes("    ejection: {consecutive_errors: 1}\n"))
    with caplog.at_level(logging.WARNING, logger="grayscale.ejection"):
        ejections.record(outcome(Variant.CANDIDATE, 503))
    (record,) = caplog.records
    assert record.__dict__["route"] == "r"


def test_windows_leave_out_a_route_that_has_windows_but_no_analysis_any_more():
    observations = LocalObservations({"r": 60.0})
    windows = WindowRecorder(observations)
    windows.use(routes())  # a reload dropped its analysis; its windows are not yet gone
    windows.record(outcome(Variant.CANDIDATE, 200))
    assert observations.samples("r", T0 + 1)[1].requests == 0


def test_windows_count_a_request_when_it_ends():
    observations, windows = analysed()
    windows.record(outcome(Variant.CANDIDATE, 200, duration=30.0))
    assert observations.samples("r", T0 + 29)[1].requests == 0
    assert observations.samples("r", T0 + 31)[1].requests == 1


def test_windows_on_ttfb_take_the_time_to_first_byte_not_the_duration():
    observations = LocalObservations({"r": 60.0})
    windows = WindowRecorder(observations)
    windows.use(routes("    analysis: {window: 60s, latency: ttfb}\n"))
    windows.record(outcome(Variant.CANDIDATE, 200, duration=9.0, ttfb=0.01))
    expected = LocalObservations({"r": 60.0})
    expected.windows["r"]["candidate"].add(T0 + 9.0, 0.5, False, 0.01)  # (weight 1 - 0.5)
    # (assigned by bucket at share 0.5, and served by the candidate: for the sample-ratio check)
    # (the first request of user "u": a new user too)
    expected.windows["r"]["stable"].expect(T0 + 9.0, 0.5, False, True)
    expected.windows["r"]["candidate"].expect(T0 + 9.0, 0.5, True, True)
    user, new = expected.users["r"].see("u", T0 + 9.0)
    assert user is not None and new
    expected.users["r"].add(user, Variant.CANDIDATE, 0.5, False, False)
    assert observations.samples("r", T0 + 10) == expected.samples("r", T0 + 10)
