"""Text forms that the config file and the command line share: durations and listen addresses.

Invariants
- Pure functions of their text: no I/O, no environment.
- A listen address is `HOST:PORT` (an IPv6 host in brackets), its port in 0..65535.
"""

from __future__ import annotations

import re

from proxy.config.model import Listen

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
LISTEN_FORM = "expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"


def parse_duration(text: str) -> float:
    """Seconds of a duration written `500ms`, `30s`, `5m`, `1h` or `1d`; 0 when it is not one."""
    match = _DURATION.match(text)
    return float(match[1]) * _UNIT_SECONDS[match[2]] if match else 0.0


def parse_listen(text: str) -> Listen | None:
    """The address written `HOST:PORT` or `[IPv6]:PORT`; None when it is not one."""
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return None
    return Listen(host, int(port))
