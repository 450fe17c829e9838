"""Prometheus metrics: a recorder on an injected registry.

Per-request figures (requests, upstream errors, durations, requests in flight) are plain counts
kept per route and variant and updated on the event loop without locks; a collector turns them
into metric families when scraped. The rarer events use prometheus-client's own metrics.

Labels are bounded by the config: route names, the two variants, five code classes and five
error reasons; or by the code: the reasons of refusals. Never a user id, a segment value or a raw
path.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.analysis.verdict import LATENCY_KEY, Verdict
from proxy.config.model import Route, Variant
from proxy.http.listener import REFUSAL_REASONS
from proxy.records.request_id import Served
from proxy.records.request_outcome import CLIENT_CLOSED, Failure, RequestOutcome
from proxy.rollout.machine import Transition

# Whether the hot modules run compiled (mypyc, `make compiled`; all or none of them, this one
# among them) or as Python (`pip install -e .`, or GRAYSCALE_PURE=1).
COMPILED = not __file__.endswith(".py")
VARIANTS = ("stable", "candidate")
CODE_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
ERROR_REASONS = tuple(reason.value for reason in Failure)  # connect ... grpc_status
# Model latency spans a few milliseconds (a tabular scorer) to a minute (a long LLM answer).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BOUNDS = (*(repr(bound) for bound in LATENCY_BUCKETS), "+Inf")  # as prometheus-client writes `le`


_CLASS_OF_HUNDREDS = ("2xx", "2xx", "2xx", "3xx", "4xx", "5xx")


def code_class(error: Failure | None, status: int) -> str:
    """`error` when the upstream failed, else the class of the status sent to the client."""
    if error is not None:
        return "error"
    return _CLASS_OF_HUNDREDS[min(status // 100, 5)]


class Buckets:
    """A latency histogram's counts: one per bucket of `LATENCY_BUCKETS`, then +Inf."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one value (`le` buckets: a value on a bound counts in that bound's bucket)."""
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count of values <= le) pairs, as exposed."""
        running, pairs = 0, []
        for bound, count in zip(_BOUNDS, self.counts, strict=True):
            running += count
            pairs.append((bound, float(running)))
        return pairs


