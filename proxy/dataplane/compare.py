"""Whether two answers to one request agree: the one stable gave the user, and the candidate's
answer to its shadow copy.

Invariants
- Pure: answers in, a boolean out; no I/O.
- Answers with different statuses never agree.
- `exact`: the bodies are equal byte for byte.
- `json`: both bodies are JSON and, at every listed path, both lack the field or both hold equal
  values, numbers (not booleans) within `tolerance` of each other. A body that is not JSON
  agrees with nothing.
- `text`: the texts at the path (for an event stream: the content of its deltas, in order) are
  normalised (case folded, punctuation dropped, whitespace collapsed) and agree when their
  similarity, difflib's ratio over words (2 x matches / total words), is at least
  `min_similarity`. Two empty texts agree. At most `MAX_WORDS` words of each are compared, so
  the cost is bounded.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any

from proxy.config.model import Compare, ExactCompare, JsonCompare, TextCompare

MAX_WORDS = 2000
_PUNCTUATION = re.compile(r"[^\w\s]")
_MISSING = object()


@dataclass(frozen=True, slots=True)
class ComparedAnswer:
    """One answer as compared: status, body, and whether it was an event stream."""

    status: int
    body: bytes
    event_stream: bool = False


def agree(compare: Compare, stable: ComparedAnswer, candidate: ComparedAnswer) -> bool:
    """Whether `candidate` agrees with `stable` under `compare`."""
    if stable.status != candidate.status:
        return False
    if isinstance(compare, ExactCompare):
        return stable.body == candidate.body
    if isinstance(compare, JsonCompare):
        a, b = _json(stable.body), _json(candidate.body)
        if a is _MISSING or b is _MISSING:
            return False
        return all(
            _same(field_at(a, path), field_at(b, path), compare.tolerance)
            for path in compare.fields
        )
    assert isinstance(compare, TextCompare)
    texts = (text_of(seen, compare.field) for seen in (stable, candidate))
    return similarity(*texts) >= compare.min_similarity


def field_at(document: Any, path: str) -> Any:
    """The value at a dotted `path` (list items by index), or a marker when it is missing."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def text_of(seen: ComparedAnswer, path: str) -> str:
    """The text an answer carries: at `path` in a JSON body, or an event stream's content."""
    if seen.event_stream:
        return stream_text(seen.body)
    value = field_at(_json(seen.body), path)
    return value if isinstance(value, str) else ""


def stream_text(body: bytes) -> str:
    """The content of an event stream's deltas (`choices[0].delta.content` or `.text`)."""
    parts = []
    for line in body.splitlines():
        if not line.startswith(b"data:"):
            continue
        document = _json(line[5:].strip())
        for key in ("choices.0.delta.content", "choices.0.text", "token.text"):
            value = field_at(document, key)
            if isinstance(value, str):
                parts.append(value)
                break
    return "".join(parts)


def similarity(a: str, b: str) -> float:
    """How alike two texts are once normalised, from 0 to 1 (see the module's rules)."""
    words_a, words_b = _words(a), _words(b)
    if not words_a and not words_b:
        return 1.0
    return difflib.SequenceMatcher(None, words_a, words_b, autojunk=False).ratio()


def _words(text: str) -> list[str]:
    return _PUNCTUATION.sub(" ", text.casefold()).split()[:MAX_WORDS]


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _MISSING


def _same(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b  # (True == 1 in Python; not in JSON)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(abs(a - b) <= tolerance)
    return bool(a == b)
