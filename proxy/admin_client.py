"""A small client of the admin API for the command line (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

DEFAULT_ADMIN_URL = "http://127.0.0.1:9901"


class AdminError(Exception):
    """The admin API could not be reached or refused the request."""


def call(
    base: str, method: str, path: str, token: str | None = None, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Send one request to the admin API at `base`; return its JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("message", exc.reason)
        except ValueError:
            detail = exc.reason
        raise AdminError(f"{exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise AdminError(f"cannot reach the admin API at {base}: {exc}") from exc


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def status_table(status: dict[str, Any]) -> str:
    """The `/status` answer as a table, a route a row."""
    header = ("ROUTE", "STATE", "SHARE", "STABLE", "ERR", "CANDIDATE", "ERR", "LAST CHANGE")
    rows = [header]
    for route in status["routes"]:
        counts = {v: sum(c.values()) for v, c in route["requests"].items()}
        last = route["last_transition"]
        change = "-"
        if last:
            change = f"{last['action']} by {last['actor']} at {_when(last['at'])}"
            if last["reason"]:
                change += f" ({last['reason']})"
        rows.append(
            (
                route["name"],
                route["state"],
                f"{route['share']:.2%}",
                str(counts["stable"]),
                _rate(route["error_rate"]["stable"]),
                str(counts["candidate"]),
                _rate(route["error_rate"]["candidate"]),
                change,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + row[-1]
        for row in rows
    )
