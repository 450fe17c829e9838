"""Outcomes an application reports: what users did with the answers (a click, a purchase, a
rating), joined to the variant that served each request and counted per route, variant and name.

Invariants
- Nothing is stored per request served: the request id says which route, variant and rollout
  served it (signed: see `proxy.records.request_id`), so any process holding the key takes any
  outcome.
- A batch is taken whole or not at all: every item is checked first (`request_id` a string,
  `name` of letters, digits and `_ . : -`, at most 64; `value` a finite number of magnitude at
  most `MAX_OUTCOME`, 1 when left out); one bad item refuses the batch, naming the item and
  the field. No number a JSON text can hold raises anything but `InvalidBatch`.
- A value outside the `range` of the analysis check of its name (on the route its id names)
  refuses the batch: a check's bounds rely on it.
- An item is counted, never refused, when its id is not one of ours (`unknown`), its request is
  older than `ttl` (`expired`), its route left the config or its rollout was replaced since
  (`stale`), its request is not one the analysis compares (`not_compared`: not assigned at
  random, or sent to stable because the candidate was ejected), the same (request id, name)
  was taken before, in this batch or an earlier one (`duplicate`), its route already has
  `max_names` other names (`too_many_names`), or `max_tracked` pairs are remembered already
  (`untracked`: one that could not be told from its repeats is not counted).
- Each (request id, name) is counted once per process: the pairs taken are remembered, as
  64-bit keyed hashes grouped by their request's minute, until `ttl` has passed for every
  request of the minute. Memory is bounded by the routes times `max_names`, and `max_tracked`
  remembered pairs; no I/O.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy.config.model import MAX_OUTCOME, OUTCOME_NAME, OutcomesConfig, Route
from proxy.records.request_id import Reader, Served, rollout_digest
from proxy.rollout.machine import identity_of

# Where a joined outcome goes: (what its id says, name, value, now).
Sink = Callable[[Served, str, float, float], None]
# What became of each report: these counts are in every answer; `REPEATS`' only when not 0.
RESULTS = ("accepted", "unknown", "expired", "stale", "not_compared", "too_many_names")
REPEATS = ("duplicate", "untracked")
_SLOT = 60  # seconds of request time whose remembered pairs expire together
_LONGEST_INT = 20  # digits (and sign) of a JSON integer read as one; longer: read as a float


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


def json_number(text: str) -> int | float:
    """A JSON integer as `json.loads(..., parse_int=json_number)` reads it: one longer than any
    value taken is read as a float (infinite if need be) and refused as a value, without
    Python's costly conversion of long digit strings, which raises past 4,300 digits."""
    return int(text) if len(text) <= _LONGEST_INT else float(text)


def _sane(value: object) -> float | None:
    """`value` as a float if it is a number within `MAX_OUTCOME` either way, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    # (an int compares with a float exactly, however large; NaN compares false)
    if not -MAX_OUTCOME <= value <= MAX_OUTCOME:
        return None
    return float(value)


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
        number = _sane(value)
        if number is None:
            errors.append(
                f"{where}.value: expected a finite number between -{MAX_OUTCOME:g} and "
                f"{MAX_OUTCOME:g}"
            )
        if not errors and number is not None:
            reports.append(Report(str(request_id), str(name), number))
    if errors:
        raise InvalidBatch(errors)
    return reports


class ReportedOutcomes:
    """Joins reported outcomes to the variants that served their requests, and hands each to
    the sinks (metrics, analysis windows)."""

    def __init__(self, reader: Reader, sinks: Sequence[Sink]):
        self._reader = reader
        self._sinks = list(sinks)
        self._rollouts: dict[str, bytes] = {}  # route -> its rollout's digest
        self._names: dict[str, set[str]] = {}  # route -> the names taken so far
        self._ranges: dict[tuple[str, str], tuple[float, float]] = {}  # (route, name) -> range
        self._taken: dict[int, set[int]] = {}  # request minute -> keys of the pairs taken
        self._tracked = 0  # pairs in `_taken`
        self._pruned = -1  # the minute (of `now`) when `_taken` was last pruned
        self._hash_key = os.urandom(16)  # (no one can make two pairs' keys collide)
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
        """Take `reports` (reported at `now`); how many had each result (see `RESULTS` and
        `REPEATS`). Raises `InvalidBatch`, taking none, when a value lies outside its check's
        range."""
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
        self._prune(now)
        counts = dict.fromkeys(RESULTS, 0)
        for report, served in zip(reports, read, strict=True):
            result = self._take(report, served, now)
            counts[result] = counts.get(result, 0) + 1
        return counts

    @property
    def tracked(self) -> int:
        """How many (request id, name) pairs are remembered."""
        return self._tracked

    def _take(self, report: Report, served: Served | None, now: float) -> str:
        if served is None:
            return "unknown"
        if now - served.at > self.config.ttl:
            return "expired"
        if self._rollouts.get(served.route) != served.rollout:
            return "stale"
        if served.variant is None:
            return "not_compared"
        minute, key = int(served.at) // _SLOT, self._key(report)
        taken = self._taken.get(minute)
        if taken is not None and key in taken:
            return "duplicate"
        names = self._names.setdefault(served.route, set())
        if report.name not in names and len(names) >= self.config.max_names:
            return "too_many_names"
        if self._tracked >= self.config.max_tracked:
            return "untracked"
        names.add(report.name)
        self._taken.setdefault(minute, set()).add(key)
        self._tracked += 1
        for sink in self._sinks:
            sink(served, report.name, report.value, now)
        return "accepted"

    def _key(self, report: Report) -> int:
        """A keyed 64-bit hash of the report's (request id, name)."""
        pair = f"{report.name}\n{report.request_id}".encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(pair, digest_size=8, key=self._hash_key).digest()
        return int.from_bytes(digest, "big")

    def _prune(self, now: float) -> None:
        """Forget the pairs of every minute whose requests are all older than `ttl`: their
        repeats are `expired` now (at most once a minute)."""
        minute = int(now) // _SLOT
        if minute == self._pruned:
            return
        self._pruned = minute
        for old in [m for m in self._taken if (m + 1) * _SLOT + self.config.ttl < now]:
            self._tracked -= len(self._taken.pop(old))
