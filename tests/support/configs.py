"""Config YAML for tests: a route between two upstreams, and a whole config around routes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.paths import ROOT
from tests.support.ports import free_port


def route_yaml(
    stable: str,
    candidate: str,
    *,
    name: str = "models",
    prefix: str = "/",
    share: float = 0.5,
    extra: str = "",
    timeout: str = "10s",
) -> str:
    """One route in YAML between two upstream URLs."""
    return (
        f"  - name: {name}\n"
        f"    match: {{path_prefix: {json.dumps(prefix)}}}\n"
        f'    stable: {{url: "{stable}", timeout: {timeout}, connect_timeout: 1s}}\n'
        f'    candidate: {{url: "{candidate}", timeout: {timeout}, connect_timeout: 1s}}\n'
        f'    cohort: {{keys: ["header:X-User-Id", "cookie:uid"], salt: "{name}-salt"}}\n'
        f"    ramp: {{base: {share}}}\n" + extra
    )


def one_route(url: str, *, upstream: str = "", extra: str = "") -> str:
    """A route for every path whose stable and candidate are both `url` (share 0: stable);
    `upstream` adds fields to both upstreams, `extra` lines to the route."""
    fields = f'url: "{url}", timeout: 10s, connect_timeout: 1s{upstream}'
    return (
        "  - name: models\n"
        '    match: {path_prefix: "/"}\n'
        f"    stable: {{{fields}}}\n"
        f"    candidate: {{{fields}}}\n"
        '    cohort: {keys: ["header:X-User-Id"], salt: "models-salt"}\n'
        "    ramp: {base: 0.0}\n" + extra
    )


def proxy_config(routes: str, server_fields: str = "") -> str:
    """A config on free loopback ports, state in memory, with `routes` (a `routes:` body) and
    `server_fields` added to `server:`."""
    return (
        f'server: {{listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"{server_fields}}}\n'
        "state: {backend: memory}\n"
        f"routes:\n{routes}"
    )


def demo_config(folder: Path) -> Path:
    """The bundled demo config (config/demo.yaml) on free ports, written into `folder`."""
    demo = (ROOT / "config" / "demo.yaml").read_text()
    for old in ("8080", "9901", "9001", "9002"):
        demo = demo.replace(f"127.0.0.1:{old}", f"127.0.0.1:{free_port()}")
    config = folder / "demo.yaml"
    config.write_text(demo)
    return config
