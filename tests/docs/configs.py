"""The configs the pages show, and the environment a config written for `--expand-env` is read
in: the docs tests of YAML snippets and of shell commands both load them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.support.markdown_pages import Block, blocks

# A `${NAME}` or `${NAME:-default}` reference, as `proxy.config.environment` reads them.
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^$}]*)?\}")
# The first line of a block that shows a file: `# PATH`, the path ending in .yaml or .yml.
_SHOWN = re.compile(r"^# (\S+\.ya?ml)\b")


def variables(text: str) -> set[str]:
    """The environment variables that `text` names as `${NAME}` or `${NAME:-default}`."""
    return {match[1] for match in _REFERENCE.finditer(text.replace("$$", ""))}


def use_environment(monkeypatch: pytest.MonkeyPatch, text: str, given: dict[str, str]) -> None:
    """Set exactly the variables `given` of those `text` names (the others unset), and `given`."""
    for name in variables(text):
        monkeypatch.delenv(name, raising=False)
    for name, value in given.items():
        monkeypatch.setenv(name, value)


def check_command(block: Block) -> tuple[dict[str, str], list[str]] | None:
    """The variables set and the arguments of the `$ grayscale check ...` line that opens a
    `text` block; None when it opens with another line."""
    first = block.text.splitlines()[0] if block.text.strip() else ""
    if not first.startswith("$ "):
        return None
    words = shlex.split(first[2:])
    environ = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        name, _, value = words.pop(0).partition("=")
        environ[name] = value
    if words[:2] != ["grayscale", "check"]:
        return None
    return environ, words[2:]


def shown_configs(page: Path) -> dict[str, Block]:
    """The config files `page` shows, by the name the page gives them: a `yaml` or `yaml
    expand-env` block whose first line is `# FILE`, and a `yaml invalid` block named by the
    `$ grayscale check ... FILE` line of the `text` block after it."""
    found: dict[str, Block] = {}
    found_blocks = blocks(page)
    for index, block in enumerate(found_blocks):
        first = block.text.splitlines()[0] if block.text.strip() else ""
        if block.label in ("yaml", "yaml expand-env") and (shown := _SHOWN.match(first)):
            found[shown[1]] = block
        elif block.label == "yaml invalid" and index + 1 < len(found_blocks):
            command = check_command(found_blocks[index + 1])
            if command is not None and command[1]:
                found[command[1][-1]] = block
    return found
