"""Logging to stderr, human-readable or one JSON object per line.

Records may carry the extra fields in `CONTEXT_FIELDS`; both formats show them. Raw user ids and
request bodies are never logged anywhere in Grayscale.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

CONTEXT_FIELDS = ("route", "variant", "segment", "path", "url", "errors")


def _context(record: logging.LogRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in CONTEXT_FIELDS if hasattr(record, name)}


class TextFormatter(logging.Formatter):
    """``2026-12-01T10:00:00.123Z INFO grayscale.server: message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        context = " ".join(f"{k}={v}" for k, v in _context(record).items())
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name}: "
        line += record.getMessage() + (f" {context}" if context else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Send all logs to `stream` (stderr by default) in format `fmt` (text or json) at
    `level`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would write request lines (paths, queries, user ids): never enable it.
    logging.getLogger("aiohttp.access").disabled = True
