"""Comparing the answer a user got from stable with the candidate's answer to its shadow copy."""

from __future__ import annotations

import json

import pytest

from proxy.config.model import ExactCompare, JsonCompare, TextCompare
from proxy.dataplane.compare import ComparedAnswer, agree, similarity, stream_text


def answer(document: object, status: int = 200) -> ComparedAnswer:
    return ComparedAnswer(status, json.dumps(document).encode())


def sse(*tokens: str) -> ComparedAnswer:
    frames = [{"choices": [{"delta": {"role": "assistant", "content": ""}}]}]
    frames += [{"choices": [{"delta": {"content": token}}]} for token in tokens]
    body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    return ComparedAnswer(200, body + b"data: [DONE]\n\n", event_stream=True)


def test_exact_needs_the_same_status_and_bytes():
    assert agree(ExactCompare(), ComparedAnswer(200, b"a"), ComparedAnswer(200, b"a"))
    assert not agree(ExactCompare(), ComparedAnswer(200, b"a"), ComparedAnswer(200, b"a "))
    assert not agree(ExactCompare(), ComparedAnswer(200, b"a"), ComparedAnswer(201, b"a"))


def test_json_compares_the_named_fields_numbers_within_the_tolerance():
    compare = JsonCompare(("predictions.0.label", "predictions.0.score"), tolerance=0.05)
    stable = answer({"predictions": [{"label": "pos", "score": 0.91}], "model": "v1"})
    assert agree(compare, stable, answer({"predictions": [{"label": "pos", "score": 0.95}]}))
    assert not agree(compare, stable, answer({"predictions": [{"label": "pos", "score": 0.97}]}))
    assert not agree(compare, stable, answer({"predictions": [{"label": "neg", "score": 0.91}]}))
    assert not agree(compare, stable, answer({"predictions": [{"label": "pos"}]}))  # missing
    assert not agree(compare, stable, ComparedAnswer(200, b"not json"))
    assert not agree(
        compare, stable, answer({"predictions": [{"label": "pos", "score": 0.91}]}, 500)
    )
    both_missing = JsonCompare(("a.b",))
    assert agree(both_missing, answer({"x": 1}), answer({"y": 2}))
    assert not agree(JsonCompare(("flag",)), answer({"flag": True}), answer({"flag": 1}))
    assert agree(
        JsonCompare(("items.1",)), answer({"items": [0, "b"]}), answer({"items": [9, "b"]})
    )
    assert not agree(
        JsonCompare(("items.2",)), answer({"items": [0, 1, 2]}), answer({"items": [0]})
    )


def test_text_similarity_is_over_normalised_words():
    assert similarity("Hello, World!", "hello world") == 1.0
    assert similarity("", "") == 1.0
    assert similarity("a", "") == 0.0
    assert similarity("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(5 / 6)


def test_text_compares_chat_answers_and_streams_alike():
    compare = TextCompare("choices.0.message.content", min_similarity=0.8)
    whole = answer({"choices": [{"message": {"content": "The capital of France is Paris."}}]})
    assert agree(compare, whole, sse("The capital ", "of France", " is Paris"))
    assert not agree(compare, whole, sse("I do not know."))
    assert stream_text(sse("a", "b").body) == "ab"


def test_a_long_text_is_compared_over_its_first_words_only():
    long_a, long_b = "word " * 5000, "word " * 2000 + "other " * 3000
    assert similarity(long_a, long_b) == 1.0  # the first 2000 words are the same


def test_boundaries_and_edges_are_exact():
    assert not agree(
        JsonCompare(("a",)), ComparedAnswer(200, b"x"), ComparedAnswer(200, b"x")
    )  # no JSON at all
    assert agree(JsonCompare(("n",), tolerance=0.5), answer({"n": 1.0}), answer({"n": 1.5}))
    assert agree(JsonCompare(("items.1",)), answer({"items": [0]}), answer({"items": [5]}))
    assert similarity("a b", "a c") == 0.5
    assert agree(TextCompare("t", min_similarity=0.5), answer({"t": "a b"}), answer({"t": "a c"}))
    # A text field that is not a string (or missing) is no text.
    assert agree(TextCompare("t"), answer({"t": 5}), answer({"t": 6}))
    assert not agree(TextCompare("t"), answer({"x": 1}), answer({"t": "xxxx"}))
    # Long texts with a frequent word: difflib's junk heuristic would hide it, and is off.
    assert similarity("x " + "w " * 250, "w " * 250 + "x") == pytest.approx(500 / 502)
    # One side not JSON agrees with nothing, even on a field the other side lacks.
    assert not agree(JsonCompare(("a",)), answer({"x": 1}), ComparedAnswer(200, b"nope"))


def test_stream_texts_of_every_kind():
    chat = b'data:{"choices": [{"delta": {"content": "no space"}}]}\n\n'
    completions = b'data: {"choices": [{"text": "plain"}]}\n\n'
    tgi = b'data: {"token": {"text": "tgi"}}\n\n'
    assert stream_text(chat + completions + tgi + b"data: [DONE]\n\n") == "no spaceplaintgi"
