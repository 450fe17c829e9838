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
    """Routes matched by path prefix; the longest matching prefix wins."""

    __slots__ = ("_ordered",)

    def __init__(self, routes: Sequence[Route]):
        """Compile `routes` into a table."""
        active = [ActiveRoute.of(r) for r in routes]
        self._ordered = tuple(sorted(active, key=lambda a: len(a.route.path_prefix), reverse=True))

    def match(self, path: str) -> ActiveRoute | None:
        """The route with the longest prefix of `path`, or None."""
        for active in self._ordered:
            if path.startswith(active.route.path_prefix):
                return active
        return None
