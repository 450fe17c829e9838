"""Outcomes reported by an application, joined to the variant that served each request."""

from __future__ import annotations

from dataclasses import replace

import pytest

from proxy.analysis.outcome_reports import (
    RESULTS,
    InvalidBatch,
    Report,
    ReportedOutcomes,
    parse_batch,
)
from proxy.config.model import (
    AnalysisSpec,
    Cohort,
    KeySource,
    OutcomeBasis,
    OutcomeCheck,
    OutcomesConfig,
    Route,
    Source,
    Upstream,
    Variant,
)
from proxy.records.request_id import CANDIDATE, NOT_COMPARED, STABLE, Minter, Reader, Served, key_of
from proxy.rollout.machine import identity_of

KEY = key_of("s")
ROUTE = Route(
    name="chat",
    path_prefix="/",
    stable=Upstream("http://127.0.0.1:1"),
    candidate=Upstream("http://127.0.0.1:2"),
    cohort=Cohort((KeySource(Source.HEADER, "X-User-Id"),), "salt"),
)
CODES = {Variant.STABLE: STABLE, Variant.CANDIDATE: CANDIDATE, None: NOT_COMPARED}


def served(
    variant: Variant | None,
    at: float,
    route: Route = ROUTE,
    key: bytes = KEY,
    share: int = 6554,
) -> str:
    minter = Minter(key)
    label = minter.label(route.name, identity_of(route))
    return minter.mint(label, at, CODES[variant], share).decode()


Joined = tuple[str, Variant | None, float, str, float, float]


def book_with(
    config: OutcomesConfig | None = None, routes: tuple[Route, ...] = (ROUTE,)
) -> tuple[ReportedOutcomes, list[Joined]]:
    taken: list[Joined] = []

    def sink(what: Served, name: str, value: float, now: float) -> None:
        taken.append((what.route, what.variant, what.weight, name, value, now))

    book = ReportedOutcomes(Reader(KEY), [sink])
    book.use(config or OutcomesConfig(), list(routes))
    return book, taken


def test_an_outcome_goes_to_the_variant_its_request_id_names():
    book, taken = book_with()
    reports = [
        Report(served(Variant.CANDIDATE, 100.0, share=16384), "click", 1.0),
        Report(served(Variant.STABLE, 100.0, share=16384), "rating", 4.5),
    ]
    assert book.take(reports, 160.0) == {
        "accepted": 2,
        "unknown": 0,
        "expired": 0,
        "stale": 0,
        "not_compared": 0,
        "too_many_names": 0,
    }
    share = 16384 / 65535  # the id carries the share, and with it the request's weight
    assert taken == [
        ("chat", Variant.CANDIDATE, pytest.approx(1 - share), "click", 1.0, 160.0),
        ("chat", Variant.STABLE, share, "rating", 4.5, 160.0),
    ]
    assert RESULTS == (
        "accepted",
        "unknown",
        "expired",
        "stale",
        "not_compared",
        "too_many_names",
    )


def test_what_cannot_be_joined_is_counted_by_reason_and_goes_nowhere():
    book, taken = book_with(OutcomesConfig(ttl=60.0, max_names=2))
    replaced = replace(ROUTE, candidate=Upstream("http://127.0.0.1:3"))  # a new rollout
    results = book.take(
        [
            Report("not-an-id", "click", 1.0),
            Report(served(Variant.STABLE, 100.0, key=key_of("other")), "click", 1.0),
            Report(served(Variant.STABLE, 100.0), "click", 1.0),  # 60.0 s old: still taken
            Report(served(Variant.STABLE, 99.999), "click", 1.0),  # 60.001 s: expired
            Report(served(Variant.STABLE, 150.0, route=replaced), "click", 1.0),
            Report(served(Variant.STABLE, 150.0, route=replace(ROUTE, name="gone")), "x", 1.0),
            Report(served(Variant.STABLE, 150.0), "a", 1.0),  # the second name
            Report(served(Variant.STABLE, 150.0), "b", 1.0),  # a third: too many
            Report(served(Variant.STABLE, 150.0), "click", 2.0),  # a known name still is
            Report(served(None, 150.0, share=0), "c", 1.0),  # not compared: no name taken
        ],
        160.0,
    )
    assert results == {
        "accepted": 3,
        "unknown": 2,
        "expired": 1,
        "stale": 2,
        "not_compared": 1,
        "too_many_names": 1,
    }
    assert [joined[3] for joined in taken] == ["click", "a", "click"]


