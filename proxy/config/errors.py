"""What a config file did wrong, said so that a user can find it.

Invariants
- Every issue names the file, the line (1-based; 0 when the file could not be read at all) and
  the dotted field path (empty for the document as a whole).
- A `ConfigError` carries every issue found in one reading, never only the first.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path or '(document)'}: {self.message}"


class ConfigError(Exception):
    """A config file is invalid; `issues` lists every problem found."""

    def __init__(self, issues: Collection[ConfigIssue]):
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def field_path(path: str, name: str) -> str:
    """The path of field `name` of the mapping at `path` (`routes[0]` and `name`:
    `routes[0].name`)."""
    return f"{path}.{name}" if path else name


def entry_path(path: str, key: str) -> str:
    """The path of the entry `key` of the mapping at `path`, a key holding ':' in quotes and
    brackets (`when["header:X-Region"]`)."""
    return f'{path}["{key}"]' if ":" in key else field_path(path, key)
