"""The routing table: which route serves a path, compiled once per config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxy.config.model import Route
from proxy.routing.segments import CompiledSegment


@dataclass(frozen=True, slots=True)
class ActiveRoute:
    """A route ready for decisions: its segments compiled."""

    route: Route
    segments: tuple[CompiledSegment, ...]

    @classmethod
    def of(cls, route: Route) -> ActiveRoute:
        """Compile `route`."""
        return cls(route, tuple(CompiledSegment.of(s) for s in route.segments))


class RoutingTable:
    """Routes matched by path prefix, the longest matching prefix first; on one prefix, routes
    that name models before the one that does not (which takes every other model)."""

    __slots__ = ("_ordered", "by_model")

    def __init__(self, routes: Sequence[Route]):
        """Compile `routes` into a table."""
        active = [ActiveRoute.of(r) for r in routes]
        order = sorted(
            active, key=lambda a: (len(a.route.path_prefix), bool(a.route.models)), reverse=True
        )
        self._ordered = tuple(order)
        self.by_model = any(a.route.models for a in active)  # whether any route reads `model`

    def match(self, path: str, model: str | None = None) -> ActiveRoute | None:
        """The first route whose prefix starts `path` and, if it names models, names `model`."""
        for active in self._ordered:
            route = active.route
            if path.startswith(route.path_prefix) and (not route.models or model in route.models):
                return active
        return None

    def needs_model(self, path: str) -> bool:
        """Whether the route for `path` depends on the body's `model`."""
        for active in self._ordered:
            route = active.route
            if path.startswith(route.path_prefix):
                return bool(route.models)
        return False