def test_a_reload_that_replaces_the_rollout_makes_earlier_ids_stale():
    book, taken = book_with()
    before = served(Variant.CANDIDATE, 100.0)
    book.use(OutcomesConfig(), [replace(ROUTE, cohort=replace(ROUTE.cohort, salt="new"))])
    assert book.take([Report(before, "click", 1.0)], 101.0)["stale"] == 1
    assert taken == []


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ([], "the batch is empty"),
        ("click", "the outcome: expected an object with request_id, name and value"),
        ({"name": "click"}, "the outcome.request_id: expected the X-Grayscale-Request-Id"),
        ({"request_id": "x", "name": "a b"}, "the outcome.name: expected letters, digits"),
        ({"request_id": "x", "name": "n" * 65}, "the outcome.name: expected letters, digits"),
        ({"request_id": "x", "name": "c", "value": "1"}, "the outcome.value: expected a finite"),
        ({"request_id": "x", "name": "c", "value": True}, "the outcome.value: expected a finite"),
        ({"request_id": "x", "name": "c", "value": 1e400}, "the outcome.value: expected a finite"),
        ({"request_id": "x", "name": "c", "user": "u"}, "the outcome: unknown field 'user'"),
        ([{"request_id": "x", "name": "c"}, 3], "[1]: expected an object"),
        ([{"request_id": "x", "name": "c"}] * 11, "at most 10 outcomes per request, got 11"),
    ],
)
def test_a_batch_with_a_bad_item_is_refused_whole_naming_it(document, error):
    with pytest.raises(InvalidBatch) as refused:
        parse_batch(document, max_batch=10)
    assert refused.value.errors[0].startswith(error), refused.value.errors


def test_a_batch_reads_one_object_or_a_list_with_value_one_by_default():
    assert parse_batch({"request_id": "x", "name": "click"}, 10) == [Report("x", "click", 1.0)]
    batch = [
        {"request_id": "x", "name": "a.b:c-d_e", "value": -2},
        {"request_id": "y", "name": "r"},
    ]
    assert parse_batch(batch, 2) == [Report("x", "a.b:c-d_e", -2.0), Report("y", "r", 1.0)]


def test_names_are_bounded_per_route_and_kept_across_reloads():
    other = replace(ROUTE, name="other")
    book = ReportedOutcomes(Reader(KEY), [])
    book.use(OutcomesConfig(max_names=1), [ROUTE, other])
    assert book.take([Report(served(Variant.STABLE, 10.0), "a", 1.0)], 11.0)["accepted"] == 1
    assert book.take([Report(served(Variant.STABLE, 10.0, other), "b", 1.0)], 11.0)["accepted"]
    book.use(OutcomesConfig(max_names=1), [ROUTE, other])  # a reload: still one name each
    assert book.take([Report(served(Variant.STABLE, 10.0), "c", 1.0)], 11.0)["too_many_names"]
    book.use(OutcomesConfig(max_names=1), [ROUTE])
    book.use(OutcomesConfig(max_names=1), [ROUTE, other])  # `other` left and came back
    assert book.take([Report(served(Variant.STABLE, 10.0, other), "d", 1.0)], 11.0)["accepted"]


def test_a_book_that_follows_no_config_yet_takes_nothing():
    book = ReportedOutcomes(Reader(KEY), [])
    assert book.take([Report(served(Variant.STABLE, 10.0), "a", 1.0)], 11.0)["stale"] == 1


def test_the_refusal_names_the_first_three_errors_and_every_item():
    with pytest.raises(InvalidBatch) as refused:
        parse_batch([1, 2, 3, {"request_id": "", "name": "c"}], 10)
    assert len(refused.value.errors) == 4
    assert str(refused.value) == "; ".join(refused.value.errors[:3])
    assert refused.value.errors[3].startswith("[3].request_id: expected")


