"""`grayscale simulate`: the share step by step (a day by default), checked against synthetic
users, and when each ramp reaches its maximum."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, datetime

from proxy.config.model import Config, Ramp, Route
from proxy.routing import bucket, current_share, ramp_reaches_max, threshold

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Cell:
    """One route or segment on one day: the configured share and the sample's share."""

    share: float
    sampled: float | None  # None for a pinned segment


@dataclass(frozen=True, slots=True)
class RouteSimulation:
    """A route's shares at each step, per column (the route's own ramp, then each segment), and
    when each column reaches its maximum (None: never; a pinned segment has none)."""

    route: Route
    start: float
    columns: tuple[str, ...]
    days: tuple[tuple[float, tuple[Cell, ...]], ...]
    reaches_max: tuple[tuple[float, float | None] | None, ...]  # (max, when) per column

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


def simulate_route(
    route: Route, start: float, steps: int, users: int, step: float = DAY
) -> RouteSimulation:
    """Shares of `route` at `step`s 0..`steps` after `start`, each checked on `users` synthetic
    ids."""
    buckets = sorted(bucket(route.cohort.salt, f"user-{i}") for i in range(users))
    columns: list[tuple[str, Ramp | None, str | None]] = [("(default)", route.ramp, None)]
    for segment in route.segments:
        pinned = segment.variant.value if segment.variant is not None else None
        columns.append((segment.name, segment.ramp, pinned))
    rows = []
    for index in range(steps + 1):
        now = start + index * step
        cells = []
        for _, ramp, pinned in columns:
            if ramp is None:
                cells.append(Cell(1.0 if pinned == "candidate" else 0.0, None))
                continue
            share = current_share(ramp, start, now)
            sampled = bisect.bisect_left(buckets, threshold(share)) / users
            cells.append(Cell(share, sampled))
        rows.append((now, tuple(cells)))
    reaches = tuple(
        None
        if ramp is None
        else (ramp.max, ramp_reaches_max(ramp, ramp.start if ramp.start is not None else start))
        for _, ramp, _ in columns
    )
    return RouteSimulation(route, start, tuple(c[0] for c in columns), tuple(rows), reaches)


def _cell(cell: Cell) -> str:
    if cell.sampled is None:
        return "pinned " + ("candidate" if cell.share else "stable")
    return f"{cell.share:7.2%} / {cell.sampled:7.2%}"


def _span(seconds: float) -> str:
    """A duration as a person reads it: `2.5s`, `2m30s`, `19d 20h`."""
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"


def _time(at: float, whole_days: bool) -> str:
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%Y-%m-%d") if whole_days else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def render(config: Config, start: float, steps: int, users: int, step: float = DAY) -> str:
    """The report printed by `grayscale simulate`."""
    whole_days = step % DAY == 0
    lines = [
        f"Candidate share every {_span(step)}: configured / measured on {users} synthetic users "
        "(user-0, user-1, ...).",
    ]
    for route in config.routes:
        route_start = route.ramp.start if route.ramp.start is not None else start
        sim = simulate_route(route, route_start, steps, users, step)
        when = datetime.fromtimestamp(route_start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        origin = "" if route.ramp.start is not None else " (when first loaded; assumed)"
        lines += [
            "",
            f"route {route.name}  prefix {route.path_prefix}  salt {route.cohort.salt!r}  "
            f"start {when}{origin}",
        ]
        width = 21
        moment = len(_time(route_start, whole_days))
        counter = "day" if step == DAY else "step"
        lines.append(
            f"{counter:>4}  {'date' if whole_days else 'time':<{moment}}"
            + "".join(f"{c:>{width}}" for c in sim.columns)
        )
        for index, (now, cells) in enumerate(sim.days):
            lines.append(
                f"{index:>4}  {_time(now, whole_days)}"
                + "".join(f"{_cell(c):>{width}}" for c in cells)
            )
        lines.append(f"largest gap between configured and measured share: {sim.largest_gap:.2%}")
        for column, reach in zip(sim.columns, sim.reaches_max, strict=True):
            if reach is None:
                continue
            top, at = reach
            if at is None:
                lines.append(f"{column} never reaches its max ({top:.2%}): it does not grow")
            else:
                offset = at - sim.start
                relative = (
                    f"{_span(offset)} after the start"
                    if offset >= 0
                    else f"{_span(-offset)} before the route's start"
                )
                reached = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                lines.append(f"{column} reaches its max ({top:.2%}) at {reached}, {relative}")
    return "\n".join(lines)
