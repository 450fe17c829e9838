"""A route's `ramp` and its `segments`: who is matched by which conditions, and what they get.

Invariants
- A ramp's base is not above its max; a segment's ramp starts with its route's unless it names
  its own start.
- A segment has at least one condition, and exactly one of `variant` or `ramp`.
"""

from __future__ import annotations

from yaml.nodes import MappingNode, Node

from proxy.config.errors import entry_path, field_path
from proxy.config.model import (
    AttributeCondition,
    ClientIpCondition,
    Condition,
    KeySource,
    PathPrefixCondition,
    Ramp,
    Segment,
    Source,
    UserIdCondition,
    Variant,
)
from proxy.config.reader import Reader


class SegmentReader(Reader):
    """Reads a route's ramp and segments."""

    def ramp(self, node: Node, path: str, default: Ramp) -> Ramp:
        """A ramp, starting and stepping as `default` does unless it says otherwise."""
        fields = self.mapping(node, path, ("start", "base", "slope", "per", "max"))
        ramp = Ramp(
            start=self.field(fields, "start", path, self.timestamp, default.start),
            base=self.field(fields, "base", path, self.fraction, 0.0),
            slope=self.field(fields, "slope", path, self.number, 0.0),
            per=self.field(fields, "per", path, self.duration, default.per),
            max=self.field(fields, "max", path, self.fraction, 1.0),
        )
        if ramp.base > ramp.max:
            self.fail(
                node, field_path(path, "base"), f"base {ramp.base:g} is above max {ramp.max:g}"
            )
        return ramp

    def segment(self, node: Node, path: str, route_ramp: Ramp) -> Segment:
        """A segment (`route_ramp`: its route's ramp, whose start a segment ramp takes)."""
        fields = self.mapping(
            node, path, ("name", "when", "unless", "variant", "ramp"), required=("name", "when")
        )
        variant = None
        if "variant" in fields:
            variant = self.choice(
                fields["variant"], field_path(path, "variant"), Variant.STABLE, Variant
            )
        # A segment ramp starts with its route's rollout unless it names its own start.
        inherited = Ramp(start=route_ramp.start, per=route_ramp.per)
        ramp = self.field(fields, "ramp", path, self.ramp, inherited) if "ramp" in fields else None
        if (variant is None) == (ramp is None):
            self.fail(node, path, "a segment needs exactly one of 'variant' or 'ramp'")
        when = self.conditions(fields["when"], field_path(path, "when")) if "when" in fields else ()
        if isinstance(fields.get("when"), MappingNode) and not fields["when"].value:
            self.fail(fields["when"], field_path(path, "when"), "at least one condition is needed")
        unless = (
            self.conditions(fields["unless"], field_path(path, "unless"))
            if "unless" in fields
            else ()
        )
        return Segment(
            name=self.field(fields, "name", path, self.name, ""),
            when=when,
            unless=unless,
            variant=variant,
            ramp=ramp,
        )

    def conditions(self, node: Node, path: str) -> tuple[Condition, ...]:
        """The conditions of a `when` or an `unless`."""
        if not isinstance(node, MappingNode):
            self.fail(node, path, "expected a mapping of conditions")
            return ()
        conditions: list[Condition] = []
        for key_node, value_node in node.value:
            selector = str(key_node.value)
            item_path = entry_path(path, selector)
            condition = self.condition(selector, key_node, value_node, item_path)
            if condition is not None:
                conditions.append(condition)
        return tuple(conditions)

    def condition(self, selector: str, key_node: Node, node: Node, path: str) -> Condition | None:
        """One condition, by its selector; None (and a problem) for an unknown selector."""
        if selector == "client_ip":
            return ClientIpCondition(self.networks(node, path))
        values = self.strings(node, path)
        if selector == "path_prefix":
            if not all(v.startswith("/") for v in values):
                self.fail(node, path, "path prefixes must start with /")
            return PathPrefixCondition(tuple(values))
        if selector == "user_id":
            return UserIdCondition(frozenset(values))
        if ":" in selector:
            key = self.key_source(key_node, path, KeySource(Source.HEADER, "-"))
            return AttributeCondition(key, frozenset(values))
        self.fail(
            key_node,
            path,
            "unknown condition (expected header:NAME, cookie:NAME, query:NAME, path_prefix, "
            "client_ip or user_id)",
        )
        return None
