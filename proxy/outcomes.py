"""Outcomes an application reports: what users did with the answers (a click, a purchase, a
rating), joined to the variant that served each request and counted per route, variant and name.

Invariants
- Nothing is stored per request: the request id says which route, variant and rollout served it
  (signed: see `proxy.request_id`), so any process holding the key takes any outcome.
- A batch is taken whole or not at all: every item is checked first (`request_id` a string,
  `name` of letters, digits and `_ . : -`, at most 64; `value` a finite number, 1 when left
  out); one bad item refuses the batch, naming the item and the field.
- An item is counted, never refused, when its id is not one of ours (`unknown`), its request is
  older than `ttl` (`expired`), its route left the config or its rollout was replaced since
  (`stale`), its request is not one the analysis compares (`not_compared`: not assigned at
  random, or sent to stable because the candidate was ejected), or its route already has
  `max_names` other names (`too_many_names`).
- A value outside the `range` of the analysis check of its name (on any route) refuses the
  batch: a check's bounds rely on it.
- Memory is bounded by the routes times `max_names`; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy.config.model import OUTCOME_NAME, OutcomesConfig, Route
from proxy.request_id import Reader, Served, rollout_digest
from proxy.rollout.machine import identity_of

# Where a joined outcome goes: (what its id says, name, value, now).
Sink = Callable[[Served, str, float, float], None]
RESULTS = ("accepted", "unknown", "expired", "stale", "not_compared", "too_many_names")


@dataclass(frozen=True, slots=True)
class Report:
    """One reported outcome."""

    request_id: str
    name: str
    value: float


class InvalidBatch(ValueError):
    """A batch with items that cannot be taken; `errors` name each (index and field)."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors[:3]))
        self.errors = errors


def parse_batch(document: object, max_batch: int) -> list[Report]:
    """The reports in a JSON document: one object or a list of them. Raises `InvalidBatch`."""
    items = document if isinstance(document, list) else [document]
    if not items:
        raise InvalidBatch(["the batch is empty"])
    if len(items) > max_batch:
        raise InvalidBatch([f"at most {max_batch} outcomes per request, got {len(items)}"])
    reports, errors = [], []
    for index, item in enumerate(items):
        where = f"[{index}]" if isinstance(document, list) else "the outcome"
        if not isinstance(item, dict):
            errors.append(f"{where}: expected an object with request_id, name and value")
            continue
        request_id, name, value = item.get("request_id"), item.get("name"), item.get("value", 1)
        unknown = sorted(set(item) - {"request_id", "name", "value"})
        if unknown:
            errors.append(f"{where}: unknown field {unknown[0]!r}")
        if not isinstance(request_id, str) or not request_id:
            errors.append(f"{where}.request_id: expected the X-Grayscale-Request-Id of an answer")
        if not isinstance(name, str) or not OUTCOME_NAME.fullmatch(name):
            errors.append(f"{where}.name: expected letters, digits and _ . : - (at most 64)")
        finite = isinstance(value, int | float) and not isinstance(value, bool)
        if not finite or not math.isfinite(value):
            errors.append(f"{where}.value: expected a finite number")
        if not errors:
            reports.append(Report(str(request_id), str(name), float(value)))
    if errors:
        raise InvalidBatch(errors)
    return reports


class OutcomeBook:
    """Joins reported outcomes to the variants that served their requests, and hands each to
    the sinks (metrics, analysis windows)."""

    def __init__(self, reader: Reader, sinks: Sequence[Sink]):
        self._reader = reader
        self._sinks = list(sinks)
        self._rollouts: dict[str, bytes] = {}  # route -> its rollout's digest
        self._names: dict[str, set[str]] = {}  # route -> the names taken so far
        self._ranges: dict[tuple[str, str], tuple[float, float]] = {}  # (route, name) -> range
        self.config = OutcomesConfig()

    def use(self, config: OutcomesConfig, routes: Sequence[Route]) -> None:
        """Follow a (new) config."""
        self.config = config
        self._rollouts = {route.name: rollout_digest(identity_of(route)) for route in routes}
        self._ranges = {
            (route.name, check.name): check.range
            for route in routes
            if route.analysis is not None
            for check in route.analysis.outcomes
        }
        self._names = {name: names for name, names in self._names.items() if name in self._rollouts}

    def take(self, reports: Sequence[Report], now: float) -> dict[str, int]:
        """Take `reports` (reported at `now`); how many had each result (see `RESULTS`).
        Raises `InvalidBatch`, taking none, when a value lies outside its check's range."""
        read = [self._reader.read(report.request_id) for report in reports]
        errors = []
        for index, (report, served) in enumerate(zip(reports, read, strict=True)):
            limits = None if served is None else self._ranges.get((served.route, report.name))
            if served is not None and limits is not None:
                low, high = limits
                if not low <= report.value <= high:
                    errors.append(
                        f"[{index}].value: {report.value:g} is outside the range of "
                        f"{report.name!r} on route {served.route!r} (analysis.outcomes: "
                        f"[{low:g}, {high:g}])"
                    )
        if errors:
            raise InvalidBatch(errors)
        counts = dict.fromkeys(RESULTS, 0)
        for report, served in zip(reports, read, strict=True):
            counts[self._take(report, served, now)] += 1
        return counts

    def _take(self, report: Report, served: Served | None, now: float) -> str:
        if served is None:
            return "unknown"
        if now - served.at > self.config.ttl:
            return "expired"
        if self._rollouts.get(served.route) != served.rollout:
            return "stale"
        if served.variant is None:
            return "not_compared"
        names = self._names.setdefault(served.route, set())
        if report.name not in names:
            if len(names) >= self.config.max_names:
                return "too_many_names"
            names.add(report.name)
        for sink in self._sinks:
            sink(served, report.name, report.value, now)
        return "accepted"
