"""Message boundaries: a byte stream cut into pieces that never run past the end of a message.

llhttp parses whatever it is given, message after message. Both sides of the proxy must instead
stop at the end of the message they wait for: the server answers one request before it parses
the next, and the upstream client must never parse bytes an upstream sent after its answer as
the answer to something else. `MessageBounds` tells where the next piece ends, so that the
parser is fed one message at a time and the bytes after it stay unparsed.

Invariants
- A piece never extends past the end of the current message. A head piece ends at the blank
  line that ends the head (llhttp takes only CRLF line ends); a body of known length ends at its
  last byte; a chunked body ends with a blank line (the last chunk, then the end of the trailer
  section), so cutting at every blank line means it can only end at the end of a piece.
- Every byte of a head is counted, whatever its shape (many short lines, runs of whitespace,
  empty lines before it, a head trickled over many reads): `head_bytes` is exact.
- A read that begins with a whole head may be parsed in one go (the common case, and cheaper):
  the parser is then stopped, by raising `Stop` in its callbacks, where it would begin a message
  after the awaited one, so that the position where parsing goes on is still known.
- `MessageBounds` knows nothing of HTTP beyond this; the parser's callbacks set the mode.
"""

from __future__ import annotations

HEAD = 0  # in (or before) a message head: up to the blank line that ends it
LENGTH = 1  # a body of known length: no further than its last byte
CHUNKED = 2  # a chunked body: up to the next blank line
UNTIL_CLOSE = 3  # a body that ends when the connection closes: everything
DONE = 4  # the message is complete: nothing

BLANK_LINE = b"\r\n\r\n"
_CR_LF = (13, 10)


class Stop(Exception):
    """Raised in a parser callback: the only way to stop llhttp where it is."""


def part(data: bytes, start: int, end: int) -> bytes | memoryview:
    """`data[start:end]` for the parser: itself when whole, copied when small, else a view."""
    if end - start == len(data):
        return data
    return data[start:end] if end - start <= 4096 else memoryview(data)[start:end]


class MessageBounds:
    """Where the next piece of a byte stream ends, for the message in progress."""

    __slots__ = ("_tail", "head_bytes", "left", "mode")

    def __init__(self) -> None:
        self.mode = HEAD
        self.left = 0  # LENGTH: body bytes still to come
        self.head_bytes = 0  # HEAD: bytes of the head so far
        self._tail = b""  # the last bytes taken in this mode, for a blank line across pieces

    def begin(self) -> None:
        """A new message begins: cut at its head."""
        self.mode, self.head_bytes, self._tail = HEAD, 0, b""

    def body(self, mode: int, length: int = 0) -> None:
        """The head is complete; its body is framed by `mode` (`length` bytes for LENGTH)."""
        self.mode, self.left, self._tail = mode, length, b""

    def done(self) -> None:
        """The message is complete."""
        self.mode = DONE

    def whole_head(self, data: bytes, limit: int) -> int:
        """Where the head ends when a message begins with `data` and its whole head (at most
        `limit` bytes) is in it, accounted for; else 0. Such a read can be parsed in one go
        (the parser stopped, with `Stop`, where a message would begin after it)."""
        if self.mode != HEAD or self.head_bytes or data[0] in _CR_LF:
            return 0
        end = data.find(BLANK_LINE) + 4  # the head's first blank line is its end
        if not 4 <= end <= limit:
            return 0
        self.head_bytes = end
        return end

    def piece(self, data: bytes, start: int) -> int:
        """The end (exclusive) of the next piece of `data[start:]`, accounted for: the caller
        parses `data[start:end]` next (or refuses it, if `head_bytes` is now too large)."""
        mode = self.mode
        if mode == LENGTH:
            end = min(len(data), start + self.left)
            self.left -= end - start
            return end
        if mode == UNTIL_CLOSE:
            return len(data)
        if mode == DONE:
            return start
        end = self._straddle(data, start) if self._tail else -1
        if end < 0:
            found = data.find(BLANK_LINE, start)
            end = len(data) if found < 0 else found + 4
        # the last bytes taken, for a blank line that begins in this piece and ends in the next
        taken = data[start:end] if end - start < 3 else data[end - 3 : end]
        self._tail = (self._tail + taken)[-3:] if len(taken) < 3 else taken
        if mode == HEAD:
            self.head_bytes += end - start
        return end

    def took(self, data: bytes, head_end: int) -> None:
        """Account for a whole read parsed in one go, whose message head ended at `head_end`."""
        if self.mode == LENGTH:
            self.left -= len(data) - head_end
        elif self.mode == CHUNKED:
            self._tail = data[-3:] if len(data) - head_end >= 3 else data[head_end:]

    def _straddle(self, data: bytes, start: int) -> int:
        """The end of a blank line begun in the previous piece, or -1."""
        tail = self._tail
        for taken in (1, 2, 3):
            if tail.endswith(BLANK_LINE[: 4 - taken]) and data.startswith(
                BLANK_LINE[4 - taken :], start
            ):
                return start + taken
        return -1
