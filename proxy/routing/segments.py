"""Segment rules, compiled once per config into plain predicates; first match wins."""

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
    if isinstance(condition, AttributeCondition):
        name, values = condition.key.name, condition.values
        if condition.key.source is Source.HEADER:
            return lambda facts, key: facts.header(name) in values
        if condition.key.source is Source.COOKIE:
            return lambda facts, key: facts.cookie(name) in values
        return lambda facts, key: facts.query(name) in values
    if isinstance(condition, PathPrefixCondition):
        prefixes = condition.prefixes
        return lambda facts, key: facts.path.startswith(prefixes)
    if isinstance(condition, UserIdCondition):
        ids = condition.ids
        return lambda facts, key: key is not None and key in ids
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


def match_segment(
    segments: Sequence[CompiledSegment], facts: RequestFacts, key: str | None
) -> CompiledSegment | None:
    """The first segment that matches, or None."""
    for segment in segments:
        if segment.matches(facts, key):
            return segment
    return None
