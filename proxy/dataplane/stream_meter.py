"""A model's answer read as it passes: when its first token came, and how many tokens the server
says it produced.

Invariants
- Pure: fed the answer's bytes as they are sent on (never altered, never held back); no I/O.
- In a server-sent event stream, the first token is the first event whose data carries content:
  JSON with a non-empty `choices[].delta.content`, `.delta.reasoning_content`,
  `.delta.tool_calls` or `choices[].text` (OpenAI chat and completions as vLLM, llama.cpp and
  LiteLLM send them), or `token.text` (TGI's own stream), or data that is not JSON at all (any
  other text stream) other than `[DONE]`. A role-only first frame, an empty delta, a comment
  (keep-alive) or an event with no data is not a token.
- Output tokens are the last `usage.completion_tokens` (or `usage.output_tokens`) the answer
  carries: in a stream's final frame, or in a whole JSON answer. JSON is parsed for them only
  where those names are written (`names_output_tokens`): after a stream's first token, only its
  frames that name them; of a whole answer, only one that names them (an embedding's or a
  tokenizer's `prompt_tokens` and `total_tokens` alone are no reason to parse it).
- Lines end with CRLF, LF or a lone CR, as the event-stream format allows; a CRLF split between
  two chunks is one line end, and a line that ends with a CR ends when the CR passes.
- Bounded: a line is buffered up to `LINE_LIMIT` bytes, and an event's data up to
  `max_event_bytes` (`server.max_event_bytes`); a longer line or event is skipped whole (not
  metered; still forwarded), so a hostile stream costs bounded memory and time.
"""

from __future__ import annotations

import json
from typing import Any

LINE_LIMIT = 256 * 1024  # bytes of one event-stream line kept while it arrives
EVENT_LIMIT = 1024 * 1024  # bytes of one event's data kept while it arrives (the default)
_USAGE_KEYS = ("completion_tokens", "output_tokens")
_LF = 10


class StreamMeter:
    """Reads an event stream chunk by chunk; `first_token` is when its first token passed
    (the `now` given with that chunk), `output_tokens` what its usage said."""

    __slots__ = (
        "_after_cr",
        "_data",
        "_kept",
        "_line",
        "_skipping",
        "first_token",
        "max_event_bytes",
        "output_tokens",
    )

    def __init__(self, max_event_bytes: int = EVENT_LIMIT) -> None:
        self.max_event_bytes = max_event_bytes
        self._line = bytearray()
        self._data: list[bytes] = []  # the `data` lines of the event being read
        self._kept = 0  # their bytes; -1: the event is over `max_event_bytes`, skipped
        self._skipping = False  # inside a line over LINE_LIMIT
        self._after_cr = False  # the last chunk ended with a CR: an LF next belongs to it
        self.first_token: float | None = None
        self.output_tokens: int | None = None

    def feed(self, chunk: bytes, now: float) -> None:
        """Read the next bytes of the stream, which passed at `now`."""
        start, size = 0, len(chunk)
        if self._after_cr and size:
            self._after_cr = False
            start = 1 if chunk[0] == _LF else 0  # the LF of a CRLF: that line has ended
        while True:
            end = chunk.find(b"\n", start)
            cr = chunk.find(b"\r", start, size if end < 0 else end)
            if cr >= 0:
                end = cr
            elif end < 0:
                self._keep(chunk[start:])
                return
            if self._skipping:
                self._skipping = False
            elif self._line:
                self._line += chunk[start:end]
                self._end_line(bytes(self._line), now)
                self._line.clear()
            else:
                self._end_line(chunk[start:end], now)
            start = end + 1
            if end == cr:
                if start == size:
                    self._after_cr = True
                elif chunk[start] == _LF:
                    start += 1

    def _keep(self, piece: bytes) -> None:
        if self._skipping or not piece:
            return
        if len(self._line) + len(piece) > LINE_LIMIT:
            self._line.clear()
            self._skipping = True
        else:
            self._line += piece

    def _end_line(self, line: bytes, now: float) -> None:
        if not line:
            if self._data:
                self._event(b"\n".join(self._data), now)
                self._data.clear()
            self._kept = 0
            return
        if line.startswith(b"data:") and self._kept >= 0:
            value = line[5:]
            self._kept += len(value)
            if self._kept > self.max_event_bytes:
                self._data.clear()
                self._kept = -1
            else:
                self._data.append(value[1:] if value.startswith(b" ") else value)

    def _event(self, data: bytes, now: float) -> None:
        if self.first_token is None:
            if data.strip() == b"[DONE]":
                return
            try:
                document = json.loads(data)
            except RecursionError:
                return
            except ValueError:
                self.first_token = now  # not JSON: any text is content
                return
            if carries_token(document):
                self.first_token = now
            self._usage(document)
        elif names_output_tokens(data):  # only a frame with usage is worth parsing after the first
            try:
                self._usage(json.loads(data))
            except (ValueError, RecursionError):
                return

    def _usage(self, document: Any) -> None:
        tokens = output_tokens(document)
        if tokens is not None:
            self.output_tokens = tokens


def carries_token(document: Any) -> bool:
    """Whether a streamed JSON frame carries content (see the module's rules)."""
    if not isinstance(document, dict):
        return document not in (None, "", [], {})
    token = document.get("token")
    if isinstance(token, dict) and token.get("text"):
        return True
    choices = document.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(
            delta.get(key) for key in ("content", "reasoning_content", "tool_calls")
        ):
            return True
    return False


def output_tokens(document: Any) -> int | None:
    """The output token count in a JSON answer's `usage`, if it has one."""
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    for key in _USAGE_KEYS:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def names_output_tokens(data: bytes) -> bool:
    """Whether `data` writes a name `output_tokens` reads (`completion_tokens`, `output_tokens`):
    one pass over it, so that JSON without them is never parsed for them."""
    at = data.find(b"_tokens")
    while at >= 0:
        if data.endswith(b"completion", 0, at) or data.endswith(b"output", 0, at):
            return True
        at = data.find(b"_tokens", at + 7)
    return False


def whole_answer_tokens(body: bytes) -> int | None:
    """The output tokens of a whole (not streamed) JSON answer, if its `usage` says."""
    if not names_output_tokens(body):
        return None
    try:
        return output_tokens(json.loads(body))
    except (ValueError, RecursionError):
        return None
