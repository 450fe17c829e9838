"""Outcome values and repeats: numbers no float holds, absurd magnitudes, a (request id, name)
reported again; and answers that stay JSON when the analysis's arithmetic overflows."""

from __future__ import annotations

import json
import math

import pytest

from proxy.analysis.outcome_reports import (
    RESULTS,
    InvalidBatch,
    Report,
    ReportedOutcomes,
    json_number,
    parse_batch,
)
from proxy.analysis.verdict import Check, Result, Verdict
from proxy.api.answers import finite, json_answer
from proxy.config.model import MAX_OUTCOME, OutcomesConfig, Variant
from proxy.records.request_id import Reader
from tests.unit.test_outcomes import KEY, ROUTE, book_with, served

INSANE = "the outcome.value: expected a finite number between -1e+12 and 1e+12"


def strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "value",
    [
        10**400,  # no float holds it: float() and math.isfinite() raise OverflowError
        -(10**400),
        math.inf,
        -math.inf,
        math.nan,
        1e200,
        -1.7e308,
        MAX_OUTCOME * (1 + 1e-15),
        10**12 + 1,  # (compared exactly, not as a float)
    ],
)
def test_a_value_that_is_not_a_sane_finite_number_refuses_the_batch(value):
    with pytest.raises(InvalidBatch) as refused:
        parse_batch({"request_id": "x", "name": "c", "value": value}, 10)
    assert refused.value.errors == [INSANE]


@pytest.mark.parametrize("value", [10**12, -(10**12), 1e12, -1e12, 0, 5e-324, 3.5])
def test_values_up_to_the_magnitude_either_way_are_taken(value):
    assert parse_batch({"request_id": "x", "name": "c", "value": value}, 10) == [
        Report("x", "c", float(value))
    ]


def test_json_integers_too_long_for_a_value_are_read_as_floats_not_converted():
    assert json_number("12345678901234567890") == 12345678901234567890
    assert isinstance(json_number("-1234567890123456789"), int)
    assert json_number("123456789012345678901") == pytest.approx(1.2345678901234568e20)
    # Past Python's 4,300-digit limit int() raises ValueError; read as a float, it is refused
    # as a value like any other.
    for digits in ("9" * 401, "9" * 5000, "-" + "9" * 100_000):
        document = json.loads(
            f'{{"request_id": "x", "name": "c", "value": {digits}}}', parse_int=json_number
        )
        assert math.isinf(document["value"])
        with pytest.raises(InvalidBatch) as refused:
            parse_batch(document, 10)
        assert refused.value.errors == [INSANE]


def test_a_pair_reported_again_in_the_batch_or_later_is_a_duplicate_counted_once():
    book, taken = book_with()
    first, second = served(Variant.STABLE, 100.0), served(Variant.CANDIDATE, 100.0)
    counts = book.take([Report(first, "click", 1.0)] * 1000, 101.0)
    assert counts == {**dict.fromkeys(RESULTS, 0), "accepted": 1, "duplicate": 999}
    counts = book.take(
        [
            Report(first, "click", 0.0),  # a different value changes nothing: the first stays
            Report(first, "view", 1.0),  # another name of the same request
            Report(second, "click", 1.0),  # another request
        ],
        102.0,
    )
    assert counts == {**dict.fromkeys(RESULTS, 0), "accepted": 2, "duplicate": 1}
    assert [(joined[1], joined[3], joined[4]) for joined in taken] == [
        (Variant.STABLE, "click", 1.0),
        (Variant.STABLE, "view", 1.0),
        (Variant.CANDIDATE, "click", 1.0),
    ]
    assert book.tracked == 3


def test_the_answer_names_a_repeat_only_when_there_is_one():
    book, _ = book_with()
    assert book.take([Report(served(Variant.STABLE, 100.0), "c", 1.0)], 101.0) == dict.fromkeys(
        RESULTS, 0
    ) | {"accepted": 1}


