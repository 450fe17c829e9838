"""A small client of the admin API for the command line (standard library only)."""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

DEFAULT_ADMIN_URL = "http://127.0.0.1:9901"


class AdminError(Exception):
    """The admin API could not be reached or refused the request."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following it would send the token to another place."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(base: str) -> urllib.request.OpenerDirector:
    """No redirects; no proxy for a loopback admin API (the environment's proxy settings would
    otherwise carry the token through a proxy even to 127.0.0.1)."""
    host = urllib.parse.urlsplit(base).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    proxies = urllib.request.ProxyHandler({}) if loopback else urllib.request.ProxyHandler()
    return urllib.request.build_opener(proxies, _NoRedirects())


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
        with _opener(base).open(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "elsewhere")
            raise AdminError(f"{exc.code}: redirected to {where}; not followed") from exc
        try:
            detail = json.loads(exc.read()).get("message", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        raise AdminError(f"{exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise AdminError(f"cannot reach the admin API at {base}: {exc}") from exc


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _verdict(analysis: dict[str, Any] | None) -> str:
    """The latest verdict's word and what followed: `suspect, hold`; `-` without one."""
    verdict = (analysis or {}).get("last_verdict")
    if not isinstance(verdict, dict):
        return "-"
    said = f"{verdict['result']}, {analysis.get('action') or '?'}" if analysis else "-"
    if analysis and analysis.get("alarm"):
        said += f" (ALARM: {analysis.get('errors_in_a_row')} errors in a row)"
    return said


def status_table(status: dict[str, Any]) -> str:
    """The `/status` answer as a table, a route a row. A route judged by a fleet shows the
    counts its decider last judged, pooled over every replica, with this replica's beside them
    (`here`, since it started)."""
    header = (
        "ROUTE",
        "STATE",
        "SHARE",
        "STABLE",
        "ERR",
        "CANDIDATE",
        "ERR",
        "VERDICT",
        "LAST CHANGE",
    )
    rows = [header]
    pooled_any = False
    for route in status["routes"]:
        counts = {v: sum(c.values()) for v, c in route["requests"].items()}
        cells: list[str] = []
        pooled = (route.get("analysis") or {}).get("counts") or {}
        for variant in ("stable", "candidate"):
            here, rate = str(counts[variant]), _rate(route["error_rate"][variant])
            if pooled.get("pooled"):
                pooled_any = True
                seen = pooled[variant]
                fleet_rate = seen["errors"] / seen["requests"] if seen["requests"] else None
                here, rate = f"{seen['requests']} (here {here})", f"{_rate(fleet_rate)} ({rate})"
            cells += [here, rate]
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
                *cells,
                _verdict(route.get("analysis")),
                change,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    table = "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
    if pooled_any:
        table += (
            "\n(counts: the analysis window over every replica, as the decider last judged it;"
            " in parentheses: this replica's since it started)"
        )
    return table
