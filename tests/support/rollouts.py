"""A route and a moment for tests of rollouts and their stores."""

from __future__ import annotations

from proxy.config.model import Cohort, KeySource, Ramp, Route, Source, Upstream

T0 = 1_796_083_200.0  # 2026-12-01 00:00 UTC
HOUR = 3600.0
ROUTE = Route(
    name="r",
    path_prefix="/",
    stable=Upstream("http://127.0.0.1:1"),
    candidate=Upstream("http://127.0.0.1:2"),
    cohort=Cohort((KeySource(Source.HEADER, "X-User-Id"),), "salt"),
    ramp=Ramp(base=0.1, slope=0.1, per=HOUR, max=0.5),  # 10 % at start, 50 % after 4 h
)
