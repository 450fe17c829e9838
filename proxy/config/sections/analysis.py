"""A route's `analysis`: its windows and thresholds, its outcome checks, and its metric checks
on Prometheus.

Invariants
- The thresholds hold together (window at least the interval, confidence in [0.5, 1), latency
  quantile in (0, 1), latency ratio at least 1); a check's bounds are not crossed (min at most
  max); check names are unique within their list.
- Metric checks and `prometheus` come together; a metric query uses known placeholders only.
- No secret is read from the file: a Prometheus URL with a password is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from typing import TypeVar
from urllib.parse import urlsplit

from yaml.nodes import MappingNode, Node, SequenceNode

from proxy.config.errors import field_path
from proxy.config.model import (
    MAX_OUTCOME,
    METRIC_PLACEHOLDER,
    METRIC_PLACEHOLDERS,
    OUTCOME_NAME,
    AnalysisMethod,
    AnalysisSpec,
    Comparison,
    Inconclusive,
    LatencyMeasure,
    MetricCheck,
    OnError,
    OutcomeBasis,
    OutcomeCheck,
    PrometheusSource,
)
from proxy.config.reader import Reader

T = TypeVar("T")


class AnalysisReader(Reader):
    """Reads a route's `analysis`."""

    def analysis(self, node: Node, path: str, default: AnalysisSpec | None) -> AnalysisSpec:
        """A route's `analysis`, its thresholds checked together."""
        base = AnalysisSpec()
        fields = self.mapping(node, path, [f.name for f in dataclass_fields(AnalysisSpec)])

        def read(name: str, kind: Callable[[Node, str, T], T], fallback: T) -> T:
            return self.field(fields, name, path, kind, fallback)

        spec = AnalysisSpec(
            interval=read("interval", self.duration, base.interval),
            window=read("window", self.duration, base.window),
            min_requests=read("min_requests", self.count, base.min_requests),
            max_error_rate_increase=read(
                "max_error_rate_increase", self.fraction, base.max_error_rate_increase
            ),
            max_latency_ratio=read("max_latency_ratio", self.number, base.max_latency_ratio),
            latency_quantile=read("latency_quantile", self.fraction, base.latency_quantile),
            latency=read(
                "latency", lambda n, p, d: self.choice(n, p, d, LatencyMeasure), base.latency
            ),
            confidence=read("confidence", self.fraction, base.confidence),
            failures_before_rollback=read(
                "failures_before_rollback", self.count, base.failures_before_rollback
            ),
            on_inconclusive=read(
                "on_inconclusive",
                lambda n, p, d: self.choice(n, p, d, Inconclusive),
                base.on_inconclusive,
            ),
            max_errors_in_a_row=read("max_errors_in_a_row", self.count, base.max_errors_in_a_row),
            on_error=read("on_error", lambda n, p, d: self.choice(n, p, d, OnError), base.on_error),
            outcomes=read("outcomes", self.outcome_checks, ()),
            method=read(
                "method", lambda n, p, d: self.choice(n, p, d, AnalysisMethod), base.method
            ),
            prometheus=read("prometheus", self.prometheus, None),
            metrics=read("metrics", self.metric_checks, ()),
        )
        if "metrics" in fields and "prometheus" not in fields:
            self.fail(fields["metrics"], field_path(path, "metrics"), "needs analysis.prometheus")
        if "prometheus" in fields and "metrics" not in fields:
            self.fail(
                fields["prometheus"], field_path(path, "prometheus"), "no analysis.metrics to run"
            )
        checks = (
            (spec.window >= spec.interval, "window", "must be at least the interval"),
            (spec.max_latency_ratio >= 1.0, "max_latency_ratio", "must be at least 1"),
            (0.5 <= spec.confidence < 1.0, "confidence", "must be in [0.5, 1)"),
            (0.0 < spec.latency_quantile < 1.0, "latency_quantile", "must be in (0, 1)"),
        )
        for ok, name, message in checks:
            if not ok:
                self.fail(fields.get(name, node), field_path(path, name), message)
        return spec

    def prometheus(
        self, node: Node, path: str, default: PrometheusSource | None
    ) -> PrometheusSource | None:
        """Where the metric checks' queries are sent."""
        fields = self.mapping(node, path, ("url", "timeout", "token_env", "ca_file"), ("url",))
        url = self.field(fields, "url", path, self.url, "")
        if "url" in fields and urlsplit(url).password is not None:
            # A secret in the config would show in version control, /status and logs.
            self.fail(
                fields["url"], field_path(path, "url"), "no password in the URL: use token_env"
            )
        base = PrometheusSource("")
        return PrometheusSource(
            url=url,
            timeout=self.field(fields, "timeout", path, self.duration, base.timeout),
            token_env=self.field(fields, "token_env", path, self.string, "") or None,
            ca_file=self.field(fields, "ca_file", path, self.ca_file, None),
        )

    def metric_checks(
        self, node: Node, path: str, default: tuple[MetricCheck, ...]
    ) -> tuple[MetricCheck, ...]:
        """The metric checks, each with its query and at least one limit."""
        checks = []
        for item, item_path in self.sequence(node, path):
            fields = self.mapping(
                item, item_path, ("name", "query", *Comparison), ("name", "query")
            )
            limits = []
            for kind in Comparison:
                if kind in fields:
                    read = self.non_negative if kind.endswith(("increase", "decrease")) else None
                    value = (read or self.number)(
                        fields[kind], field_path(item_path, kind), math.nan
                    )
                    if kind.endswith("ratio") and not value > 0:
                        self.fail(fields[kind], field_path(item_path, kind), "must be above 0")
                    limits.append((kind, value))
            if not fields.keys() & set(Comparison) and isinstance(item, MappingNode):
                self.fail(item, item_path, f"needs one of {', '.join(Comparison)}")
            bounds = dict(limits)
            for low, high in (
                (Comparison.MIN, Comparison.MAX),
                (Comparison.MIN_RATIO, Comparison.MAX_RATIO),
            ):
                if bounds.get(low, -math.inf) > bounds.get(high, math.inf):
                    self.fail(fields[low], field_path(item_path, low), f"must not be above {high}")
            checks.append(
                MetricCheck(
                    name=self.field(fields, "name", item_path, self.check_name, ""),
                    query=self.field(fields, "query", item_path, self.metric_query, ""),
                    limits=tuple(limits),
                )
            )
        self.unique(node, path, [(c.name, "name") for c in checks])
        return tuple(checks)

    def metric_query(self, node: Node, path: str, default: str) -> str:
        """A PromQL query whose `{{placeholders}}` are known ones."""
        value = self.string(node, path, default)
        for name in METRIC_PLACEHOLDER.findall(value):
            if name not in METRIC_PLACEHOLDERS:
                known = ", ".join("{{" + known + "}}" for known in METRIC_PLACEHOLDERS)
                self.fail(node, path, "unknown placeholder {{" + name + "}}: expected " + known)
        return value

    def outcome_checks(
        self, node: Node, path: str, default: tuple[OutcomeCheck, ...]
    ) -> tuple[OutcomeCheck, ...]:
        """The outcome checks."""
        checks = []
        for item, item_path in self.sequence(node, path):
            fields = self.mapping(
                item,
                item_path,
                ("name", "max_decrease", "relative", "per", "range"),
                ("name", "max_decrease"),
            )
            per = self.field(
                fields,
                "per",
                item_path,
                lambda n, p, d: self.choice(n, p, d, OutcomeBasis),
                OutcomeBasis.REQUEST,
            )
            if per is OutcomeBasis.OUTCOME and "range" not in fields:
                self.fail(
                    item,
                    field_path(item_path, "range"),
                    "missing required field: per: outcome needs the values' [min, max]",
                )
            checks.append(
                OutcomeCheck(
                    name=self.field(fields, "name", item_path, self.check_name, ""),
                    max_decrease=self.field(
                        fields, "max_decrease", item_path, self.non_negative, 0.0
                    ),
                    relative=self.field(fields, "relative", item_path, self.boolean, False),
                    per=per,
                    range=self.field(fields, "range", item_path, self.value_range, (0.0, 1.0)),
                )
            )
        self.unique(node, path, [(c.name, "name") for c in checks])
        return tuple(checks)

    def value_range(
        self, node: Node, path: str, default: tuple[float, float]
    ) -> tuple[float, float]:
        """The `[min, max]` of an outcome's values."""
        items = list(self.sequence(node, path))
        if len(items) != 2:
            if isinstance(node, SequenceNode):
                self.fail(node, path, "expected [min, max]: two numbers")
            return default
        low, high = (self.number(item, item_path, 0.0) for item, item_path in items)
        if not low < high:
            self.fail(node, path, f"expected min below max, got [{low:g}, {high:g}]")
            return default
        if not (low >= -MAX_OUTCOME and high <= MAX_OUTCOME):
            self.fail(node, path, f"expected numbers between -{MAX_OUTCOME:g} and {MAX_OUTCOME:g}")
            return default
        return low, high

    def check_name(self, node: Node, path: str, default: str) -> str:
        """A check's name: letters, digits and _ . : -, at most 64."""
        value = self.string(node, path, default)
        if value and not OUTCOME_NAME.fullmatch(value):
            self.fail(node, path, "expected letters, digits and _ . : - (at most 64)")
        return value
