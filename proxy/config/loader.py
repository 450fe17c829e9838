"""YAML → validated `Config`, reporting every problem with file, line and dotted field path.

The YAML is composed into a node tree first so each value keeps its line (its `${NAME}`
substituted from the environment on the way, when asked: `proxy.config.environment`); then the
tree is walked once by the readers of its sections (`proxy.config.sections`), collecting all
problems before raising, so a user fixes a file in one pass.

Invariants
- `load_config` and `parse_config` return a valid `Config` or raise `ConfigError` with every
  issue found; nothing else escapes them, whatever the text.
- A config read with `LoadOptions` keeps them (`Config.options`): its listen addresses are the
  options' where they give one, and a reload that reads the file with them again keeps them.
- `digest` identifies the file's text, whatever the options and the environment.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import yaml
from yaml.nodes import Node, SequenceNode

from proxy.config.environment import compose
from proxy.config.errors import ConfigError, ConfigIssue
from proxy.config.model import (
    AdminConfig,
    Config,
    LoadOptions,
    OutcomesConfig,
    Route,
    ServerConfig,
    StateBackend,
    StateConfig,
)
from proxy.config.sections.routes import RouteReader
from proxy.config.sections.server import ServerReader
from proxy.config.sections.state import StateReader
from proxy.config.values import parse_duration

__all__ = [
    "AS_WRITTEN",
    "ConfigError",
    "ConfigIssue",
    "load_config",
    "parse_config",
    "parse_duration",
]

AS_WRITTEN = LoadOptions()  # no substitution, the file's own listen addresses


def load_config(path: str | Path, options: LoadOptions = AS_WRITTEN) -> Config:
    """Read and validate the YAML file at `path`, as `options` say."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(str(path), 0, "", f"cannot read file: {exc}")]) from exc
    return parse_config(text, str(path), options)


def parse_config(text: str, source: str = "<string>", options: LoadOptions = AS_WRITTEN) -> Config:
    """Validate YAML `text`, as `options` say; `source` names it in error messages."""
    try:
        composed = compose(text, os.environ if options.expand_env else None)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError([ConfigIssue(source, line, "", f"invalid YAML: {exc.problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(source, 0, "", f"invalid YAML: {exc}")]) from exc
    if composed.root is None:
        raise ConfigError([ConfigIssue(source, 1, "", "the file is empty")])
    reader = ConfigReader(source, composed.substituted)
    for value in composed.unresolved:
        reader.spoil(value.node, value.path, value.message)
    config = reader.config(composed.root, hashlib.sha256(text.encode()).hexdigest()[:12])
    reader.report_unknown()
    if reader.issues:
        raise ConfigError(sorted(reader.issues, key=lambda issue: issue.line))
    server = replace(
        config.server,
        listen=options.listen or config.server.listen,
        admin_listen=options.admin_listen or config.server.admin_listen,
    )
    return replace(config, server=server, options=options)


class ConfigReader(RouteReader, StateReader, ServerReader):
    """Reads a whole file: its sections, and what holds between them."""

    def config(self, root: Node, digest: str) -> Config:
        """The whole file at `root` (`digest`: its text's)."""
        fields = self.mapping(
            root,
            "",
            ("server", "admin", "state", "access_log", "outcomes", "routes"),
            required=("routes",),
        )
        server = self.field(fields, "server", "", self.server, ServerConfig())
        routes: list[Route] = []
        node = fields.get("routes")
        if node is not None:
            for item, path in self.sequence(node, "routes"):
                routes.append(self.route(item, path))
            if isinstance(node, SequenceNode) and not node.value:
                self.fail(node, "routes", "at least one route is needed")
            self.unique(node, "routes", [(r.name, "name") for r in routes])
            self.route_matches(node, routes)
        state = self.field(fields, "state", "", self.state, StateConfig())
        if server.workers > 1:
            self.shared_by_workers(fields, state, routes)

        return Config(
            routes=tuple(routes),
            server=server,
            state=state,
            admin=self.field(fields, "admin", "", self.admin, AdminConfig()),
            access_log=self.field(fields, "access_log", "", self.access_log, None),
            outcomes=self.field(fields, "outcomes", "", self.outcomes, OutcomesConfig()),
            source=self.source,
            digest=digest,
        )

    def shared_by_workers(
        self, fields: dict[str, Node], state: StateConfig, routes: list[Route]
    ) -> None:
        """Refuse what several workers cannot share: state in memory (each would have its
        own), and analysis without Redis (each would judge a fraction of the traffic)."""
        node = fields.get("state", fields["server"])
        if state.backend is StateBackend.MEMORY:
            self.fail(
                node,
                "state.backend",
                "memory cannot be shared by server.workers > 1: use file or redis",
            )
        elif state.backend is StateBackend.FILE and any(r.analysis for r in routes):
            self.fail(
                node,
                "state.backend",
                "analysis with server.workers > 1 needs backend: redis (the workers pool "
                "their observations there)",
            )
