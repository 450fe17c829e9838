"""The per-request counts and how they are exposed to Prometheus."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config.loader import parse_config
from proxy.config.model import Route, Variant
from proxy.records.request_outcome import Failure, FallbackReason, RequestOutcome
from proxy.rollout.machine import Action, State, Transition
from proxy.routing import Decision, Reason
from proxy.telemetry.metrics import LATENCY_BUCKETS, Recorder

DECISION = Decision(Variant.STABLE, Reason.BUCKET, 0.0, None, 1, "u")


def outcome(variant: Variant, status: int | None, **fields: Any) -> RequestOutcome:
    return RequestOutcome(
        at=0.0, route="r", method="GET", decision=DECISION, variant=variant, status=status, **fields
    )


def route_named(name: str) -> Route:
    (route,) = parse_config(
        f"routes:\n  - name: {name}\n    match: {{path_prefix: /}}\n"
        '    stable: {url: "http://127.0.0.1:1"}\n    candidate: {url: "http://127.0.0.1:2"}\n'
        '    cohort: {keys: ["header:U"]}\n'
    ).routes
    return route


def samples(recorder: Recorder) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(recorder.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_histogram_buckets_are_cumulative_and_inclusive_of_their_bound():
    recorder = Recorder()
    stable = recorder.route("r")["stable"]
    for seconds in (0.001, 0.005, 0.0051, 0.3, 61.0):
        stable.observe(outcome(Variant.STABLE, 200, ttfb=0.002, duration=seconds))
    m = samples(recorder)

    def bucket(le: str) -> float:
        key = (("le", le), ("route", "r"), ("variant", "stable"))
        return m[("grayscale_request_duration_seconds_bucket", key)]

    assert bucket("0.005") == 2  # 0.001 and exactly 0.005
    assert bucket("0.01") == 3
    assert bucket("0.25") == 3
    assert bucket("0.5") == 4
    assert bucket("60.0") == 4
    assert bucket("+Inf") == 5
    labels = (("route", "r"), ("variant", "stable"))
    assert m[("grayscale_request_duration_seconds_count", labels)] == 5
    assert abs(m[("grayscale_request_duration_seconds_sum", labels)] - 61.3111) < 1e-9
    assert m[("grayscale_upstream_time_to_first_byte_seconds_count", labels)] == 5
    stable_buckets = [
        key
        for name, key in m
        if name == "grayscale_request_duration_seconds_bucket" and ("variant", "stable") in key
    ]
    assert len(stable_buckets) == len(LATENCY_BUCKETS) + 1


def test_time_to_first_token_is_the_first_byte_unless_a_stream_said_otherwise():
    recorder = Recorder()
    stable = recorder.route("r")["stable"]
    stable.observe(outcome(Variant.STABLE, 200, ttfb=0.002, ttft=0.002))  # a whole answer
    stable.observe(outcome(Variant.STABLE, 200, ttfb=0.003, ttft=0.3, output_tokens=7))  # SSE
    stable.observe(outcome(Variant.STABLE, 200, ttfb=0.004, ttft=None))  # SSE, no token ever
    stable.observe(outcome(Variant.STABLE, None))  # the client left before any answer
    m = samples(recorder)
    labels = (("route", "r"), ("variant", "stable"))

    def ttft_bucket(le: str) -> float:
        key = (("le", le), ("route", "r"), ("variant", "stable"))
        return m[("grayscale_time_to_first_token_seconds_bucket", key)]

    assert m[("grayscale_time_to_first_token_seconds_count", labels)] == 2
    assert abs(m[("grayscale_time_to_first_token_seconds_sum", labels)] - 0.302) < 1e-9
    assert (ttft_bucket("0.005"), ttft_bucket("0.25"), ttft_bucket("0.5")) == (1, 1, 2)
    assert m[("grayscale_upstream_time_to_first_byte_seconds_count", labels)] == 3
    assert m[("grayscale_output_tokens_total", labels)] == 7


def test_requests_errors_and_in_flight_per_route_and_variant():
    recorder = Recorder()
    candidate = recorder.route("r")["candidate"]
    candidate.observe(outcome(Variant.CANDIDATE, 503))
    candidate.observe(outcome(Variant.CANDIDATE, 502, error=Failure.CONNECT))
    candidate.observe(outcome(Variant.CANDIDATE, 404))
    candidate.in_flight += 2
    m = samples(recorder)
    labels = (("route", "r"), ("variant", "candidate"))

    def count(code: str) -> float:
        return m[("grayscale_requests_total", (("code_class", code), *labels))]

    assert (count("2xx"), count("4xx"), count("5xx"), count("error")) == (0, 1, 1, 1)
    assert m[("grayscale_upstream_errors_total", (("reason", "connect"), *labels))] == 1
    assert m[("grayscale_in_flight_requests", labels)] == 2
    assert recorder.counts("r")["candidate"] == {
        "2xx": 0,
        "3xx": 0,
        "4xx": 1,
        "5xx": 1,
        "error": 1,
    }
    assert recorder.counts("unknown")["stable"]["2xx"] == 0


def test_routes_that_left_the_config_are_no_longer_exported():
    recorder = Recorder()
    rollback = Transition(Action.ROLLBACK, 0.0, "alice", State.RAMPING, State.ROLLED_BACK)
    for route in ("kept", "gone"):
        recorder.route(route)  # (as the gateway does for each route of the config)
        recorder.record(
            outcome(Variant.STABLE, 200, fallback=FallbackReason.CONNECT)._replace(route=route)
        )
        recorder.count_rollback(route_named(route), rollback, None)
    recorder.use({"kept"})
    routes = {dict(labels).get("route") for _, labels in samples(recorder)}
    assert "gone" not in routes and "kept" in routes
    m = samples(recorder)
    assert m[("grayscale_fallbacks_total", (("reason", "connect"), ("route", "kept")))] == 1
    assert m[("grayscale_rollbacks_total", (("route", "kept"), ("trigger", "operator")))] == 1
