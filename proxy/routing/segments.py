"""Segment rules, compiled once per config into plain predicates; first match wins.

Invariants: `SegmentIndex.match` answers what trying every segment in order would (the first
segment, in config order, whose `when` conditions all hold and no `unless` condition does). Its
cost per request grows with the number of distinct attributes the segments are keyed on and the
segments that could match, not with the number of segments: each segment is filed under one of
its `when` conditions that is an equality (a header, cookie or query value, or the user id), and
only the segments filed under the request's own values, plus those with no such condition, are
tried.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from proxy.config.model import (
    AttributeCondition,
    ClientIpCondition,
    Condition,
    PathPrefixCondition,
    Ramp,
    Segment,
    Source,
    UserIdCondition,
    Variant,
)
from proxy.routing.facts import RequestFacts

Matcher = Callable[[RequestFacts, str | None], bool]
"""A compiled condition: (request facts, cohort key or None) -> holds?"""


@lru_cache(maxsize=4096)
def _address(text: str) -> tuple[int, int] | None:
    """(IP version, address as an integer), or None when `text` is not an address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address.version, int(address)


def _client_ip_matcher(condition: ClientIpCondition) -> Matcher:
    ranges = tuple(
        (n.version, int(n.network_address), int(n.broadcast_address)) for n in condition.networks
    )

    def matches(facts: RequestFacts, key: str | None) -> bool:
        ip = facts.client_ip
        parsed = _address(ip) if ip else None
        if parsed is None:
            return False
        version, value = parsed
        return any(v == version and low <= value <= high for v, low, high in ranges)

    return matches


def compile_condition(condition: Condition) -> Matcher:
    """A predicate equivalent to `condition`, with all parsing done now rather than per request."""
    equality = _equality(condition)
    if equality is not None:
        _, read, values = equality
        return lambda facts, key: read(facts, key) in values
    if isinstance(condition, PathPrefixCondition):
        prefixes = condition.prefixes
        return lambda facts, key: facts.path.startswith(prefixes)
    assert isinstance(condition, ClientIpCondition)
    return _client_ip_matcher(condition)


@dataclass(frozen=True, slots=True)
class CompiledSegment:
    """A segment with its conditions compiled; `variant` or `ramp` as in `Segment`."""

    name: str
    when: tuple[Matcher, ...]
    unless: tuple[Matcher, ...]
    variant: Variant | None
    ramp: Ramp | None

    @classmethod
    def of(cls, segment: Segment) -> CompiledSegment:
        """Compile `segment`."""
        return cls(
            segment.name,
            tuple(compile_condition(c) for c in segment.when),
            tuple(compile_condition(c) for c in segment.unless),
            segment.variant,
            segment.ramp,
        )

    def matches(self, facts: RequestFacts, key: str | None) -> bool:
        """All `when` conditions hold and no `unless` condition does."""
        for condition in self.when:
            if not condition(facts, key):
                return False
        return not any(condition(facts, key) for condition in self.unless)


Reader = Callable[[RequestFacts, str | None], str | None]
"""Reads what an equality compares: (request facts, cohort key or None) -> value or None."""


def _equality(condition: Condition) -> tuple[tuple[str, str], Reader, frozenset[str]] | None:
    """What `condition` is an equality on (the attribute's identity, how to read it, the values
    it is compared with), or None when it is not one (a path prefix or a client address)."""
    if isinstance(condition, UserIdCondition):
        return ("user", ""), lambda facts, key: key, condition.ids
    if not isinstance(condition, AttributeCondition):
        return None
    name, values = condition.key.name, condition.values
    if condition.key.source is Source.HEADER:
        return ("header", name.lower()), lambda facts, key: facts.header(name), values
    if condition.key.source is Source.COOKIE:
        return ("cookie", name), lambda facts, key: facts.cookie(name), values
    return ("query", name), lambda facts, key: facts.query(name), values


class SegmentIndex:
    """A route's segments, compiled and indexed; `match` finds the first that matches."""

    __slots__ = ("_keyed", "_rest", "segments")

    def __init__(self, segments: Sequence[Segment]):
        """Compile and index `segments` (in config order)."""
        self.segments = tuple(CompiledSegment.of(s) for s in segments)
        keyed: dict[tuple[str, str], tuple[Reader, dict[str, list[int]]]] = {}
        rest: list[int] = []
        for position, segment in enumerate(segments):
            filed = next((found for c in segment.when if (found := _equality(c)) is not None), None)
            if filed is None:
                rest.append(position)
                continue
            identity, reader, values = filed
            table = keyed.setdefault(identity, (reader, {}))[1]
            for value in values:
                table.setdefault(value, []).append(position)
        self._keyed = tuple(
            (reader, {value: tuple(found) for value, found in table.items()})
            for reader, table in keyed.values()
        )
        self._rest = tuple(rest)

    def match(self, facts: RequestFacts, key: str | None) -> CompiledSegment | None:
        """The first segment (in config order) that matches, or None."""
        segments = self.segments
        best = len(segments)
        for reader, table in self._keyed:
            value = reader(facts, key)
            if value is not None:
                for position in table.get(value, ()):
                    if position >= best:
                        break
                    if segments[position].matches(facts, key):
                        best = position
                        break
        for position in self._rest:
            if position >= best:
                break
            if segments[position].matches(facts, key):
                best = position
                break
        return segments[best] if best < len(segments) else None
