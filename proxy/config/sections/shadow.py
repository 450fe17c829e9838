"""A route's `shadow`: the share of requests copied to the candidate, and how answers compare.

Invariants
- A comparison is `exact`, or exactly one of `json` (with its `tolerance`) or `text` (with its
  `min_similarity`).
- Shadowed methods are upper-case HTTP method names.
"""

from __future__ import annotations

import re
from dataclasses import fields as dataclass_fields

from yaml.nodes import Node, ScalarNode

from proxy.config.errors import field_path
from proxy.config.model import Compare, ExactCompare, JsonCompare, Shadow, TextCompare
from proxy.config.reader import Reader

_METHOD = re.compile(r"[A-Z]{1,20}")


class ShadowReader(Reader):
    """Reads a route's `shadow`."""

    def shadow(self, node: Node, path: str, route: str) -> Shadow:
        """A route's `shadow` (`route`: the route's name, the stem of the default salt)."""
        names = [f.name for f in dataclass_fields(Shadow)]
        fields = self.mapping(node, path, names, ("share",))
        base = Shadow(0.0, f"{route}-shadow")
        methods = base.methods
        if "methods" in fields:
            methods = tuple(
                m.upper() for m in self.strings(fields["methods"], field_path(path, "methods"))
            )
            if not methods or not all(_METHOD.fullmatch(m) for m in methods):
                self.fail(
                    fields["methods"],
                    field_path(path, "methods"),
                    "expected HTTP methods like POST",
                )
        minimum = None
        if "min_agreement" in fields:
            minimum = self.fraction(fields["min_agreement"], field_path(path, "min_agreement"), 0.0)
        return Shadow(
            share=self.field(fields, "share", path, self.fraction, 0.0),
            salt=self.field(fields, "salt", path, self.string, base.salt),
            compare=self.field(fields, "compare", path, self.compare, base.compare),
            methods=methods,
            max_in_flight=self.field(fields, "max_in_flight", path, self.count, base.max_in_flight),
            max_bytes_in_flight=self.field(
                fields, "max_bytes_in_flight", path, self.count, base.max_bytes_in_flight
            ),
            timeout=self.field(fields, "timeout", path, self.duration, base.timeout),
            min_agreement=minimum,
            min_comparisons=self.field(
                fields, "min_comparisons", path, self.count, base.min_comparisons
            ),
        )

    def compare(self, node: Node, path: str, default: Compare) -> Compare:
        """How shadow answers compare: exact, some JSON fields, or a text's similarity."""
        if isinstance(node, ScalarNode):
            if self.scalar(node, path) != "exact":
                self.fail(node, path, "expected exact, {json: [fields]} or {text: field}")
            return ExactCompare()
        fields = self.mapping(node, path, ("json", "tolerance", "text", "min_similarity"))
        if ("json" in fields) == ("text" in fields):
            self.fail(node, path, "expected exactly one of json or text")
            return default
        if "json" in fields:
            if "min_similarity" in fields:
                self.fail(
                    fields["min_similarity"], field_path(path, "min_similarity"), "only with text"
                )
            paths = tuple(self.strings(fields["json"], field_path(path, "json")))
            if not paths or not all(paths):
                self.fail(
                    fields["json"], field_path(path, "json"), "expected one or more field paths"
                )
            tolerance = self.field(fields, "tolerance", path, self.non_negative, 0.0)
            return JsonCompare(paths, tolerance)
        if "tolerance" in fields:
            self.fail(fields["tolerance"], field_path(path, "tolerance"), "only with json")
        return TextCompare(
            self.field(fields, "text", path, self.string, ""),
            self.field(fields, "min_similarity", path, self.fraction, 0.9),
        )