def test_remembered_pairs_expire_with_their_requests_ttl():
    book, taken = book_with(OutcomesConfig(ttl=120.0))
    early, late = served(Variant.STABLE, 1000.0), served(Variant.STABLE, 1100.0)
    assert book.take([Report(early, "c", 1.0), Report(late, "c", 1.0)], 1100.0)["accepted"] == 2
    assert book.tracked == 2
    # At 1150 s the early request is older than the ttl: its repeat is expired, and its
    # minute (960-1019 s) is forgotten, every request in it being expired since 1140 s.
    counts = book.take([Report(early, "c", 1.0), Report(late, "c", 1.0)], 1150.0)
    assert (counts["expired"], counts["duplicate"], book.tracked) == (1, 1, 1)
    assert book.take([Report(late, "c", 1.0)], 1261.0)["expired"] == 1
    assert book.tracked == 0
    assert len(taken) == 2


def test_beyond_max_tracked_a_new_pair_is_untracked_and_not_counted():
    book, taken = book_with(OutcomesConfig(ttl=60.0, max_tracked=2, max_names=3))
    ids = [served(Variant.STABLE, 1000.0) for _ in range(3)]
    counts = book.take([Report(rid, "c", 1.0) for rid in ids], 1001.0)
    assert counts == {**dict.fromkeys(RESULTS, 0), "accepted": 2, "untracked": 1}
    # A repeat of a remembered pair is still told; an untracked report took no name.
    counts = book.take([Report(ids[0], "c", 1.0), Report(ids[2], "new", 1.0)], 1002.0)
    assert (counts["duplicate"], counts["untracked"]) == (1, 1)
    assert len(taken) == 2
    # Once the remembered pairs expire, there is room again.
    fresh = served(Variant.STABLE, 1200.0)
    assert book.take([Report(fresh, "new", 1.0)], 1200.0)["accepted"] == 1
    assert book.tracked == 1


def test_a_duplicate_takes_no_name_and_the_names_bound_comes_before_tracking():
    book, _ = book_with(OutcomesConfig(max_names=1, max_tracked=1))
    rid = served(Variant.STABLE, 100.0)
    assert book.take([Report(rid, "a", 1.0)], 101.0)["accepted"] == 1
    counts = book.take([Report(rid, "a", 1.0), Report(rid, "b", 1.0)], 101.0)
    assert (counts["duplicate"], counts["too_many_names"]) == (1, 1)
    assert "untracked" not in counts


def test_pairs_are_keyed_by_the_whole_request_id_and_name():
    book = ReportedOutcomes(Reader(KEY), [])
    book.use(OutcomesConfig(), [ROUTE])
    rid, other = served(Variant.STABLE, 100.0), served(Variant.STABLE, 100.0)
    # (the name and the id cannot be moved across their separator: names have no newline)
    reports = [Report(rid, "a", 1.0), Report(other, "a", 1.0), Report(rid, "aa", 1.0)]
    assert book.take(reports, 101.0)["accepted"] == 3
    # Another spelling of an id is no id: a repeat cannot pass for a new request.
    respelled = [rid + "a", rid.upper(), rid[: rid.rindex(".")] + "." + "0" * 12]
    counts = book.take([Report(spelling, "b", 1.0) for spelling in respelled], 101.0)
    assert (counts["unknown"], counts["accepted"]) == (3, 0)


def test_a_checks_non_finite_numbers_are_null_in_its_json():
    check = Check(
        "outcome:rating",
        Result.SUSPECT,
        0.3,
        math.inf,
        math.nan,
        {"requests": 40, "mean": math.inf, "nested": [1.0, -math.inf]},
        {"requests": 40, "mean": 1.0},
        "overflowed",
        upper=-math.inf,
        alpha=0.01,
    )
    written = check.to_json()
    assert (written["observed"], written["bound"], written["upper"]) == (None, None, None)
    assert written["stable"] == {"requests": 40, "mean": None, "nested": [1.0, None]}
    assert (written["threshold"], written["alpha"], written["candidate"]["mean"]) == (
        0.3,
        0.01,
        1.0,
    )
    verdict = Verdict(1.0, Result.SUSPECT, (check,))
    assert strict_json(json.dumps(verdict.to_json(), allow_nan=False)) == verdict.to_json()


def test_every_admin_answer_is_strict_json():
    data = {"a": [math.nan, 1.5, {"b": -math.inf}], "c": (math.inf,), "d": "NaN", "e": 2}
    assert finite(data) == {"a": [None, 1.5, {"b": None}], "c": [None], "d": "NaN", "e": 2}
    answer = json_answer(data, status=503)
    assert answer.status == 503 and answer.content_type == "application/json"
    assert isinstance(answer.text, str)
    assert strict_json(answer.text) == finite(data)
