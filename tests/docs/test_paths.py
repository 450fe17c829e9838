"""Every file of the repository that README.md and docs/*.md name exists: each path under
`proxy/`, `tests/`, `loadtests/`, `deploy/` and `config/` (in prose, code spans and blocks
alike), each Python file's name written alone in a code span (`checks.py`: some file of
`proxy/`, `tests/` or `loadtests/` has it), and each dotted name of the package
(`proxy.config.loader.parse_config`)."""

from __future__ import annotations

import importlib
import re

import pytest

from tests.support.markdown_pages import PAGES
from tests.support.paths import ROOT

FOLDERS = ("proxy", "tests", "loadtests", "deploy", "config")
_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(FOLDERS)})/[\w./*-]*)")
_FILE_NAME = re.compile(r"`([\w-]+\.py)`")
_DOTTED = re.compile(r"`(proxy(?:\.\w+)+)`")
PYTHON_FILES = {
    path.name
    for folder in ("proxy", "tests", "loadtests")
    for path in (ROOT / folder).rglob("*.py")
} | {path.name for path in ROOT.glob("*.py")}  # (setup.py, build_backend.py)


def named(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """(page:line, what `pattern` matched) for every match on every page."""
    return [
        (f"{page.relative_to(ROOT)}:{number}", match[1].rstrip("."))
        for page in PAGES
        for number, line in enumerate(page.read_text().splitlines(), start=1)
        for match in pattern.finditer(line)
    ]


def exists(path: str) -> bool:
    """Whether `path`, relative to the repository (a `*` in it matches), names something."""
    return any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()


def resolves(dotted: str) -> bool:
    """Whether `dotted` is a module of the package, or a name one of its modules defines."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


PATHS = named(_PATH)
FILE_NAMES = named(_FILE_NAME)
DOTTED = named(_DOTTED)


def test_the_pages_name_paths_of_every_kind():
    assert len(PATHS) > 100 and FILE_NAMES and DOTTED
    assert {path.partition("/")[0] for _, path in PATHS} == set(FOLDERS)


@pytest.mark.parametrize(("where", "path"), PATHS, ids=[f"{w}:{p}" for w, p in PATHS])
def test_a_path_named_exists(where: str, path: str):
    assert exists(path), f"{where}: {path}: no such file or folder"


@pytest.mark.parametrize(("where", "name"), FILE_NAMES, ids=[f"{w}:{n}" for w, n in FILE_NAMES])
def test_a_file_name_named_alone_is_a_file_of_the_repository(where: str, name: str):
    assert name in PYTHON_FILES, f"{where}: {name}: no such Python file here"


@pytest.mark.parametrize(("where", "dotted"), DOTTED, ids=[f"{w}:{d}" for w, d in DOTTED])
def test_a_dotted_name_resolves(where: str, dotted: str):
    assert resolves(dotted), f"{where}: {dotted}: no such module or name in the package"


def test_a_missing_path_is_seen():
    """The checks above can fail: a path, a file name or a dotted name that is not there."""
    assert not exists("proxy/http/server.py") and not exists("tests/nothing/*.py")
    assert "connection.py" not in PYTHON_FILES
    assert not resolves("proxy.analysis.verdict.assess") and resolves("proxy.analysis.assessment")
    assert _PATH.findall("see proxy/http/listener.py. and ../tests/x, https://h/proxy/y") == [
        "proxy/http/listener.py."
    ]
