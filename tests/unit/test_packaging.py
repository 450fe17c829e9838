"""Every folder of Python modules under proxy/ is a package that an install (the wheel, the
container image) takes along: a folder without __init__.py imports from a checkout, as a
namespace package, but setuptools leaves it out of the wheel."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_folder_is_a_package():
    folders = {path.parent for path in (ROOT / "proxy").rglob("*.py")}
    assert [f for f in folders if not (f / "__init__.py").is_file()] == []
