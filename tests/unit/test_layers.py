"""The rooms of `proxy/` stay in layers: a module imports only from its own room and the rooms
below it, so the folder list is the architecture and no cycle can form between rooms."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "proxy"

# Lowest first. Each room may import from the rooms before it (and from itself).
LAYERS = [
    "runtime",  # the clock, background tasks, the event loop
    "config",  # the config's model, its loader and the file watcher
    "http",  # HTTP/1.1 toward clients and upstreams, knowing nothing of rollouts
    "routing",  # the pure decision: cohort key, bucket, ramp, segments
    "records",  # what is recorded of each request: its outcome, its signed id
    "rollout",  # each route's rollout state machine and where it is kept
    "analysis",  # windows, checks, verdicts, outcome reports
    "fleet",  # many replicas on one Redis: pooled counts, the decider
    "telemetry",  # metrics, access log, logging
    "dataplane",  # a request's way through the proxy
    "api",  # the admin API, its client, the status page
    "app",  # one process's wiring, and a host's workers
    "tools",  # selftest, simulate, explain, the demo, seeded trials
    "cli",  # the command line (proxy/cli.py, proxy/__main__.py)
]
TOP = {"cli.py": "cli", "__main__.py": "cli", "__init__.py": "runtime"}


def room_of_path(path: Path) -> str:
    relative = path.relative_to(ROOT)
    if len(relative.parts) == 1:
        return TOP[relative.name]
    return relative.parts[0]


def room_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "proxy":
        return None
    if len(parts) == 1:
        return "runtime"  # `from proxy import __version__`
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1]


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            if node.module == "proxy":  # `from proxy import clock`: a room's module by name
                found.extend(f"proxy.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_every_room_is_a_known_layer_and_proxy_holds_only_the_command_line():
    rooms = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert rooms == set(LAYERS) - {"cli"}
    assert {p.name for p in ROOT.glob("*.py")} == set(TOP)


def upward(path: Path, here: str) -> list[str]:
    """The imports of the module at `path`, in room `here`, from rooms above it (or from no
    room)."""
    rank = {room: index for index, room in enumerate(LAYERS)}
    wrong = []
    for name in imports(path):
        if name in ("proxy", "proxy.__version__"):
            continue
        there = room_of_module(name)
        if there is not None and rank.get(there, len(LAYERS)) > rank[here]:
            wrong.append(f"{path.name} ({here}) imports {name} ({there})")
    return wrong


def test_each_module_imports_only_its_own_room_and_the_rooms_below():
    modules = sorted(ROOT.rglob("*.py"))
    assert [line for path in modules for line in upward(path, room_of_path(path))] == []


def test_the_check_sees_an_import_from_above_or_from_no_room(tmp_path: Path):
    assert imports(Path(__file__)) == ["__future__", "ast", "pathlib"]
    assert room_of_module("proxy.cli") == "cli" and room_of_module("aiohttp.web") is None
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from proxy import __version__, clock\n"
        "import proxy.dataplane.gateway\n"
        "from proxy.analysis.window import Windows\n"
        "from .x import y\n"
    )
    assert imports(probe) == [
        "proxy",
        "proxy.__version__",
        "proxy.clock",
        "proxy.dataplane.gateway",
        "proxy.analysis.window",
    ]
    # In telemetry, the data plane is above and analysis below; `proxy.clock` is in no room.
    assert upward(probe, "telemetry") == [
        "probe.py (telemetry) imports proxy.clock (clock)",
        "probe.py (telemetry) imports proxy.dataplane.gateway (dataplane)",
    ]
    assert upward(probe, "tools") == ["probe.py (tools) imports proxy.clock (clock)"]