def test_an_outcome_of_a_request_the_analysis_does_not_compare_goes_nowhere():
    book, taken = book_with(OutcomesConfig(ttl=60.0, max_names=1))
    late = served(None, 10.0, share=0)
    assert book.take([Report(late, "click", 1.0)], 71.0)["expired"] == 1  # expired first
    replaced = replace(ROUTE, candidate=Upstream("http://127.0.0.1:3"))
    assert book.take([Report(served(None, 10.0, replaced, share=0), "a", 1.0)], 11.0)["stale"]
    counts = book.take([Report(served(None, 10.0, share=0), "click", 1.0)], 11.0)
    assert counts == {**dict.fromkeys(RESULTS, 0), "not_compared": 1}
    assert taken == []
    # it took no name of the route's bounded few: the only name left is still free
    assert book.take([Report(served(Variant.STABLE, 10.0), "b", 1.0)], 11.0)["accepted"] == 1


CHECKED = replace(
    ROUTE,
    analysis=AnalysisSpec(
        outcomes=(
            OutcomeCheck("click", 0.0),  # the default range, [0, 1]
            OutcomeCheck("rating", 0.5, per=OutcomeBasis.OUTCOME, range=(1.0, 5.0)),
        )
    ),
)


def test_a_value_outside_its_checks_range_refuses_the_batch_whole_naming_index_and_field():
    other = replace(ROUTE, name="other")  # no analysis: any value of any name
    book, taken = book_with(routes=(CHECKED, other))
    reports = [
        Report(served(Variant.STABLE, 10.0, CHECKED), "click", 1.0),  # a good one: not taken
        Report(served(Variant.STABLE, 10.0, CHECKED), "click", 1.5),
        Report(served(Variant.CANDIDATE, 10.0, CHECKED), "rating", 0.5),
        Report(served(Variant.STABLE, 10.0, other), "rating", 0.5),  # no check there
        Report(served(Variant.STABLE, 10.0, CHECKED), "views", 7.0),  # a name with no check
        Report(served(Variant.STABLE, 10.0, CHECKED), "click", -0.25),
    ]
    with pytest.raises(InvalidBatch) as refused:
        book.take(reports, 11.0)
    assert refused.value.errors == [
        "[1].value: 1.5 is outside the range of 'click' on route 'chat' (analysis.outcomes: "
        "[0, 1])",
        "[2].value: 0.5 is outside the range of 'rating' on route 'chat' (analysis.outcomes: "
        "[1, 5])",
        "[5].value: -0.25 is outside the range of 'click' on route 'chat' (analysis.outcomes: "
        "[0, 1])",
    ]
    assert taken == []
    assert book.take(reports[:1] + reports[3:5], 11.0)["accepted"] == 3  # the rest is taken


def test_a_range_holds_its_ends_and_any_id_of_the_route_even_one_not_counted():
    book, taken = book_with(OutcomesConfig(ttl=60.0), routes=(CHECKED,))
    ends = [
        Report(served(Variant.STABLE, 10.0, CHECKED), "click", 0.0),
        Report(served(Variant.CANDIDATE, 10.0, CHECKED), "click", 1.0),
        Report(served(Variant.STABLE, 10.0, CHECKED), "rating", 1.0),
        Report(served(Variant.STABLE, 10.0, CHECKED), "rating", 5.0),
    ]
    assert book.take(ends, 11.0)["accepted"] == 4 and len(taken) == 4
    not_compared, expired = served(None, 10.0, CHECKED, share=0), served(Variant.STABLE, 1.0)
    for not_counted, now in ((not_compared, 11.0), (expired, 100.0)):
        with pytest.raises(InvalidBatch):  # (not counted, but the value is still wrong)
            book.take([Report(not_counted, "click", 2.0)], now)
    assert book.take([Report(not_compared, "click", 1.0)], 11.0)["not_compared"] == 1
    assert book.take([Report(expired, "click", 1.0)], 100.0)["expired"] == 1
    unknown = book.take([Report("not-an-id", "click", 2.0)], 11.0)  # no route: no range
    assert unknown["unknown"] == 1
    book.use(OutcomesConfig(), [ROUTE])  # a reload without the checks: no range any more
    assert book.take([Report(served(Variant.STABLE, 10.0), "click", 2.0)], 11.0)["accepted"] == 1
