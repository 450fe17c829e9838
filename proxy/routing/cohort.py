"""Finding a request's cohort key."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.config.model import KeySource, Source
from proxy.routing.facts import RequestFacts


def read_attribute(facts: RequestFacts, key: KeySource) -> str | None:
    """The value of a header, cookie or query parameter, or None when absent."""
    if key.source is Source.HEADER:
        return facts.header(key.name)
    if key.source is Source.COOKIE:
        return facts.cookie(key.name)
    return facts.query(key.name)


def cohort_key(facts: RequestFacts, sources: Iterable[KeySource]) -> str | None:
    """The first non-empty value among `sources`, in order; None when there is none.

    An empty value counts as missing: hashing it would put every such client in one bucket.
    """
    for source in sources:
        value = read_attribute(facts, source)
        if value:
            return value
    return None
