"""Route matching by longest path prefix."""

from __future__ import annotations

from dataclasses import replace

from proxy.config.model import Cohort, KeySource, Route, Source, Upstream
from proxy.routing import RoutingTable

BASE = Route(
    name="x",
    path_prefix="/",
    stable=Upstream("http://127.0.0.1:1"),
    candidate=Upstream("http://127.0.0.1:2"),
    cohort=Cohort((KeySource(Source.HEADER, "X-User-Id"),), "s"),
)
ROUTES = [
    replace(BASE, name="models", path_prefix="/v1/models"),
    replace(BASE, name="sentiment", path_prefix="/v1/models/sentiment"),
    replace(BASE, name="chat", path_prefix="/v1/chat"),
]


def test_longest_prefix_wins_whatever_the_order():
    for routes in (ROUTES, ROUTES[::-1]):
        table = RoutingTable(routes)
        assert table.match("/v1/models/sentiment:predict").route.name == "sentiment"
        assert table.match("/v1/models/other").route.name == "models"
        assert table.match("/v1/chat/completions").route.name == "chat"


def test_no_match_returns_none():
    table = RoutingTable(ROUTES)
    assert table.match("/v2/anything") is None
    assert table.match("/") is None


def test_prefix_is_a_plain_string_prefix():
    table = RoutingTable(ROUTES)
    assert table.match("/v1/models/sentiment-v3/x").route.name == "sentiment"
