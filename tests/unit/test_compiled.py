"""The compiled build (setup.py, `make compiled`): the modules it compiles with mypyc stay
compilable and behave as their sources, and GRAYSCALE_PURE=1 runs the sources of a compiled
build. (`make test-compiled` runs all of `make test`'s tests on the compiled build.)"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def compiled_modules() -> list[str]:
    """setup.py's COMPILED: the paths of the modules it compiles."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "COMPILED":
            paths: list[str] = ast.literal_eval(node.value)
            return paths
    raise AssertionError("setup.py names no COMPILED modules")


def test_the_compiled_modules_exist_and_are_no_package():
    paths = compiled_modules()
    assert paths and all((ROOT / path).is_file() for path in paths)
    assert not [path for path in paths if path.endswith("__init__.py")]  # (the hook is there)


def _waits(node: ast.AST) -> list[int]:
    return [
        n.lineno
        for n in ast.walk(node)
        if isinstance(n, ast.Await | ast.AsyncWith | ast.AsyncFor | ast.Yield | ast.YieldFrom)
    ]


@pytest.mark.parametrize("path", compiled_modules())
def test_no_compiled_coroutine_waits_while_handling_an_exception(path):
    """A compiled coroutine (or generator) suspended inside an `except` (or a `finally`) leaves
    its exception set as the one being handled while other code runs on the loop: every
    exception raised meanwhile gets it as `__context__` (which is why no code reads another
    exception's `__context__`: the parsers keep what their callbacks raised). Nor can mypyc
    compile an async generator (a class with `__anext__` instead)."""
    tree = ast.parse((ROOT / path).read_text(), path)
    waiting, generators = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Try | ast.TryStar):
            for handler in node.handlers:
                waiting += _waits(handler)
            for statement in node.finalbody:
                waiting += _waits(statement)
        if isinstance(node, ast.AsyncFunctionDef):
            generators += [
                n.lineno for n in ast.walk(node) if isinstance(n, ast.Yield | ast.YieldFrom)
            ]
    assert (waiting, generators) == ([], [])


SHOW = """
import importlib, sys
from proxy.telemetry.metrics import COMPILED
print(COMPILED, *[importlib.import_module(m).__file__.endswith(".py") for m in sys.argv[1:]])
"""


def _environment(pure: bool) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GRAYSCALE_PURE", None)
    return {**env, "GRAYSCALE_PURE": "1"} if pure else env


def _run(pure: bool) -> list[str]:
    modules = [path.removesuffix(".py").replace("/", ".") for path in compiled_modules()]
    command = [sys.executable, "-c", SHOW, *modules]
    env = _environment(pure)
    return subprocess.run(
        command, env=env, capture_output=True, text=True, check=True
    ).stdout.split()


def test_grayscale_pure_imports_the_sources_and_says_so():
    said = _run(pure=True)
    assert said == ["False"] + ["True"] * (len(said) - 1)  # not compiled; each from its .py


def test_a_build_is_compiled_whole_or_not_at_all():
    said = _run(pure=False)
    compiled = said[0] == "True"
    assert said[1:] == ["False" if compiled else "True"] * (len(said) - 1)
    version = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"],
        env=_environment(pure=False),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.strip().endswith("(compiled)" if compiled else "(pure Python)")


def test_the_installed_command_runs_from_any_directory(tmp_path):
    """An editable compiled install (`make compiled`) finds its shared library inside the
    package, as it finds the package: not only from the checkout's root."""
    command = Path(sys.executable).parent / "grayscale"
    if not command.exists():
        pytest.skip(f"{command} is not installed (make installs it)")
    compiled = _run(pure=False)[0] == "True"
    env = _environment(pure=False)
    env.pop("PYTHONPATH")
    version = subprocess.run(
        [str(command), "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().endswith("(compiled)" if compiled else "(pure Python)")


def test_no_module_reads_another_exception_s_context():
    """`__context__` is set differently by compiled code (see above): what a parser callback
    raised is kept by the connection instead."""
    readers = [
        f"{path}:{node.lineno}"
        for path in sorted(ROOT.glob("proxy/**/*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and node.attr == "__context__"
    ]
    assert readers == []
