"""Reading and rewriting the `model` of a JSON request body, with `json` as the oracle."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.dataplane.model_body import BodyError, ModelBody, ReadBody

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
NAMES = st.text(max_size=8).filter(lambda name: name.lower() != "model")
OBJECTS = st.dictionaries(NAMES, VALUES, max_size=5)
LAYOUTS = st.sampled_from(
    [
        {},
        {"indent": 2},
        {"separators": (",", ":")},
        {"ensure_ascii": False},
        {"indent": "\t", "ensure_ascii": False},
    ]
)


def test_reads_the_model_and_rewrites_only_its_value():
    body = b'{"model" : "llama-3-8b",\n "messages": [{"role": "user", "content": "1e3 \\u00e9"}],'
    body += b' "temperature": 1.50}'
    parsed = ModelBody.parse(body)
    assert parsed.model == "llama-3-8b"
    assert parsed.with_model("llama-3-8b-v2") == body.replace(b"llama-3-8b", b"llama-3-8b-v2", 1)


def test_a_body_without_a_model_gets_one_first():
    assert ModelBody.parse(b'{"a": 1}').with_model("m") == b'{"model": "m", "a": 1}'
    assert ModelBody.parse(b" { } ").with_model("m") == b' {"model": "m" } '
    assert ModelBody.parse(b'{"a": 1}').model is None


def test_a_model_that_is_not_a_string_is_no_model_but_is_rewritten():
    parsed = ModelBody.parse(b'{"model": ["x"], "b": 2}')
    assert parsed.model is None
    assert parsed.with_model("m") == b'{"model": "m", "b": 2}'


def test_names_with_quotes_and_unicode_are_written_as_json():
    rewritten = ModelBody.parse(b'{"model": "a"}').with_model('m"\u00e9\\')
    assert json.loads(rewritten) == {"model": 'm"\u00e9\\'}


NOT_JSON = "the body is not valid JSON: "


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the body is not a JSON object"),
        (b"[1, 2]", "the body is not a JSON object"),
        (b"model=x", "the body is not a JSON object"),
        (b'"model"', "the body is not a JSON object"),
        (b"\xff{}", "the body is not UTF-8 text"),
        (b'{"model": "a", "model": "b"}', "the body names its model twice"),
        (b"{", NOT_JSON + "expected a member name"),
        (b" { ", NOT_JSON + "expected a member name"),
        (b'{"a"', NOT_JSON + "expected ':' after a member name"),
        (b'{"a" ', NOT_JSON + "expected ':' after a member name"),
        (b'{"a":1', NOT_JSON + "expected ',' or '}'"),
        (b'{"model": "a"', NOT_JSON + "expected ',' or '}'"),
        (b'{"model": "a" x', NOT_JSON + "expected ',' or '}'"),
        (b'{"model": "a"} x', NOT_JSON + "text after the object"),
        (b"{} x", NOT_JSON + "text after the object"),
        (b'{"model" "a"}', NOT_JSON + "expected ':' after a member name"),
        (b"{model: 1}", NOT_JSON + "expected a member name"),
        (b'{"a": tru}', NOT_JSON + "Expecting value at character 6"),
        (b'{"a": 1,}', NOT_JSON + "expected a member name"),
        (b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", NOT_JSON + "nested too deeply"),
    ],
)
def test_what_is_not_a_json_object_with_one_model_is_refused_in_a_sentence(body, message):
    with pytest.raises(BodyError) as refused:
        ModelBody.parse(body)
    assert str(refused.value) == message


def test_a_body_is_read_only_within_its_bound_of_values():
    body = b'{"model": "a", "x": [1, 2, 3]}'  # `{` `:` `,` `:` `[` `,` `,`: 7
    assert ModelBody.parse(body, max_values=7).model == "a"
    with pytest.raises(BodyError, match=r"^the body holds more than 6 JSON values "):
        ModelBody.parse(body, max_values=6)
    # Punctuation inside strings is no value: counted again without the strings (escaped
    # quotes and backslashes included) before a body is refused.
    quoted = rb'{"model": "a,b:c[d{e\\", "x": "\",[{:\\"}'
    assert ModelBody.parse(quoted, max_values=4).model == "a,b:c[d{e\\"
    with pytest.raises(BodyError, match="more than 3 JSON values"):
        ModelBody.parse(quoted, max_values=3)
    # More strings than the bound: refused without taking them out.
    many = b'{"model": "a"' + b', "k": "v"' * 10 + b"}"
    with pytest.raises(BodyError, match="more than 5 JSON values"):
        ModelBody.parse(many, max_values=5)
    assert ReadBody.of(many, max_values=5).error is not None
    assert ReadBody.of(many, max_values=21).error is not None  # `{` `:`, and 10 of `,` `:`
    assert ReadBody.of(many, max_values=22).model == "a"


def test_numbers_too_long_to_convert_and_other_spellings_of_model_are_refused():
    with pytest.raises(BodyError, match=r"^the body holds a number that cannot be read: "):
        ModelBody.parse(b'{"model": "a", "n": ' + b"9" * 4301 + b"}")
    for name in ("MODEL", "Model", "mOdel"):
        with pytest.raises(BodyError, match=f"names its model '{name}': write it 'model'"):
            ModelBody.parse(b'{"model": "a", "' + name.encode() + b'": "b"}')
    padded = b'{"model": "a",' + b" \n\t\r" * 100_000 + b'"x": 1}'  # (skipped at C speed)
    assert ModelBody.parse(padded).model == "a"


def test_a_read_body_gives_each_upstream_its_model_and_keeps_its_error():
    read = ReadBody.of(b'{"model": "a", "x": 1}')
    assert (read.model, read.error) == ("a", None)
    assert read.to(None) == b'{"model": "a", "x": 1}'
    assert read.to("b") == b'{"model": "b", "x": 1}'
    empty = ReadBody.of(b"")
    assert (empty.model, empty.to("b"), empty.to(None)) == (None, b"", b"")
    broken = ReadBody.of(b"not json")
    assert broken.model is None and str(broken.error) == "the body is not a JSON object"
    assert broken.to(None) == b"not json"  # sent as it is where no rewrite is asked
    with pytest.raises(BodyError, match=r"^the body is not a JSON object$"):
        broken.to("b")


@given(OBJECTS, st.text(max_size=12), LAYOUTS, st.text(max_size=12))
def test_rewrite_agrees_with_json_and_keeps_every_other_byte(document, model, layout, name):
    document = {**document, "model": model}
    body = json.dumps(document, **layout).encode()
    parsed = ModelBody.parse(body)
    assert parsed.model == model
    rewritten = parsed.with_model(name)
    assert json.loads(rewritten) == {**document, "model": name}
    assert parsed.span is not None
    start, end = parsed.span
    text = body.decode()
    assert rewritten.decode() == text[:start] + json.dumps(name, ensure_ascii=False) + text[end:]


@given(OBJECTS.filter(lambda d: "model" not in d), LAYOUTS, st.text(max_size=12))
def test_bodies_without_a_model_parse_and_gain_one(document, layout, name):
    parsed = ModelBody.parse(json.dumps(document, **layout).encode())
    assert (parsed.model, parsed.span) == (None, None)
    assert json.loads(parsed.with_model(name)) == {"model": name, **document}


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_give_a_body_error(body):
    try:
        ModelBody.parse(body)
    except BodyError:
        pass
    else:
        assert isinstance(json.loads(body), dict)
