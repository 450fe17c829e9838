"""The README's table of commands and the development page's table of folders say what the
code has: every command with only the flags it takes, every folder of `proxy/` in its layer."""

from __future__ import annotations

import argparse
import re

from proxy.cli import build_parser
from tests.support.markdown_pages import tables
from tests.support.paths import ROOT
from tests.unit.test_layers import LAYERS


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Each `grayscale` command's own parser, by name."""
    parser = build_parser()
    found = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(found.choices)


def commands_table() -> list[tuple[list[str], str]]:
    """(the command names of a row, its synopsis) of the README's table of commands."""
    rows = []
    for header, body in tables(ROOT / "README.md"):
        if header == ["command", "what it does"]:
            for synopsis, _ in body:
                names = synopsis.strip("`").split()[1]
                rows.append((names.split("|"), synopsis))
    return rows


def test_every_command_is_in_the_readme_with_only_its_own_flags():
    commands = subcommands()
    listed = {name for names, _ in commands_table() for name in names}
    assert listed == set(commands), (
        f"missing: {set(commands) - listed}, unknown: {listed - set(commands)}"
    )
    for names, synopsis in commands_table():
        for name in names:
            flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", synopsis))
            unknown = flags - set(commands[name]._option_string_actions)
            assert not unknown, f"grayscale {name} takes no {sorted(unknown)}"


def test_the_layout_lists_every_folder_of_the_package_in_its_layer():
    page = ROOT / "docs" / "development.md"
    folders = [
        match[1]
        for header, body in tables(page)
        if header == ["folder", "role"]
        for row in body
        if (match := re.fullmatch(r"`proxy/(\w+)/`", row[0]))
    ]
    package = {path.parent.name for path in (ROOT / "proxy").glob("*/__init__.py")}
    assert set(folders) == package, f"missing: {package - set(folders)}"
    assert folders == [layer for layer in LAYERS if layer in package], "out of layer order"
