"""`grayscale simulate`: the share day by day, checked against synthetic users."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, datetime

from proxy.config.model import Config, Ramp, Route
from proxy.routing import bucket, current_share, threshold

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Cell:
    """One route or segment on one day: the configured share and the sample's share."""

    share: float
    sampled: float | None  # None for a pinned segment


@dataclass(frozen=True, slots=True)
class RouteSimulation:
    """A route's shares for each day, per column (the route's own ramp, then each segment)."""

    route: Route
    start: float
    columns: tuple[str, ...]
    days: tuple[tuple[float, tuple[Cell, ...]], ...]

    @property
    def largest_gap(self) -> float:
        """The largest difference between configured and sampled share, in share units."""
        return max(
            (
                abs(c.share - c.sampled)
                for _, cells in self.days
                for c in cells
                if c.sampled is not None
            ),
            default=0.0,
        )


def simulate_route(route: Route, start: float, days: int, users: int) -> RouteSimulation:
    """Shares of `route` on days 0..`days` after `start`, each checked on `users` synthetic ids."""
    buckets = sorted(bucket(route.cohort.salt, f"user-{i}") for i in range(users))
    columns: list[tuple[str, Ramp | None, str | None]] = [("(default)", route.ramp, None)]
    for segment in route.segments:
        pinned = segment.variant.value if segment.variant is not None else None
        columns.append((segment.name, segment.ramp, pinned))
    rows = []
    for day in range(days + 1):
        now = start + day * DAY
        cells = []
        for _, ramp, pinned in columns:
            if ramp is None:
                cells.append(Cell(1.0 if pinned == "candidate" else 0.0, None))
                continue
            share = current_share(ramp, start, now)
            sampled = bisect.bisect_left(buckets, threshold(share)) / users
            cells.append(Cell(share, sampled))
        rows.append((now, tuple(cells)))
    return RouteSimulation(route, start, tuple(c[0] for c in columns), tuple(rows))


def _cell(cell: Cell) -> str:
    if cell.sampled is None:
        return "pinned " + ("candidate" if cell.share else "stable")
    return f"{cell.share:7.2%} / {cell.sampled:7.2%}"


def render(config: Config, start: float, days: int, users: int) -> str:
    """The report printed by `grayscale simulate`."""
    lines = [
        f"Candidate share per day: configured / measured on {users} synthetic users "
        "(user-0, user-1, ...).",
    ]
    for route in config.routes:
        route_start = route.ramp.start if route.ramp.start is not None else start
        sim = simulate_route(route, route_start, days, users)
        when = datetime.fromtimestamp(route_start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        origin = "" if route.ramp.start is not None else " (when first loaded; assumed)"
        lines += [
            "",
            f"route {route.name}  prefix {route.path_prefix}  salt {route.cohort.salt!r}  "
            f"start {when}{origin}",
        ]
        width = 21
        lines.append("day  date        " + "".join(f"{c:>{width}}" for c in sim.columns))
        for day, (now, cells) in enumerate(sim.days):
            date = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
            lines.append(f"{day:>3}  {date}  " + "".join(f"{_cell(c):>{width}}" for c in cells))
        lines.append(f"largest gap between configured and measured share: {sim.largest_gap:.2%}")
    return "\n".join(lines)
