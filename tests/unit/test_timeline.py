"""A route's timeline of analysis rounds: bounded to an hour and a cap, each point's figures over
one span (the window, or the round's own requests with the sequential method), and points read
from another replica kept in order and only when they are points."""

from __future__ import annotations

from proxy.analysis.histogram import SIZE, bucket_of, value_of
from proxy.analysis.timeline import CAP, Figures, Point, Timeline, size
from proxy.analysis.verdict import Sample
from proxy.config.model import AnalysisMethod, AnalysisSpec

FIXED = AnalysisSpec(interval=10.0, window=60.0, method=AnalysisMethod.FIXED)
SEQUENTIAL = AnalysisSpec(interval=10.0, method=AnalysisMethod.SEQUENTIAL)


def observed(requests: int, errors: int, *latencies: tuple[float, int]) -> Sample:
    """`requests` with `errors` among them, and latencies (seconds, how many) in the histogram."""
    histogram = [0.0] * SIZE
    for seconds, count in latencies:
        histogram[bucket_of(seconds)] += count
    return Sample.unweighted(requests, errors, histogram)


def test_a_timeline_keeps_an_hour_at_its_interval_and_never_more_than_the_cap():
    assert size(10.0) == 360 and size(7.0) == 515  # (3600 / 7, rounded up)
    assert size(5.0) == CAP == 720 and size(0.2) == CAP and size(7200.0) == 1
    timeline = Timeline(AnalysisSpec(interval=0.2, method=AnalysisMethod.FIXED))
    for n in range(CAP + 5):
        timeline.add(float(n), "ramping", 0.1)
    assert len(timeline.points) == CAP
    assert (timeline.points[0].at, timeline.points[-1].at) == (5.0, CAP + 4.0)  # oldest went


def test_a_fixed_window_point_is_the_window_judged_with_its_latency_quantile():
    timeline = Timeline(FIXED)
    stable = observed(100, 2, (0.010, 90), (0.050, 8))
    candidate = observed(40, 0, (0.020, 40))
    figures = timeline.figures(100.0, stable, candidate)
    assert figures == (
        Figures(100, 2, value_of(bucket_of(0.050))),  # p95 of 98 latencies: among the slow 8
        Figures(40, 0, value_of(bucket_of(0.020))),
    )
    point = timeline.add(100.0, "ramping", 0.25, "pass", figures)
    assert timeline.to_json() == {
        "interval_seconds": 10.0,
        "covers_seconds": 60.0,
        "method": "fixed",
        "latency_quantile": 0.95,
        "capacity": 360,
        "points": [point.to_json()],
    }
    assert point.to_json()["candidate"] == {
        "requests": 40,
        "errors": 0,
        "latency_seconds": value_of(bucket_of(0.020)),
    }
    # A window without latencies (every request failed, or none): no quantile.
    assert timeline.figures(110.0, observed(3, 3), observed(0, 0)) == (
        Figures(3, 3, None),
        Figures(0, 0, None),
    )


def test_a_sequential_point_is_what_came_in_since_the_round_before():
    timeline = Timeline(SEQUENTIAL)
    assert timeline.covers == 10.0
    first = timeline.figures(100.0, observed(50, 1, (0.01, 49)), observed(10, 0, (0.01, 10)))
    assert first is None  # nothing to subtract yet: no figures rather than a longer span
    second = timeline.figures(
        110.0, observed(80, 4, (0.01, 49), (0.2, 27)), observed(30, 5, (0.01, 10), (0.3, 15))
    )
    assert second == (
        Figures(30, 3, value_of(bucket_of(0.2))),  # the 27 new latencies are all slow
        Figures(20, 5, value_of(bucket_of(0.3))),
    )
    # A new run counts anew: counts that went down are all the new run's.
    assert timeline.figures(120.0, observed(7, 0), observed(2, 1)) == (
        Figures(7, 0, None),
        Figures(2, 1, None),
    )
    # Counts older than two intervals (a replica that decides again) are not subtracted.
    assert timeline.figures(150.1, observed(500, 0), observed(100, 0)) is None
    assert timeline.figures(160.0, observed(510, 0), observed(104, 0)) == (
        Figures(10, 0, None),
        Figures(4, 0, None),
    )


def test_a_round_in_a_state_not_judged_keeps_its_share_and_state_alone():
    timeline = Timeline(SEQUENTIAL)
    point = timeline.add(5.0, "rolled_back", 0.0)
    assert point.to_json() == {
        "at": 5.0,
        "state": "rolled_back",
        "share": 0.0,
        "result": None,
        "stable": None,
        "candidate": None,
    }


def test_points_of_another_replica_are_kept_in_order_and_only_when_they_are_points():
    decider, follower = Timeline(FIXED), Timeline(FIXED)
    figures = decider.figures(10.0, observed(20, 1, (0.01, 19)), observed(5, 0, (0.02, 5)))
    assert figures is not None
    published = decider.add(10.0, "ramping", 0.2, "inconclusive", figures).to_json()
    follower.follow(published)
    follower.follow(published)  # (read again at the next round: kept once)
    assert list(follower.points) == list(decider.points)
    follower.follow(None)
    follower.follow({**published, "at": 5.0})  # older than the last one held
    follower.follow({**published, "at": 20.0, "share": "a lot"})
    follower.follow({**published, "at": 21.0, "at_all": True, "state": 3})
    assert len(follower.points) == 1
    # Figures of the wrong types are dropped, the rest of the point kept; both variants or none.
    follower.follow({**published, "at": 30.0, "stable": {"requests": -1, "errors": 0}})
    follower.follow({**published, "at": 40.0, "result": 7, "candidate": {"requests": True}})
    follower.follow({**published, "at": 50.0, "stable": {**published["stable"], "errors": 2.5}})
    assert [(p.at, p.result, p.stable, p.candidate) for p in list(follower.points)[1:]] == [
        (30.0, "inconclusive", None, None),
        (40.0, None, None, None),
        (50.0, "inconclusive", None, None),
    ]
    kept = {**published, "at": 60.0, "candidate": {**published["candidate"], "latency_seconds": 1}}
    follower.follow(kept)
    assert follower.points[-1] == Point(
        60.0, "ramping", 0.2, "inconclusive", figures[0], Figures(5, 0, 1.0)
    )
