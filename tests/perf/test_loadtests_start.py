"""Every benchmark script in `loadtests/` still starts: its imports resolve against the code as
it is, and each one with a command line prints its help. (The benchmarks themselves are run by
hand; a renamed module must not leave them broken until then.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

LOADTESTS = Path(__file__).resolve().parents[2] / "loadtests"
SCRIPTS = sorted(path.stem for path in LOADTESTS.glob("*.py"))
COMMANDS = [name for name in SCRIPTS if name.startswith(("bench_", "validate_"))]


def test_every_script_imports() -> None:
    code = "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)"
    done = subprocess.run(
        [sys.executable, "-c", code, *SCRIPTS],
        cwd=LOADTESTS,
        env={"PYTHONPATH": f"{LOADTESTS}:{LOADTESTS.parent}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(SCRIPTS) >= 7


@pytest.mark.parametrize("name", COMMANDS)
def test_each_benchmark_prints_its_help(name: str) -> None:
    done = subprocess.run(
        [sys.executable, f"{name}.py", "--help"],
        cwd=LOADTESTS,
        env={"PYTHONPATH": str(LOADTESTS.parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")
