"""Segment rules: ordered, first match wins."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from proxy.config.model import (
    AttributeCondition,
    ClientIpCondition,
    Condition,
    PathPrefixCondition,
    Segment,
    UserIdCondition,
)
from proxy.routing.cohort import read_attribute
from proxy.routing.facts import RequestFacts


def condition_matches(condition: Condition, facts: RequestFacts, key: str | None) -> bool:
    """Whether one condition holds for a request whose cohort key is `key`."""
    if isinstance(condition, AttributeCondition):
        return read_attribute(facts, condition.key) in condition.values
    if isinstance(condition, PathPrefixCondition):
        return facts.path.startswith(condition.prefixes)
    if isinstance(condition, UserIdCondition):
        return key is not None and key in condition.ids
    return _ip_in(facts.client_ip, condition)


def _ip_in(client_ip: str | None, condition: ClientIpCondition) -> bool:
    if not client_ip:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in network for network in condition.networks)


def segment_matches(segment: Segment, facts: RequestFacts, key: str | None) -> bool:
    """All `when` conditions hold and no `unless` condition does."""
    return all(condition_matches(c, facts, key) for c in segment.when) and not any(
        condition_matches(c, facts, key) for c in segment.unless
    )


def match_segment(
    segments: Sequence[Segment], facts: RequestFacts, key: str | None
) -> Segment | None:
    """The first segment that matches, or None."""
    for segment in segments:
        if segment_matches(segment, facts, key):
            return segment
    return None
