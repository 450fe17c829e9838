"""The access log: one JSON line per request, written off the event loop, users hashed.

Requests are queued in memory and a writer thread formats and writes them in batches a few times
a second, so a slow disk never blocks the proxy and the thread does not wake for every line; when
the queue is full, lines are dropped and counted. The user's cohort key is
written as a keyed hash (HMAC-SHA-256 with a secret from the environment, 16 hex digits): the
same user gives the same hash, so a user's requests can be followed, but the raw id is never
written. No bodies, paths, cookies or authorization headers are logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import select
import sys
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO

from proxy.config.model import AccessLogConfig
from proxy.records.request_outcome import RequestOutcome

ATOMIC_WRITE = select.PIPE_BUF  # bytes a pipe writes at once (4096 on Linux)
USERS_KEPT = 65536  # user hashes remembered (a line hashes only users not seen lately)...
KEPT_KEY_CHARS = 256  # ...of keys no longer than this (a client chooses its key's size)
log = logging.getLogger("grayscale.access_log")
QUEUE_LIMIT = 65536
FLUSH_SECONDS = 0.2


def hash_key(secret: bytes, route: str, key: str) -> str:
    """The keyed hash written in place of a cohort key, per route (a user's lines in two routes
    cannot be linked), over the bytes received like the bucket's hash."""
    data = f"{route}\x00{key}".encode("utf-8", "surrogateescape")
    return hmac.digest(secret, data, hashlib.sha256).hex()[:16]


class _Stamps:
    """Times as ISO 8601 with milliseconds in UTC, as `datetime.isoformat` writes them; the
    date and time of day made once per second."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, at: float) -> str:
        second = int(at)
        micro = round((at - second) * 1e6)  # (as `datetime.fromtimestamp` rounds: half even)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:
            self._second = second
            self._text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._text}.{micro // 1000:03d}+00:00"


def secret_from_env(name: str, *, quiet: bool = False) -> bytes:
    """The hashing secret from environment variable `name`, or a random one for this process
    (said in a warning unless `quiet`)."""
    value = os.environ.get(name, "")
    if value:
        return value.encode()
    if not quiet:
        log.warning(
            "$%s is not set: user hashes in the access log change when the process restarts", name
        )
    return secrets.token_bytes(32)


class AccessLog:
    """Sampled request entries as JSON lines, written by a background thread.

    Lines are formatted when recorded, on the event loop: the writer thread then needs the GIL
    only briefly, to join and write them, so it never makes the event loop wait for long.
    """

    def __init__(
        self,
        config: AccessLogConfig,
        secret: bytes,
        on_drop: Callable[[], None],
        rand: Callable[[], float] = random.random,
        limit: int = QUEUE_LIMIT,
    ):
        self.config = config
        self._secret = secret
        self._on_drop = on_drop
        self._rand = rand
        self._limit = limit
        self._queue: deque[str] = deque()
        self._users: dict[tuple[str, str], str] = {}  # (route, cohort key) -> its hash
        self._stamp = _Stamps()
        self._encode = json.JSONEncoder(check_circular=False).encode
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the destination and start the writer."""
        path = self.config.path
        stream: IO[str] = (
            sys.stdout if path == "stdout" else open(path, "a", encoding="utf-8")  # noqa: SIM115
        )
        self._thread = threading.Thread(
            target=self._write, args=(stream,), name="access-log", daemon=True
        )
        self._thread.start()

    def record(self, outcome: RequestOutcome) -> None:
        """Queue the line of a finished request, if it is sampled (an `Observer`); never blocks."""
        if self.config.sample < 1.0 and self._rand() >= self.config.sample:
            return
        if len(self._queue) >= self._limit:
            self._on_drop()
        else:
            self._queue.append(self.line(outcome))  # deque appends are atomic: no lock, no wake

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None

    def line(self, outcome: RequestOutcome) -> str:
        """The JSON line of a finished request."""
        d = outcome.decision
        return self._encode(
            {
                "time": self._stamp(outcome.at),
                "request_id": None if outcome.request_id is None else outcome.request_id.decode(),
                "route": outcome.route,
                "method": outcome.method,
                "variant": d.variant.value,
                "reason": d.reason.value,
                "segment": d.segment,
                "user": None if d.key is None else self._user(outcome.route, d.key),
                "status": outcome.code,
                "error": outcome.error,
                "duration_ms": round(outcome.duration * 1000, 3),
                "ttfb_ms": None if outcome.ttfb is None else round(outcome.ttfb * 1000, 3),
                "ttft_ms": None if outcome.ttft is None else round(outcome.ttft * 1000, 3),
                "output_tokens": outcome.output_tokens,
                "bytes_in": outcome.bytes_in,
                "bytes_out": outcome.bytes_out,
                "grpc_status": outcome.grpc_status,
            }
        )

    def _user(self, route: str, key: str) -> str:
        """The hash of cohort key `key` on `route`, remembered for the users seen lately (when
        the key is short: memory stays bounded whatever keys clients send)."""
        if len(key) > KEPT_KEY_CHARS:
            return hash_key(self._secret, route, key)
        found = self._users.get((route, key))
        if found is None:
            if len(self._users) >= USERS_KEPT:
                self._users.clear()
            found = self._users[route, key] = hash_key(self._secret, route, key)
        return found

    def _write(self, stream: IO[str]) -> None:
        try:
            while not self._stop.wait(FLUSH_SECONDS):
                self._drain(stream)
            self._drain(stream)
        finally:
            stream.flush()
            if stream is not sys.stdout:
                stream.close()

    def _drain(self, stream: IO[str]) -> None:
        """Write the queued lines in chunks of whole lines of at most `ATOMIC_WRITE` bytes:
        the workers of one host share stdout (a pipe) or the file, and a write that size is
        never interleaved with another process's."""
        chunk: list[str] = []
        size = 0
        while self._queue:
            line = self._queue.popleft() + "\n"  # (JSON escapes non-ASCII: chars are bytes)
            if size + len(line) > ATOMIC_WRITE and chunk:
                stream.write("".join(chunk))
                stream.flush()
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            stream.write("".join(chunk))
            stream.flush()
