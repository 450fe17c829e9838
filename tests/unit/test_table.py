"""Route matching by longest path prefix."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

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


MODEL_ROUTES = [
    replace(BASE, name="rest", path_prefix="/v1/"),
    replace(BASE, name="llama", path_prefix="/v1/", models=("llama-3-8b", "llama-3-70b")),
    replace(BASE, name="mistral", path_prefix="/v1/", models=("mistral-7b",)),
    replace(BASE, name="root", path_prefix="/"),
    replace(BASE, name="embed", path_prefix="/v1/embeddings", models=("e5",)),
]


def test_on_one_prefix_routes_that_name_the_model_come_before_the_one_that_does_not():
    for routes in (MODEL_ROUTES, MODEL_ROUTES[::-1]):
        table = RoutingTable(routes)
        assert table.by_model
        assert table.match("/v1/chat", "llama-3-70b").route.name == "llama"
        assert table.match("/v1/chat", "mistral-7b").route.name == "mistral"
        assert table.match("/v1/chat", "gpt-9").route.name == "rest"
        assert table.match("/v1/chat", None).route.name == "rest"
        assert table.match("/v1/chat").route.name == "rest"
        # A longer prefix that names models, and a model it does not name: the shorter ones.
        assert table.match("/v1/embeddings", "e5").route.name == "embed"
        assert table.match("/v1/embeddings", "llama-3-8b").route.name == "llama"
        assert table.match("/v1/embeddings", "other").route.name == "rest"
        assert table.match("/health", "llama-3-8b").route.name == "root"


def test_only_paths_whose_first_candidate_route_names_models_read_the_body():
    table = RoutingTable(MODEL_ROUTES)
    assert table.needs_model("/v1/chat") and table.needs_model("/v1/embeddings")
    assert not table.needs_model("/health") and not table.needs_model("/v2")
    assert not RoutingTable(ROUTES).by_model
    assert not RoutingTable(ROUTES).needs_model("/v1/models/x")
    only_models = RoutingTable([replace(BASE, name="m", path_prefix="/v1/", models=("m",))])
    assert only_models.needs_model("/v1/x") and not only_models.needs_model("/v2/x")
    assert only_models.match("/v1/x", "n") is None


def linear_match(routes: list[Route], path: str, model: str | None) -> str | None:
    """The rule as first written, a scan of every route: the oracle for the index."""
    ordered = sorted(routes, key=lambda r: (len(r.path_prefix), bool(r.models)), reverse=True)
    for route in ordered:
        if path.startswith(route.path_prefix) and (not route.models or model in route.models):
            return route.name
    return None


PIECES = st.sampled_from(["/", "v1", "/v1", "models", "/m", "a", "ab", "-", "/chat"])
MODELS = st.sampled_from(["m1", "m2", "m3"])


@given(
    specs=st.lists(
        st.tuples(
            st.lists(PIECES, max_size=4).map(lambda parts: "/" + "".join(parts)),
            st.lists(MODELS, max_size=2, unique=True),
        ),
        min_size=1,
        max_size=12,
    ),
    path=st.lists(PIECES, max_size=6).map(lambda parts: "/" + "".join(parts)),
    model=st.one_of(st.none(), MODELS),
)
def test_the_index_matches_what_a_scan_of_every_route_matches(
    specs: list[tuple[str, list[str]]], path: str, model: str | None
) -> None:
    routes = [
        replace(BASE, name=f"r{i}", path_prefix=prefix, models=tuple(models))
        for i, (prefix, models) in enumerate(specs)
    ]
    table = RoutingTable(routes)
    found = table.match(path, model)
    assert (None if found is None else found.route.name) == linear_match(routes, path, model)
    first = next(
        (
            r
            for r in sorted(
                routes, key=lambda r: (len(r.path_prefix), bool(r.models)), reverse=True
            )
            if path.startswith(r.path_prefix)
        ),
        None,
    )
    assert table.needs_model(path) == (first is not None and bool(first.models))


def test_a_thousand_routes_are_looked_up_without_a_scan() -> None:
    # The index's lookups grow with the distinct prefix lengths, not with the routes: a table
    # of 1,000 routes of one length makes one dictionary lookup per request, whichever matches.
    routes = [replace(BASE, name=f"r{i}", path_prefix=f"/v1/models/m-{i:04d}") for i in range(1000)]
    table = RoutingTable(routes)
    assert table._lengths == (len("/v1/models/m-0000"),)
    assert table.match("/v1/models/m-0999/infer").route.name == "r999"
    assert table.match("/v1/models/m-1000/infer") is None
