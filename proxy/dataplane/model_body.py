"""The `model` of an OpenAI-style JSON request body: read it for routing, rewrite it per upstream.

Invariants
- Pure: bytes in, bytes out; no I/O.
- A body is accepted only as a UTF-8 JSON object (RFC 8259) with at most one top-level `model`
  member; anything else is a `BodyError` with a sentence for the client. Two `model` members
  would let the router read one and the upstream another, so they are refused.
  A top-level member whose name is `model` in another case (`MODEL`, `Model`) is refused too:
  decoders that match names without regard to case (Go's) would read it as the model.
- A rewrite changes the `model` member's value and nothing else: every other byte of the body
  (member order, spacing, escapes, numbers as written) is sent as received. A body without a
  `model` member gets one, first in the object.
- Bounded work: a body is read only if it holds at most `max_values` JSON values (counted in C
  first: its punctuation outside strings, so a body that would cost more is refused before any
  value is built). Reading it then builds at most that many values (measured: 1.6 µs per
  top-level member; 80 ms for 50,000). Whitespace is skipped by a regular expression, never
  character by character; a number Python cannot convert (over 4,300 digits) is a `BodyError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import NoReturn

_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"
_SPACES = re.compile(r"[ \t\n\r]*")
_COLON = re.compile(r"[ \t\n\r]*:[ \t\n\r]*")
_AFTER = re.compile(r"[ \t\n\r]*([,}])[ \t\n\r]*")  # a member's end: `,` then spaces, or `}`
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"')  # a JSON string (possessive: no backtracking)
MAX_VALUES = 100_000  # values a body may hold to be read for its model (server.max_json_values)


class BodyError(ValueError):
    """The body cannot be read as a JSON object with one `model`."""


@dataclass(frozen=True, slots=True)
class ModelBody:
    """A JSON request body and where its top-level `model` value lies."""

    text: str
    model: str | None  # the value, when it is a string
    span: tuple[int, int] | None  # the value's characters in `text`; None: no `model` member
    opening: int  # the index just past the object's `{`

    @classmethod
    def parse(cls, body: bytes, max_values: int = MAX_VALUES) -> ModelBody:
        """Read `body`, if it holds at most `max_values` JSON values; raises `BodyError`."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BodyError("the body is not UTF-8 text") from None
        _within(text, max_values)
        index = _skip(text, 0)
        if index >= len(text) or text[index] != "{":
            raise BodyError("the body is not a JSON object")
        opening = index + 1
        model: str | None = None
        span: tuple[int, int] | None = None
        index = _skip(text, opening)
        if index < len(text) and text[index] == "}":
            if _skip(text, index + 1) != len(text):
                _junk()
            return cls(text, None, None, opening)
        colon, after = _COLON.match, _AFTER.match  # (the loop runs once a member: kept tight)
        while True:
            if not text.startswith('"', index):
                raise BodyError("the body is not valid JSON: expected a member name")
            key, index = _value(text, index)
            found = colon(text, index)
            if found is None:
                raise BodyError("the body is not valid JSON: expected ':' after a member name")
            start = found.end()
            value, index = _value(text, start)
            if isinstance(key, str) and len(key) == 5 and key.lower() == "model":
                if key != "model":
                    raise BodyError(f"the body names its model {key!r}: write it 'model'")
                if span is not None:
                    raise BodyError("the body names its model twice")
                span = (start, index)
                model = value if isinstance(value, str) else None
            found = after(text, index)
            if found is None:
                raise BodyError("the body is not valid JSON: expected ',' or '}'")
            index = found.end()
            if found.group(1) == "}":
                if index != len(text):
                    _junk()
                return cls(text, model, span, opening)

    def with_model(self, name: str) -> bytes:
        """The body with `model` set to `name`, every other byte unchanged."""
        value = json.dumps(name, ensure_ascii=False)
        if self.span is not None:
            start, end = self.span
            return (self.text[:start] + value + self.text[end:]).encode()
        rest = self.text[self.opening :]
        separator = "" if rest.lstrip(_SPACE).startswith("}") else ", "
        return (self.text[: self.opening] + f'"model": {value}{separator}' + rest).encode()


@dataclass(frozen=True, slots=True)
class ReadBody:
    """A request body read whole, and what it says of its `model`."""

    data: bytes
    parsed: ModelBody | None
    error: BodyError | None  # why it is not a JSON object with one `model`

    @classmethod
    def of(cls, data: bytes, max_values: int = MAX_VALUES) -> ReadBody:
        """Read `data` (never raises: a body that is not JSON, or holds more than `max_values`
        values, carries its `error`)."""
        try:
            return cls(data, ModelBody.parse(data, max_values), None)
        except BodyError as exc:
            return cls(data, None, exc)

    @property
    def model(self) -> str | None:
        """The body's `model`, when it is a JSON object naming one."""
        return None if self.parsed is None else self.parsed.model

    def to(self, model: str | None) -> bytes:
        """The body for an upstream that calls its model `model` (None: sent as read). An
        empty body is sent as it is; one that is not a JSON object raises its `BodyError`."""
        if model is None or not self.data:
            return self.data
        if self.parsed is None:
            assert self.error is not None
            raise self.error
        return self.parsed.with_model(model)


def _within(text: str, max_values: int) -> None:
    """Raise `BodyError` when `text` holds more than `max_values` JSON values, counted without
    building any: each value but the first follows a `,`, a `:`, a `[` or a `{`. The count of
    that punctuation is an upper bound (some may sit inside strings); only when it is over the
    limit are the strings taken out (`_STRING`, at most about `max_values` of them, or there
    are too many values anyway) and the punctuation counted again."""
    if _punctuation(text) <= max_values:
        return
    quotes = text.count('"') - text.count('\\"')  # (a lower bound of the quotes that delimit)
    if quotes // 2 <= max_values and _punctuation(_STRING.sub('""', text)) <= max_values:
        return
    raise BodyError(
        f"the body holds more than {max_values} JSON values (server.max_json_values): too "
        "many to be read for its model"
    )


def _punctuation(text: str) -> int:
    return text.count(",") + text.count(":") + text.count("[") + text.count("{")


def _skip(text: str, index: int) -> int:
    end: int = _SPACES.match(text, index).end()  # type: ignore[union-attr]
    return end


def _value(text: str, index: int) -> tuple[object, int]:
    try:
        return _DECODER.raw_decode(text, index)
    except json.JSONDecodeError as exc:
        raise BodyError(f"the body is not valid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise BodyError("the body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # (a number of more digits than Python converts)
        raise BodyError(f"the body holds a number that cannot be read: {exc}") from None


def _junk() -> NoReturn:
    raise BodyError("the body is not valid JSON: text after the object")
