"""Prometheus metrics: a recorder on an injected registry, label children bound once per route.

Labels are bounded by the config: route names, the two variants, five code classes and four
error reasons. Never a user id, a segment value or a raw path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.analysis.verdict import LATENCY_KEY, Verdict
from proxy.config.model import Route
from proxy.forwarding import Exchange
from proxy.rollout.machine import Transition

VARIANTS = ("stable", "candidate")
CODE_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
ERROR_REASONS = ("connect", "timeout", "reset", "protocol", "overloaded")
# Model latency spans a few milliseconds (a tabular scorer) to a minute (a long LLM answer).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


_CLASS_OF_HUNDREDS = ("2xx", "2xx", "2xx", "3xx", "4xx", "5xx")


def code_class(exchange: Exchange) -> str:
    """`error` when the upstream failed, else the class of the status sent to the client."""
    if exchange.error is not None:
        return "error"
    return _CLASS_OF_HUNDREDS[min(exchange.status // 100, 5)]


@dataclass(frozen=True, slots=True)
class VariantMetrics:
    """The label children of one route and variant, bound once."""

    requests: dict[str, Counter]
    errors: dict[str, Counter]
    duration: Histogram
    ttfb: Histogram
    in_flight: Gauge

    def observe(self, exchange: Exchange, duration: float) -> None:
        """Count one finished request."""
        self.requests[code_class(exchange)].inc()
        if exchange.error is not None:
            self.errors[exchange.error].inc()
        self.duration.observe(duration)
        if exchange.ttfb is not None:
            self.ttfb.observe(exchange.ttfb)


class Recorder:
    """All of Grayscale's metrics on one registry (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "grayscale_requests",
            "Requests forwarded, by route, variant and status class (error: no complete "
            "upstream answer).",
            ("route", "variant", "code_class"),
            registry=r,
        )
        self.duration = Histogram(
            "grayscale_request_duration_seconds",
            "Time from request arrival to the last byte sent to the client.",
            ("route", "variant"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "grayscale_upstream_time_to_first_byte_seconds",
            "Time from sending the request upstream to the first byte of the answer's body "
            "(time to first token for streaming models).",
            ("route", "variant"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "grayscale_upstream_errors",
            "Upstream exchanges that failed, by reason: connect, timeout, reset, protocol, "
            "overloaded (no free connection slot).",
            ("route", "variant", "reason"),
            registry=r,
        )
        self.in_flight = Gauge(
            "grayscale_in_flight_requests",
            "Requests being forwarded now.",
            ("route", "variant"),
            registry=r,
        )
        self.unmatched = Counter(
            "grayscale_unmatched_requests", "Requests that matched no route (404).", registry=r
        )
        self.access_log_dropped = Counter(
            "grayscale_access_log_dropped_lines",
            "Access log lines dropped because the writer fell behind.",
            registry=r,
        )
        self.verdicts = Counter(
            "grayscale_analysis_verdicts",
            "Analysis results per check (error_rate, latency, overall): pass, fail, inconclusive.",
            ("route", "check", "result"),
            registry=r,
        )
        self.analysis_error_rate = Gauge(
            "grayscale_analysis_error_rate",
            "Error rate in the last analysis window.",
            ("route", "variant"),
            registry=r,
        )
        self.analysis_latency = Gauge(
            "grayscale_analysis_latency_quantile_seconds",
            "The compared latency quantile in the last analysis window.",
            ("route", "variant"),
            registry=r,
        )
        self.analysis_requests = Gauge(
            "grayscale_analysis_window_requests",
            "Requests in the last analysis window.",
            ("route", "variant"),
            registry=r,
        )
        self.fallbacks = Counter(
            "grayscale_fallbacks",
            "Requests for the candidate served by stable: connect (unreachable), overloaded "
            "(no free connection), 5xx (replayed), ejected (outlier ejection).",
            ("route", "reason"),
            registry=r,
        )
        self.config_reloads = Counter(
            "grayscale_config_reloads",
            "Config reloads: success (applied or unchanged) or failure (invalid, not applied).",
            ("result",),
            registry=r,
        )
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        self.rollbacks = Counter(
            "grayscale_rollbacks",
            "Rollbacks, by trigger: analysis (automatic) or operator.",
            ("route", "trigger"),
            registry=r,
        )
        Gauge("grayscale_build_info", "Grayscale's version.", ("version",), registry=r).labels(
            __version__
        ).set(1)
        self._routes: dict[str, dict[str, VariantMetrics]] = {}

    def route(self, name: str) -> dict[str, VariantMetrics]:
        """The bound children of route `name`, per variant (created on first use)."""
        bound = self._routes.get(name)
        if bound is None:
            bound = {
                variant: VariantMetrics(
                    requests={c: self.requests.labels(name, variant, c) for c in CODE_CLASSES},
                    errors={
                        e: self.upstream_errors.labels(name, variant, e) for e in ERROR_REASONS
                    },
                    duration=self.duration.labels(name, variant),
                    ttfb=self.ttfb.labels(name, variant),
                    in_flight=self.in_flight.labels(name, variant),
                )
                for variant in VARIANTS
            }
            self._routes[name] = bound
        return bound

    def observe_verdict(self, route: str, verdict: Verdict) -> None:
        """Count an analysis verdict and export what it observed."""
        self.verdicts.labels(route, "overall", verdict.result.value).inc()
        for check in verdict.checks:
            self.verdicts.labels(route, check.name, check.result.value).inc()
            for variant, seen in (("stable", check.stable), ("candidate", check.candidate)):
                self.analysis_requests.labels(route, variant).set(seen["requests"])
                if seen["error_rate"] is not None:
                    self.analysis_error_rate.labels(route, variant).set(seen["error_rate"])
                if LATENCY_KEY in seen:
                    self.analysis_latency.labels(route, variant).set(seen[LATENCY_KEY])

    def count_rollback(self, route: Route, transition: Transition, _: object) -> None:
        """Count a rollback (a controller rollback listener)."""
        trigger = "analysis" if transition.actor == "analysis" else "operator"
        self.rollbacks.labels(route.name, trigger).inc()

    def counts(self, route: str) -> dict[str, dict[str, int]]:
        """Requests per variant and code class so far, for `/status`."""
        found = {variant: dict.fromkeys(CODE_CLASSES, 0) for variant in VARIANTS}
        for metric in self.requests.collect():
            for sample in metric.samples:
                labels = sample.labels
                if sample.name.endswith("_total") and labels["route"] == route:
                    found[labels["variant"]][labels["code_class"]] = int(sample.value)
        return found


class CallbackCollector(Collector):
    """Gauges computed when scraped, from a function returning metric families."""

    def __init__(self, produce: Callable[[], Iterable[GaugeMetricFamily]]):
        self._produce = produce

    def collect(self) -> Iterable[Metric]:
        return self._produce()
