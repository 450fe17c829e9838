"""The first token and the output tokens of a model's answer, read as it passes."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.dataplane.stream_meter import (
    LINE_LIMIT,
    StreamMeter,
    names_output_tokens,
    whole_answer_tokens,
)


def frame(delta: dict[str, object] | None = None, **extra: object) -> bytes:
    document: dict[str, object] = {"choices": [{"index": 0, "delta": delta or {}}], **extra}
    return b"data: " + json.dumps(document).encode() + b"\n\n"


ROLE = frame({"role": "assistant", "content": ""})
TOKEN = frame({"content": "Hello"})
USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 42}}\n\n'
DONE = b"data: [DONE]\n\n"


def meter_of(*chunks: bytes) -> StreamMeter:
    meter = StreamMeter()
    for at, chunk in enumerate(chunks):
        meter.feed(chunk, float(at))
    return meter


def test_a_role_only_first_frame_is_not_the_first_token():
    meter = meter_of(ROLE, b": keep-alive\n\n", frame({}), TOKEN, USAGE, DONE)
    assert (meter.first_token, meter.output_tokens) == (3.0, 42)


@pytest.mark.parametrize(
    "event",
    [
        frame({"reasoning_content": "thinking"}),
        frame({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}),
        b'data: {"choices": [{"index": 0, "text": "a", "finish_reason": null}]}\n\n',
        b'data: {"token": {"id": 1, "text": "Hi", "special": false}}\n\n',  # TGI's own stream
        b"data: plain text\n\n",
        b'data: {"choices": [{"delta": {"content": "a"}}]}\r\n\r\n',
        b'data:{"choices": [{"delta": {"content": "a"}}]}\n\n',  # no space after the colon
        b'event: message\nid: 7\ndata: {"choices":\ndata: [{"delta": {"content": "a"}}]}\n\n',
    ],
)
def test_what_counts_as_a_token(event):
    assert meter_of(ROLE, event).first_token == 1.0


@pytest.mark.parametrize(
    "event",
    [
        DONE,
        b": comment\n\n",
        b"event: ping\n\n",
        frame({"content": None}),
        b'data: {"choices": [{"delta": {"content": ""}}], "usage": null}\n\n',
        b'data: {"token": {"text": ""}}\n\n',
        b"data: " + b"[" * 5000 + b"]" * 5000 + b"\n\n",  # nested too deeply to read
    ],
)
def test_what_is_not_a_token(event):
    assert meter_of(event).first_token is None


def test_the_token_counts_when_its_event_ends_not_when_it_begins():
    meter = meter_of(TOKEN[:10], TOKEN[10:-1], TOKEN[-1:])
    assert meter.first_token == 2.0


def test_usage_from_the_last_frame_that_has_it_and_tgi_or_anthropic_names():
    assert meter_of(TOKEN, USAGE).output_tokens == 42
    other = b'data: {"type": "message_delta", "usage": {"output_tokens": 7}}\n\n'
    assert meter_of(TOKEN, other).output_tokens == 7
    assert meter_of(TOKEN, b'data: {"usage": {"completion_tokens": -1}}\n\n').output_tokens is None
    assert (
        meter_of(TOKEN, b'data: {"usage": {"completion_tokens": true}}\n\n').output_tokens is None
    )


def test_a_line_over_the_limit_is_skipped_and_the_stream_read_on():
    huge = b"data: " + b"x" * (LINE_LIMIT + 10)
    meter = StreamMeter()
    meter.feed(huge[: LINE_LIMIT // 2], 0.0)
    meter.feed(huge[LINE_LIMIT // 2 : LINE_LIMIT + 2], 1.0)  # over the limit: dropped
    meter.feed(huge[LINE_LIMIT + 2 :], 2.0)  # still that line: not kept
    assert len(meter._line) == 0
    for at, chunk in enumerate((b"\n\n", ROLE, TOKEN), start=3):
        meter.feed(chunk, float(at))
    assert meter.first_token == 5.0
    exact = b"data: " + json.dumps({"choices": [{"delta": {"content": "x"}}]}).encode()
    exact += b" " * (LINE_LIMIT - len(exact))  # a line of exactly LINE_LIMIT bytes is read
    assert meter_of(exact[:100], exact[100:], b"\n\n").first_token == 2.0


def test_edges_of_the_event_stream_format():
    role_in_two_lines = b'data: {"choices": [{"delta":\ndata: {"role": "assistant"}}]}\n\n'
    assert meter_of(role_in_two_lines).first_token is None  # one event, joined by a newline
    no_space = b'data:{"choices": [{"delta": {"role": "assistant"}}]}\n\n'
    assert meter_of(no_space).first_token is None
    crlf_usage = USAGE.replace(b"\n", b"\r\n")
    assert meter_of(TOKEN, crlf_usage).output_tokens == 42
    assert meter_of(ROLE, USAGE).output_tokens == 42  # usage before any token is read too
    meter = StreamMeter()  # the event's blank line arrives as "\r", then "\n"
    meter.feed(TOKEN[:-2] + b"\r\n\r", 0.0)
    meter.feed(b"\n", 1.0)
    assert meter.first_token == 0.0  # the line ended with the CR (a lone CR ends one too)
    assert meter_of(b'data: "hello"\n\n').first_token == 0.0
    assert meter_of(b"data: 5\n\n").first_token == 0.0
    assert meter_of(b'data: ""\n\n', b"data: []\n\n", b"data: {}\n\n").first_token is None
    mixed = b'data: {"choices": [1, {"delta": {"content": "a"}}]}\n\n'
    assert meter_of(mixed).first_token == 0.0
    assert meter_of(TOKEN, b'data: {"usage": {"completion_tokens": 0}}\n\n').output_tokens == 0


def test_whole_answers_give_their_usage():
    answer = {"choices": [{"message": {"content": "hi"}}], "usage": {"completion_tokens": 5}}
    assert whole_answer_tokens(json.dumps(answer).encode()) == 5
    assert whole_answer_tokens(b'{"ok": true}') is None
    assert whole_answer_tokens(b'not json "completion_tokens"') is None
    anthropic = {"content": [{"text": "hi"}], "usage": {"input_tokens": 3, "output_tokens": 7}}
    assert whole_answer_tokens(json.dumps(anthropic).encode()) == 7


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b'{"usage": {"completion_tokens": 5}}', True),
        (b'{"usage": {"output_tokens": 5}}', True),
        (b'{"usage": {"prompt_tokens": 5, "total_tokens": 5}, "x": "completion_tokens"}', True),
        (b"completion_tokens", True),  # at the very start
        (b'{"usage": {"prompt_tokens": 5, "total_tokens": 5}}', False),  # an embedding's
        (b'{"usage": {"input_tokens": 5}}', False),
        (b'{"completion": 1, "_tokens": 2}', False),
        (b"_tokens", False),
        (b"", False),
    ],
)
def test_what_names_output_tokens(data, named):
    assert names_output_tokens(data) is named


def test_an_answer_without_output_token_names_is_not_parsed(monkeypatch):
    """An embedding's usage (`prompt_tokens`, `total_tokens`) never says output tokens: such an
    answer, however large, is not parsed; one that names them is, and counts."""
    parsed = []
    real = json.loads

    def loads(data: bytes) -> object:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(json, "loads", loads)
    embedding = {"data": [{"embedding": [0.5] * 1000}], "usage": {"prompt_tokens": 4}}
    assert whole_answer_tokens(json.dumps(embedding).encode()) is None
    assert parsed == []
    assert whole_answer_tokens(b'{"usage": {"completion_tokens": 2}}') == 2
    assert len(parsed) == 1


STREAM = ROLE + b": ping\n\n" + TOKEN + frame({"content": " world"}) + USAGE + DONE


@given(st.lists(st.integers(0, len(STREAM)), max_size=8))
def test_any_split_of_the_stream_reads_the_same(cuts):
    bounds = sorted({0, len(STREAM), *cuts})
    pieces = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    meter = StreamMeter()
    for at, piece in enumerate(pieces):
        meter.feed(piece, float(at))
    # The first token passed with the piece that held the end of its event.
    token_end = len(ROLE) + len(b": ping\n\n") + len(TOKEN)
    holding = next(i for i, end in enumerate(bounds[1:]) if end >= token_end)
    assert (meter.first_token, meter.output_tokens) == (float(holding), 42)


def test_an_event_over_its_bound_is_skipped_whole_and_the_next_one_read():
    meter = StreamMeter(max_event_bytes=100)
    huge = b"data: " + b"x" * 60 + b"\n"  # each line fits; three of them make a 180-byte event
    meter.feed(huge * 3, 0.0)
    assert meter._data == [] and meter.first_token is None  # nothing kept, nothing metered
    meter.feed(b"\n" + TOKEN, 1.0)
    assert meter.first_token == 1.0  # the next event is read as usual
    at_bound = StreamMeter(max_event_bytes=100)
    at_bound.feed(b"data:" + b"y" * 100 + b"\n\n", 2.0)
    assert at_bound.first_token == 2.0  # exactly at the bound: still read
