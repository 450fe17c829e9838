"""The routing table: which route serves a path, compiled once per config."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from proxy.config.model import Route
from proxy.routing.segments import SegmentIndex


@dataclass(frozen=True, slots=True)
class ActiveRoute:
    """A route ready for decisions: its segments compiled and indexed (None when it has none)."""

    route: Route
    segments: SegmentIndex | None

    @classmethod
    def of(cls, route: Route) -> ActiveRoute:
        """Compile `route`."""
        return cls(route, SegmentIndex(route.segments) if route.segments else None)


class RoutingTable:
    """Routes matched by path prefix, the longest matching prefix first; on one prefix, routes
    that name models before the one that does not (which takes every other model).

    Routes are indexed by prefix: a lookup tries the path's own prefixes, one per length that
    some route's prefix has, longest first, each a dictionary lookup. Its cost grows with the
    number of distinct prefix lengths (at most the longest prefix's length), never with the
    number of routes."""

    __slots__ = ("_by_prefix", "_lengths", "by_model")

    def __init__(self, routes: Sequence[Route]):
        """Compile `routes` into a table."""
        by_prefix: dict[str, list[ActiveRoute]] = {}
        for route in routes:
            by_prefix.setdefault(route.path_prefix, []).append(ActiveRoute.of(route))
        # (on one prefix: those naming models first, each group in config order)
        self._by_prefix = {
            prefix: tuple(sorted(group, key=lambda a: not a.route.models))
            for prefix, group in by_prefix.items()
        }
        self._lengths = tuple(sorted({len(prefix) for prefix in by_prefix}, reverse=True))
        self.by_model = any(route.models for route in routes)  # whether any route reads `model`

    def _candidates(self, path: str) -> Iterator[tuple[ActiveRoute, ...]]:
        """The routes on each prefix of `path` that some route has, longest first."""
        size = len(path)
        by_prefix = self._by_prefix
        for length in self._lengths:
            if length <= size:
                group = by_prefix.get(path[:length])
                if group is not None:
                    yield group

    def match(self, path: str, model: str | None = None) -> ActiveRoute | None:
        """The first route whose prefix starts `path` and, if it names models, names `model`."""
        size = len(path)
        by_prefix = self._by_prefix
        for length in self._lengths:  # (inlined `_candidates`: this runs for every request)
            if length <= size:
                group = by_prefix.get(path[:length])
                if group is not None:
                    for active in group:
                        models = active.route.models
                        if not models or model in models:
                            return active
        return None

    def needs_model(self, path: str) -> bool:
        """Whether the route for `path` depends on the body's `model`."""
        for group in self._candidates(path):
            return bool(group[0].route.models)
        return False
