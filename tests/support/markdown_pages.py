"""What the docs tests read of README.md and docs/*.md: fenced blocks, headings and their
GitHub anchors, links, and tables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT

PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

_FENCE = re.compile(r"^( *)```(.*)$")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]*)\)")
_CODE_SPAN = re.compile(r"`[^`]*`")


@dataclass(frozen=True)
class Block:
    """A fenced block: its label (the fence's info string), text and where it opens."""

    page: Path
    line: int
    label: str
    text: str

    def where(self) -> str:
        """`page:line`, relative to the repository."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Link:
    """A link's target as written, and where it is."""

    page: Path
    line: int
    target: str

    def where(self) -> str:
        """`page:line`, relative to the repository."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of `page`, its lines dedented by the fence's indentation."""
    found: list[Block] = []
    opened: tuple[int, str, int] | None = None  # (line, label, indentation)
    body: list[str] = []
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        fence = _FENCE.match(line)
        if opened is None:
            if fence:
                opened, body = (number, fence[2].strip(), len(fence[1])), []
        elif fence and not fence[2].strip():
            found.append(Block(page, opened[0], opened[1], "\n".join(body) + "\n"))
            opened = None
        else:
            indent = opened[2]
            body.append(line[indent:] if line[:indent] == " " * indent else line.lstrip())
    assert opened is None, f"{page.relative_to(ROOT)}:{opened[0]}: a fence is never closed"
    return found


def prose(page: Path) -> str:
    """The page with every fenced block's lines blanked (line numbers kept)."""
    lines = page.read_text().splitlines()
    inside = False
    for index, line in enumerate(lines):
        fence = _FENCE.match(line)
        if fence and (not inside or not fence[2].strip()):
            inside = not inside
            lines[index] = ""
        elif inside:
            lines[index] = ""
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: links read as their text, lower case, every
    character but letters, digits, `_`, `-` and spaces dropped, spaces made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of `page`, a repeated one numbered as GitHub does (`-1`, `-2`)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose(page).splitlines():
        heading = re.match(r"^#{1,6} (.+)$", line)
        if heading:
            base = slug(heading[1])
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[Link]:
    """Every inline link and image of `page` outside code (a link may span lines)."""
    text = prose(page)
    text = _CODE_SPAN.sub(lambda span: re.sub(r"[^\n]", " ", span[0]), text)
    return [
        Link(page, text.count("\n", 0, found.start()) + 1, found[1])
        for found in _LINK.finditer(text)
    ]


def cells(row: str) -> list[str]:
    """The cells of a table row, `\\|` read as a `|` inside a cell."""
    parts = re.split(r"(?<!\\)\|", row.strip().strip("|"))
    return [part.strip().replace("\\|", "|") for part in parts]


def tables(page: Path) -> list[tuple[list[str], list[list[str]]]]:
    """Every table of `page`: its header's cells and its rows' cells."""
    found: list[tuple[list[str], list[list[str]]]] = []
    lines = prose(page).splitlines()
    for index, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.match(r"^\|(\s*:?-+:?\s*\|)+$", lines[index + 1]):
            rows = []
            for row in lines[index + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(cells(row))
            found.append((cells(line), rows))
    return found
