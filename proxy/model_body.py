"""The `model` of an OpenAI-style JSON request body: read it for routing, rewrite it per upstream.

Invariants
- Pure: bytes in, bytes out; no I/O.
- A body is accepted only as a UTF-8 JSON object (RFC 8259) with at most one top-level `model`
  member; anything else is a `BodyError` with a sentence for the client. Two `model` members
  would let the router read one and the upstream another, so they are refused.
- A rewrite changes the `model` member's value and nothing else: every other byte of the body
  (member order, spacing, escapes, numbers as written) is sent as received. A body without a
  `model` member gets one, first in the object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NoReturn

_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


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
    def parse(cls, body: bytes) -> ModelBody:
        """Read `body`; raises `BodyError`."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BodyError("the body is not UTF-8 text") from None
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
        while True:
            if index >= len(text) or text[index] != '"':
                raise BodyError("the body is not valid JSON: expected a member name")
            key, index = _value(text, index)
            index = _skip(text, index)
            if index >= len(text) or text[index] != ":":
                raise BodyError("the body is not valid JSON: expected ':' after a member name")
            start = _skip(text, index + 1)
            value, index = _value(text, start)
            if key == "model":
                if span is not None:
                    raise BodyError("the body names its model twice")
                span = (start, index)
                model = value if isinstance(value, str) else None
            index = _skip(text, index)
            if index < len(text) and text[index] == ",":
                index = _skip(text, index + 1)
                continue
            if index < len(text) and text[index] == "}":
                if _skip(text, index + 1) != len(text):
                    _junk()
                return cls(text, model, span, opening)
            raise BodyError("the body is not valid JSON: expected ',' or '}'")

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
    def of(cls, data: bytes) -> ReadBody:
        """Read `data` (never raises: a body that is not JSON carries its `error`)."""
        try:
            return cls(data, ModelBody.parse(data), None)
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


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in _SPACE:
        index += 1
    return index


def _value(text: str, index: int) -> tuple[object, int]:
    try:
        return _DECODER.raw_decode(text, index)
    except json.JSONDecodeError as exc:
        raise BodyError(f"the body is not valid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise BodyError("the body is not valid JSON: nested too deeply") from None


def _junk() -> NoReturn:
    raise BodyError("the body is not valid JSON: text after the object")
