"""The admin API's answers: strict JSON, error answers, and text made safe for one line.

Invariants
- Every answer is strict JSON: a number that is not finite (NaN, an infinity: not JSON, and
  refused by strict parsers and browsers) is written `null`; anything the encoder would still
  write as NaN or Infinity raises instead of leaving the API.
- Nothing a client sends can forge an audit or log line: `printable` escapes control characters.
"""

from __future__ import annotations

import json
import math
from functools import partial
from typing import Any

from aiohttp import web

strict_dumps = partial(json.dumps, allow_nan=False)


def printable(text: str) -> str:
    """`text` with control characters (newlines included) escaped, so that it stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def finite(data: Any) -> Any:
    """`data` (JSON-ready dicts, lists and scalars) with every float that is not finite
    replaced by None: NaN and infinities are not JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite(value) for value in data]
    return data


def json_answer(data: Any, status: int = 200) -> web.Response:
    """A strict JSON answer: non-finite numbers are written `null` (`finite`), and anything
    the encoder would still write as NaN or Infinity raises instead of leaving the API."""
    return web.json_response(finite(data), status=status, dumps=strict_dumps)


def error_response(status: int, error: str, message: str, **fields: str) -> web.Response:
    """A JSON error answer: ``{"error": ..., "message": ..., **fields}``."""
    return json_answer({"error": error, "message": message, **fields}, status=status)


def unknown_route(name: str) -> web.Response:
    """The `404` answer for a route name that no route has (shown escaped and cut short)."""
    return error_response(404, "unknown_route", f"no route named {printable(name)[:100]!r}")
