"""`${NAME}` in a config file's values, replaced from the environment of the process.

Opt-in, with `--expand-env` on the command line (as Loki, Tempo and Mimir do with
`-config.expand-env`) rather than with a field in the file: whoever starts the process owns its
environment and decides whether a `$` in the file names a variable; the same file still reads as
written wherever the flag is not given; and a field could not say how the file that holds it is
to be read.

Syntax: `${NAME}`; `${NAME:-default}`, the default (no `$` or `}` in it) when NAME is unset or
empty; `$$`, a dollar sign. The result is read as its field's type: `${WORKERS}` in a number
field is a number, in a text field text (`0123` stays `0123`, `yes` stays `yes`). Quoting a
value changes nothing of this; inside a `{...}` mapping it is needed, as YAML allows no braces
in a value there unquoted.

Invariants
- Only scalar values are substituted, never field names. The text a variable brings is not
  substituted again, and a value that aliases refer to is substituted once, where it is written.
- A substituted value without an explicit YAML tag is typed as if written unquoted, and is also
  known as substituted, so that a text field takes its text as it is (`Reader.string`).
- Every `$` in a value is `$$`, `${NAME}` or `${NAME:-default}`. Any other `$`, and a variable
  that is unset and has no default, is a problem at the value's line and field path.
- The environment is read each time the file is: a reload of a running proxy reads its own
  environment, the one the process was started with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import yaml
from yaml.events import ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode

from proxy.config.errors import entry_path

_REFERENCE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^$}]*))?\})")
_WRITTEN = re.compile(r"\$(?:\{[^}]*\}?|\w*)")  # what a `$` that is no reference starts, to quote
FORMS = "write ${NAME} or ${NAME:-default} for a variable, $$ for a dollar sign"


@dataclass(frozen=True, slots=True)
class Composed:
    """A YAML document's node tree (None when the text holds no document), the values whose
    text came from the environment, and those that could not be substituted."""

    root: Node | None
    substituted: frozenset[Node]
    unresolved: tuple[Unresolved, ...]


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A value that could not be substituted: where it is, and why."""

    node: Node
    path: str
    message: str


def substitute(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """`text` with its variables replaced from `environ`, and what could not be replaced (such a
    reference is left as written)."""
    parts: list[str] = []
    problems: list[str] = []
    at = 0
    while (dollar := text.find("$", at)) >= 0:
        parts.append(text[at:dollar])
        match = _REFERENCE.match(text, dollar)
        if match is None:
            written = _WRITTEN.match(text, dollar)
            assert written is not None  # (it matches a lone `$`)
            problems.append(f"unexpected {written[0]!r}: {FORMS}")
            parts.append(written[0])
            at = written.end()
            continue
        at = match.end()
        name, default = match["name"], match["default"]
        if name is None:
            parts.append("$")
        elif environ.get(name) or (default is None and name in environ):
            parts.append(environ[name])
        elif default is not None:
            parts.append(default)
        else:
            problems.append(
                f"environment variable {name} is not set (or give a default: ${{{name}:-default}})"
            )
            parts.append(match[0])
    parts.append(text[at:])
    return "".join(parts), problems


class _Composer(yaml.SafeLoader):
    """PyYAML's safe loader, substituting scalar values while it builds the node tree (before
    their types are resolved), and knowing each node's field path."""

    def __init__(self, text: str, environ: Mapping[str, str] | None):
        super().__init__(text)
        self.environ = environ
        self.substituted: set[Node] = set()
        self.unresolved: list[Unresolved] = []
        self._paths: list[str] = []  # of the nodes being composed, the innermost last

    def compose_node(self, parent: Node | None, index: int | Node | None) -> Node | None:
        path = self._path(parent, index)
        is_key = isinstance(parent, MappingNode) and index is None
        problems: list[str] = []
        substituted = False
        if self.environ is not None and not is_key and self.check_event(ScalarEvent):
            event: ScalarEvent = self.peek_event()  # type: ignore[no-untyped-call]
            if "$" in event.value:
                event.value, problems = substitute(event.value, self.environ)
                substituted = True
                if event.tag is None:
                    event.implicit = (True, False)  # typed as if written unquoted
        self._paths.append(path)
        try:
            # (the stubs say `index: int`; PyYAML gives a mapping's value its key node)
            node = super().compose_node(parent, index)  # type: ignore[arg-type]
        finally:
            self._paths.pop()
        if substituted:
            assert isinstance(node, ScalarNode)
            self.substituted.add(node)
            self.unresolved.extend(Unresolved(node, path, problem) for problem in problems)
        return node

    def _path(self, parent: Node | None, index: int | Node | None) -> str:
        """The field path of the node composed under `parent` at `index` (a list's position, or
        the key of a mapping's value; None for a key)."""
        if parent is None:
            return ""
        here = self._paths[-1]
        if isinstance(index, int):
            return f"{here}[{index}]"
        if isinstance(index, ScalarNode):
            return entry_path(here, str(index.value))
        return here


def compose(text: str, environ: Mapping[str, str] | None) -> Composed:
    """The YAML `text` composed, its values substituted from `environ` (none with None). Raises
    `yaml.YAMLError` when `text` is not YAML."""
    composer = _Composer(text, environ)
    try:
        root = composer.get_single_node()
    finally:
        composer.dispose()
    return Composed(root, frozenset(composer.substituted), tuple(composer.unresolved))
