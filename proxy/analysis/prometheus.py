"""Asks Prometheus (or any server of its query API: Thanos, Mimir, VictoriaMetrics) the custom
metric checks' queries, each variant's at once, and judges the answers.

Invariants:
- A round never waits longer than the source's `timeout` for its queries (they run together),
  and nothing a server answers or fails to answer raises: it becomes a reading's `problem`.
- A query's problem is logged when it appears or changes (a warning; "no data" only at info:
  a fresh candidate has none yet) and once when it clears, never every round.
- The bearer token is read from the environment at each query (a rotated secret is used at
  once) and never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from proxy.analysis.metric_check import Reading, metric_check, promql_duration, reading, render
from proxy.analysis.verdict import Check
from proxy.config.model import AnalysisSpec, MetricCheck, PrometheusSource, Variant

log = logging.getLogger("grayscale.analysis")
MAX_ANSWER = 1 << 20  # bytes: one number's answer is a few hundred
QUIET_PROBLEMS = ("no data",)  # logged at info: expected before a variant has traffic


def hostname(url: str) -> str:
    """The host name of an upstream URL, as `{{host}}` fills it in."""
    return urlsplit(url).hostname or ""


class MetricQueries:
    """Runs the metric checks of every route on one HTTP client, opened at the first query."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tls: dict[str | None, ssl.SSLContext] = {}
        self._problems: dict[tuple[str, str, Variant], str | None] = {}

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def checks(
        self, route: str, spec: AnalysisSpec, hosts: dict[Variant, str], at: float
    ) -> tuple[Check, ...]:
        """Route `route`'s metric checks at time `at`; `hosts` are its upstreams' host names."""
        source = spec.prometheus
        if source is None or not spec.metrics:
            return ()
        window = promql_duration(spec.window)
        asked = [
            (metric, variant, render(metric.query, self._values(route, variant, hosts, window)))
            for metric in spec.metrics
            for variant in (Variant.STABLE, Variant.CANDIDATE)
        ]
        readings = await asyncio.gather(*(self._query(source, query, at) for _, _, query in asked))
        for (metric, variant, _), answer in zip(asked, readings, strict=True):
            self._log_change(route, metric, variant, answer)
        return tuple(
            metric_check(metric, readings[2 * index], readings[2 * index + 1])
            for index, metric in enumerate(spec.metrics)
        )

    @staticmethod
    def _values(
        route: str, variant: Variant, hosts: dict[Variant, str], window: str
    ) -> dict[str, str]:
        return {"route": route, "variant": variant.value, "host": hosts[variant], "window": window}

    async def _query(self, source: PrometheusSource, query: str, at: float) -> Reading:
        headers = {}
        if source.token_env is not None:
            token = os.environ.get(source.token_env)
            if not token:
                return Reading(
                    query, problem=f"environment variable {source.token_env} is unset", failed=True
                )
            headers["Authorization"] = f"Bearer {token}"
        form = {"query": query, "time": f"{at:.3f}", "timeout": f"{source.timeout:g}s"}
        try:
            async with self._client().post(
                f"{source.url}/api/v1/query",
                data=form,
                headers=headers,
                ssl=self._context(source),
                timeout=aiohttp.ClientTimeout(total=source.timeout),
                allow_redirects=False,
            ) as answer:
                raw = bytearray()
                async for chunk in answer.content.iter_chunked(1 << 16):
                    raw += chunk
                    if len(raw) > MAX_ANSWER:
                        return Reading(
                            query, problem="an answer of over 1 MiB: too many series", failed=True
                        )
        except TimeoutError:
            return Reading(query, problem=f"no answer within {source.timeout:g} s", failed=True)
        except aiohttp.ClientError as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return Reading(query, problem=f"cannot query {source.url}: {problem}", failed=True)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or "status" not in body:
            return Reading(
                query, problem=f"HTTP {answer.status} without a query API answer", failed=True
            )
        return reading(query, body)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _context(self, source: PrometheusSource) -> ssl.SSLContext | bool:
        if not source.url.startswith("https:"):
            return True  # (the default: unused for http)
        if source.ca_file not in self._tls:
            self._tls[source.ca_file] = ssl.create_default_context(cafile=source.ca_file)
        return self._tls[source.ca_file]

    def _log_change(self, route: str, metric: MetricCheck, variant: Variant, got: Reading) -> None:
        key = (route, metric.name, variant)
        before = self._problems.get(key)
        if got.problem == before:
            return
        self._problems[key] = got.problem
        extra = {"route": route}
        if got.problem is None:
            log.info("metric %s: %s query answers again", metric.name, variant, extra=extra)
            return
        level = logging.INFO if got.problem in QUIET_PROBLEMS else logging.WARNING
        log.log(level, "metric %s: %s query: %s", metric.name, variant, got.problem, extra=extra)