class VariantMetrics:
    """What one route's variant served: counts updated on the event loop, read when scraped."""

    __slots__ = (
        "duration",
        "errors",
        "in_flight",
        "output_tokens",
        "requests",
        "ttfb",
        "ttfb_apart",
        "ttft_apart",
    )

    def __init__(self) -> None:
        self.requests = dict.fromkeys(CODE_CLASSES, 0)
        self.errors = dict.fromkeys(ERROR_REASONS, 0)
        self.duration = Buckets()
        self.ttfb = Buckets()
        # Most answers' first token is their first byte: only those where it is not are kept
        # apart (their first byte, and their first token if any), and the time to first token
        # is made from the three when scraped. One histogram per request, not two.
        self.ttfb_apart = Buckets()
        self.ttft_apart = Buckets()
        self.output_tokens = 0
        self.in_flight = 0

    def ttft(self) -> tuple[list[tuple[str, float]], float]:
        """The time-to-first-token histogram, as exposed: (le, count) pairs and the sum."""
        ttfb, apart, ttft = (b.cumulative() for b in (self.ttfb, self.ttfb_apart, self.ttft_apart))
        pairs = [(le, a - b + c) for (le, a), (_, b), (_, c) in zip(ttfb, apart, ttft, strict=True)]
        return pairs, self.ttfb.sum - self.ttfb_apart.sum + self.ttft_apart.sum

    def observe(self, outcome: RequestOutcome) -> None:
        """Count one finished request."""
        error, status = outcome.error, outcome.status
        if error is not None:
            self.requests["error"] += 1
            self.errors[error] += 1
        else:
            self.requests[_CLASS_OF_HUNDREDS[min((status or CLIENT_CLOSED) // 100, 5)]] += 1
        self.duration.observe(outcome.duration)
        ttfb, ttft = outcome.ttfb, outcome.ttft
        if ttfb is not None:
            self.ttfb.observe(ttfb)
            if ttft != ttfb:  # an event stream whose first token came later, or never
                self.ttfb_apart.observe(ttfb)
                if ttft is not None:
                    self.ttft_apart.observe(ttft)
        if outcome.output_tokens is not None:
            self.output_tokens += outcome.output_tokens


class _PerRequestCollector(Collector):
    """The per-request metric families, built from the routes' counts when scraped."""

    def __init__(
        self,
        routes: dict[str, dict[str, VariantMetrics]],
        outcomes: dict[tuple[str, str, str], list[float]],
    ):
        self._routes = routes
        self._outcomes = outcomes

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "grayscale_requests",
            "Requests forwarded, by route, variant and status class (error: no complete "
            "upstream answer).",
            labels=("route", "variant", "code_class"),
        )
        errors = CounterMetricFamily(
            "grayscale_upstream_errors",
            "Upstream exchanges that failed, by reason: connect, timeout, reset, protocol, "
            "overloaded (no free connection slot), grpc_status (a gRPC call ended with one of the "
            "route's grpc_error_codes).",
            labels=("route", "variant", "reason"),
        )
        duration = HistogramMetricFamily(
            "grayscale_request_duration_seconds",
            "Time from request arrival to the last byte sent to the client.",
            labels=("route", "variant"),
        )
        ttfb = HistogramMetricFamily(
            "grayscale_upstream_time_to_first_byte_seconds",
            "Time from sending the request upstream to the first byte of the answer's body.",
            labels=("route", "variant"),
        )
        ttft = HistogramMetricFamily(
            "grayscale_time_to_first_token_seconds",
            "Time from sending the request upstream to the first event-stream event that "
            "carries content (a role-only or keep-alive frame is not a token); the first byte "
            "for answers that are not event streams.",
            labels=("route", "variant"),
        )
        tokens = CounterMetricFamily(
            "grayscale_output_tokens",
            "Output tokens the answers' usage reported (completion_tokens), by route and variant.",
            labels=("route", "variant"),
        )
        in_flight = GaugeMetricFamily(
            "grayscale_in_flight_requests",
            "Requests being forwarded now.",
            labels=("route", "variant"),
        )
        for route, variants in list(self._routes.items()):
            for variant, seen in variants.items():
                for code, count in seen.requests.items():
                    requests.add_metric((route, variant, code), count)
                for reason, count in seen.errors.items():
                    errors.add_metric((route, variant, reason), count)
                for family, buckets in ((duration, seen.duration), (ttfb, seen.ttfb)):
                    family.add_metric((route, variant), buckets.cumulative(), buckets.sum)
                ttft.add_metric((route, variant), *seen.ttft())
                tokens.add_metric((route, variant), seen.output_tokens)
                in_flight.add_metric((route, variant), seen.in_flight)
        outcomes = SummaryMetricFamily(
            "grayscale_outcome_value",
            "Outcomes the application reported (POST /outcomes), joined to the variant that "
            "served their request: how many (_count) and the sum of their values (_sum).",
            labels=("route", "variant", "name"),
        )
        for key, (reports, total) in list(self._outcomes.items()):
            outcomes.add_metric(key, int(reports), total)
        return [requests, errors, duration, ttfb, ttft, tokens, in_flight, outcomes]


class Recorder:
    """All of Grayscale's metrics on one registry (a fresh one unless given). The parts of the
    proxy tell it what happened through its methods; the Prometheus objects stay inside, and
    only `/metrics` reads the registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._routes: dict[str, dict[str, VariantMetrics]] = {}
        self._outcomes: dict[tuple[str, str, str], list[float]] = {}  # -> [count, sum]
        r.register(_PerRequestCollector(self._routes, self._outcomes))
        self._shadow_comparisons = Counter(
            "grayscale_shadow_comparisons",
            "Shadow copies of stable's requests sent to the candidate, by the comparison of the "
            "two answers: agree, differ, error (the candidate failed, timed out or answered "
            "too much to compare).",
            ("route", "result"),
            registry=r,
        )
        self._shadow_dropped = Counter(
            "grayscale_shadow_dropped",
            "Shadow copies not sent: shadow.max_in_flight reached or no free candidate connection.",
            ("route",),
            registry=r,
        )
        self._outcomes_not_taken = Counter(
            "grayscale_outcomes_not_taken",
            "Reported outcomes not counted, by reason: unknown (not a request id of ours), "
            "expired (older than outcomes.ttl), stale (route or rollout changed), "
            "not_compared (a request the analysis does not compare), too_many_names "
            "(outcomes.max_names), duplicate (its request id and name already taken), "
            "untracked (outcomes.max_tracked pairs remembered already).",
            ("reason",),
            registry=r,
        )
        self._unmatched = Counter(
            "grayscale_unmatched_requests", "Requests that matched no route (404).", registry=r
        )
        self._access_log_dropped = Counter(
            "grayscale_access_log_dropped_lines",
            "Access log lines dropped because the writer fell behind.",
            registry=r,
        )
        self._verdicts = Counter(
            "grayscale_analysis_verdicts",
            "Analysis results per check (error_rate, latency, outcome:..., metric:..., "
            "sample_ratio, overall): pass, fail, suspect, inconclusive, error.",
            ("route", "check", "result"),
            registry=r,
        )
        self._analysis_error_rate = Gauge(
            "grayscale_analysis_error_rate",
            "Error rate in the last analysis window.",
            ("route", "variant"),
            registry=r,
        )
        self._analysis_latency = Gauge(
            "grayscale_analysis_latency_quantile_seconds",
            "The compared latency quantile in the last analysis window.",
            ("route", "variant"),
            registry=r,
        )
        self._analysis_requests = Gauge(
            "grayscale_analysis_window_requests",
            "Requests in the last analysis window.",
            ("route", "variant"),
            registry=r,
        )
        self._analysis_errors = Gauge(
            "grayscale_analysis_errors_in_a_row",
            "Verdicts in a row that could not be measured (Prometheus or the fleet's store "
            "unreachable, a broken split); see analysis.max_errors_in_a_row and on_error.",
            ("route",),
            registry=r,
        )
        self._analysis_metric = Gauge(
            "grayscale_analysis_metric_value",
            "The last value of a custom metric check's query.",
            ("route", "metric", "variant"),
            registry=r,
        )
        self._fallbacks = Counter(
            "grayscale_fallbacks",
            "Requests for the candidate served by stable: connect (unreachable), overloaded "
            "(no free connection), 5xx (replayed), ejected (outlier ejection).",
            ("route", "reason"),
            registry=r,
        )
        self._config_reloads = Counter(
            "grayscale_config_reloads",
            "Config reloads: success (applied or unchanged) or failure (invalid, not applied).",
            ("result",),
            registry=r,
        )
        for result in ("success", "failure"):
            self._config_reloads.labels(result)
        self._refused = Counter(
            "grayscale_refused",
            "Connections and request heads refused before any route saw them, by reason: http2 "
            "(the HTTP/2 preface while server.http2 is off), tls (a TLS handshake on a "
            "clear-text port), version (an HTTP version not served), malformed, too_large (the "
            "head or a part of it), method (CONNECT), tls_handshake (a failed TLS handshake on "
            "the proxy's or the admin API's port).",
            ("reason",),
            registry=r,
        )
        for reason in REFUSAL_REASONS:
            self._refused.labels(reason)
        self._rollbacks = Counter(
            "grayscale_rollbacks",
            "Rollbacks, by trigger: analysis (automatic) or operator.",
            ("route", "trigger"),
            registry=r,
        )
        self._promotions = Counter(
            "grayscale_promotions",
            "Promotions, by trigger: analysis (automatic, promote.after) or operator.",
            ("route", "trigger"),
            registry=r,
        )
        Gauge(
            "grayscale_build_info",
            "Grayscale's version, and whether its hot modules are compiled (mypyc).",
            ("version", "compiled"),
            registry=r,
        ).labels(__version__, "true" if COMPILED else "false").set(1)

    def count_unmatched(self) -> None:
        """A request matched no route."""
        self._unmatched.inc()

    def count_access_log_drop(self) -> None:
        """The access log writer fell behind and dropped a line."""
        self._access_log_dropped.inc()

    def count_refused(self, reason: str) -> None:
        """A connection or request head was refused, for `reason` (one of REFUSAL_REASONS)."""
        self._refused.labels(reason).inc()

    def count_config_reload(self, applied: bool) -> None:
        """A reload of the config file: applied (or unchanged), or refused as invalid."""
        self._config_reloads.labels("success" if applied else "failure").inc()

    def route(self, name: str) -> dict[str, VariantMetrics]:
        """The counts of route `name`, per variant (created on first use, kept after)."""
        bound = self._routes.get(name)
        if bound is None:
            bound = self._routes[name] = {variant: VariantMetrics() for variant in VARIANTS}
        return bound

    def record(self, outcome: RequestOutcome) -> None:
        """Count a finished request (an `Observer`). A candidate that failed before stable
        answered in its place counts too: its upstream error, or its replayed 5xx."""
        variants = self._routes.get(outcome.route)
        if variants is None:
            return  # the route left the config while the request was in flight
        variants[outcome.variant].observe(outcome)
        if outcome.fallback is not None:
            self._fallbacks.labels(outcome.route, outcome.fallback).inc()
        candidate = variants[Variant.CANDIDATE]
        if outcome.candidate_error is not None:
            candidate.errors[outcome.candidate_error] += 1
        if outcome.candidate_status is not None:
            candidate.requests[code_class(None, outcome.candidate_status)] += 1

    def observe_outcome(self, served: Served, name: str, value: float, _now: float) -> None:
        """Count a reported outcome (a sink of the reported outcomes)."""
        variant = "" if served.variant is None else served.variant.value
        counted = self._outcomes.setdefault((served.route, variant, name), [0, 0.0])
        counted[0] += 1
        counted[1] += value

    def count_shadow(self, route: str, result: str) -> None:
        """Count a shadow comparison's result, or a dropped copy (a shadower's listener)."""
        if result == "dropped":
            self._shadow_dropped.labels(route).inc()
        else:
            self._shadow_comparisons.labels(route, result).inc()

    def count_not_taken(self, results: dict[str, int]) -> None:
        """Count the outcomes of a batch that were not taken, by reason."""
        for reason, count in results.items():
            if reason != "accepted" and count:
                self._outcomes_not_taken.labels(reason).inc(count)

    def use(self, names: set[str]) -> None:
        """Follow a new config: stop exporting the series of routes not in `names`; a route
        that comes back starts its counters again, which Prometheus reads as a reset."""
        for name in set(self._routes) - names:
            del self._routes[name]
        for key in [key for key in self._outcomes if key[0] not in names]:
            del self._outcomes[key]
        per_route: tuple[tuple[Counter | Gauge, tuple[str, ...]], ...] = (
            (self._fallbacks, ("route", "reason")),
            (self._verdicts, ("route", "check", "result")),
            (self._analysis_error_rate, ("route", "variant")),
            (self._analysis_latency, ("route", "variant")),
            (self._analysis_requests, ("route", "variant")),
            (self._analysis_metric, ("route", "metric", "variant")),
            (self._analysis_errors, ("route",)),
            (self._rollbacks, ("route", "trigger")),
            (self._promotions, ("route", "trigger")),
            (self._shadow_comparisons, ("route", "result")),
            (self._shadow_dropped, ("route",)),
        )
        for metric, labels in per_route:
            gone = {
                tuple(sample.labels[label] for label in labels)
                for family in metric.collect()
                for sample in family.samples
                if sample.labels["route"] not in names
            }
            for values in gone:
                metric.remove(*values)

    def observe_verdict(self, route: str, verdict: Verdict, errors_in_a_row: int) -> None:
        """Count an analysis verdict and export what it observed, and how many verdicts in a
        row could not be measured."""
        self._verdicts.labels(route, "overall", verdict.result.value).inc()
        self._analysis_errors.labels(route).set(errors_in_a_row)
        for check in verdict.checks:
            self._verdicts.labels(route, check.name, check.result.value).inc()
            for variant, seen in (("stable", check.stable), ("candidate", check.candidate)):
                if check.name.startswith("metric:"):
                    metric = check.name.removeprefix("metric:")
                    if seen["value"] is not None:
                        self._analysis_metric.labels(route, metric, variant).set(seen["value"])
                    else:  # (no stale value: the series goes until the query answers again)
                        with contextlib.suppress(KeyError):
                            self._analysis_metric.remove(route, metric, variant)
                    continue
                self._analysis_requests.labels(route, variant).set(seen["requests"])
                if seen["error_rate"] is not None:
                    self._analysis_error_rate.labels(route, variant).set(seen["error_rate"])
                if LATENCY_KEY in seen:
                    self._analysis_latency.labels(route, variant).set(seen[LATENCY_KEY])

    def count_rollback(self, route: Route, transition: Transition, _: object) -> None:
        """Count a rollback (a controller rollback listener)."""
        trigger = "analysis" if transition.actor == "analysis" else "operator"
        self._rollbacks.labels(route.name, trigger).inc()

    def count_promotion(self, route: Route, transition: Transition, _: object) -> None:
        """Count a promotion (a controller promotion listener)."""
        trigger = "analysis" if transition.actor == "analysis" else "operator"
        self._promotions.labels(route.name, trigger).inc()

    def counts(self, route: str) -> dict[str, dict[str, int]]:
        """Requests per variant and code class so far, for `/status`."""
        seen = self._routes.get(route)
        return {
            variant: dict(seen[variant].requests) if seen else dict.fromkeys(CODE_CLASSES, 0)
            for variant in VARIANTS
        }


class CallbackCollector(Collector):
    """Gauges computed when scraped, from a function returning metric families."""

    def __init__(self, produce: Callable[[], Iterable[GaugeMetricFamily]]):
        self._produce = produce

    def collect(self) -> Iterable[Metric]:
        return self._produce()
