"""The `routes`: each route's match, upstreams, cohort, hooks, promotion and fallback, with its
ramp and segments, analysis and shadow read by their own readers.

Invariants
- Two routes never match the same request: on one path prefix, at most one route without
  `model`, and no model in two routes.
- No secret is read from the file: an upstream URL with credentials is refused.
- Promotion needs an analysis (a candidate is promoted on passing verdicts).
"""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from urllib.parse import urlsplit

from yaml.nodes import Node, ScalarNode, SequenceNode

from proxy.config.errors import field_path
from proxy.config.model import (
    GRPC_ERROR_CODES,
    Cohort,
    Ejection,
    Fallback,
    GrpcStatus,
    KeySource,
    Missing,
    Promotion,
    Ramp,
    RollbackHook,
    Route,
    Segment,
    Source,
    Upstream,
)
from proxy.config.sections.analysis import AnalysisReader
from proxy.config.sections.segments import SegmentReader
from proxy.config.sections.shadow import ShadowReader

DEFAULT_EJECTION: Ejection | None = Ejection()


class RouteReader(AnalysisReader, ShadowReader, SegmentReader):
    """Reads the `routes` list's items."""

    def route(self, node: Node, path: str) -> Route:
        """One item of `routes`."""
        fields = self.mapping(
            node,
            path,
            (
                "name",
                "match",
                "stable",
                "candidate",
                "cohort",
                "ramp",
                "segments",
                "analysis",
                "on_rollback",
                "fallback",
                "ejection",
                "shadow",
                "promote",
                "on_promote",
                "websocket",
                "grpc_error_codes",
            ),
            required=("name", "match", "stable", "candidate", "cohort"),
        )
        name = self.field(fields, "name", path, self.name, "")
        prefix = ""
        models: tuple[str, ...] = ()
        if "match" in fields:
            match_path = field_path(path, "match")
            match = self.mapping(
                fields["match"], match_path, ("path_prefix", "model"), ("path_prefix",)
            )
            prefix = self.field(match, "path_prefix", match_path, self.string, "/")
            if "model" in match:
                models = self.models(match["model"], field_path(match_path, "model"))
            if not prefix.startswith("/"):
                self.fail(
                    match["path_prefix"], field_path(match_path, "path_prefix"), "must start with /"
                )
        placeholder = Upstream("http://invalid")
        ramp = self.field(fields, "ramp", path, self.ramp, Ramp())
        segments: list[Segment] = []
        if "segments" in fields:
            segments_path = field_path(path, "segments")
            for item, item_path in self.sequence(fields["segments"], segments_path):
                segments.append(self.segment(item, item_path, ramp))
            self.unique(fields["segments"], segments_path, [(s.name, "name") for s in segments])
        stable = self.field(fields, "stable", path, self.upstream, placeholder)
        candidate = self.field(fields, "candidate", path, self.upstream, placeholder)
        if "shadow" in fields and candidate.http2:
            self.fail(
                fields["shadow"],
                field_path(path, "shadow"),
                "not supported with an http2 candidate (shadow copies go over HTTP/1.1)",
            )
        return Route(
            name=name,
            path_prefix=prefix,
            stable=stable,
            candidate=candidate,
            cohort=self.field(fields, "cohort", path, self.cohort, Cohort((), name)),
            ramp=ramp,
            segments=tuple(segments),
            analysis=self.field(fields, "analysis", path, self.analysis, None),
            on_rollback=self.field(fields, "on_rollback", path, self.rollback_hook, None),
            fallback=self.field(
                fields,
                "fallback",
                path,
                lambda n, p, d: self.choice(n, p, d, Fallback),
                Fallback.ON_CONNECT_ERROR,
            ),
            ejection=self.field(fields, "ejection", path, self.ejection, DEFAULT_EJECTION),
            models=models,
            shadow=self.field(
                fields, "shadow", path, lambda n, p, d: self.shadow(n, p, name), None
            ),
            promote=self.promotion(fields, path),
            on_promote=self.field(fields, "on_promote", path, self.rollback_hook, None),
            websocket=self.field(fields, "websocket", path, self.boolean, True),
            grpc_error_codes=self.field(
                fields, "grpc_error_codes", path, self.grpc_codes, GRPC_ERROR_CODES
            ),
        )

    def grpc_codes(
        self, node: Node, path: str, default: frozenset[GrpcStatus]
    ) -> frozenset[GrpcStatus]:
        """gRPC status codes, by name (`UNAVAILABLE`) or number (14); `[]` for none."""
        codes: set[GrpcStatus] = set()
        for item, item_path in self.sequence(node, path):
            value = self.scalar(item, item_path)
            code = None
            if isinstance(value, str) and value.upper() in GrpcStatus.__members__:
                code = GrpcStatus[value.upper()]
            elif isinstance(value, int) and not isinstance(value, bool):
                code = next((c for c in GrpcStatus if c.value == value), None)
            if code is None or code is GrpcStatus.OK:
                names = ", ".join(c.name for c in GrpcStatus if c is not GrpcStatus.OK)
                self.fail(item, item_path, f"expected a gRPC status code other than OK: {names}")
            else:
                codes.add(code)
        return frozenset(codes)

    def promotion(self, fields: dict[str, Node], path: str) -> Promotion | None:
        """The route's `promote`; None without one."""
        node = fields.get("promote")
        if node is None:
            return None
        where = field_path(path, "promote")
        promote = self.mapping(node, where, ("after",), ("after",))
        after = self.field(promote, "after", where, self.duration, 0.0)
        if "analysis" not in fields:
            self.fail(node, where, "needs analysis: a candidate is promoted on passing verdicts")
        return Promotion(after)

    def models(self, node: Node, path: str) -> tuple[str, ...]:
        """The model names a route matches."""
        names = self.strings(node, path)
        if not names or not all(names):
            self.fail(node, path, "expected one or more model names")
        elif len(set(names)) < len(names):
            self.fail(node, path, "a model is named twice")
        return tuple(names)

    def route_matches(self, node: Node, routes: list[Route]) -> None:
        """Two routes never match the same request: on one path prefix, at most one route
        without `model`, and no model in two routes."""
        claimed: dict[tuple[str, str | None], str] = {}
        for index, route in enumerate(routes):
            for model in route.models or (None,):
                other = claimed.setdefault((route.path_prefix, model), route.name)
                if other == route.name or not isinstance(node, SequenceNode):
                    continue
                field = "match.path_prefix" if model is None else "match.model"
                what = f"model {model!r}" if model else "requests without a model"
                self.fail(
                    node.value[index],
                    f"routes[{index}].{field}",
                    f"{what} under {route.path_prefix!r} already go to route {other!r}",
                )

    def upstream(self, node: Node, path: str, default: Upstream) -> Upstream:
        """A route's `stable` or `candidate`."""
        base = Upstream(default.url)
        fields = self.mapping(node, path, [f.name for f in dataclass_fields(Upstream)], ("url",))
        url = self.field(fields, "url", path, self.upstream_url, default.url)
        client = self.certificate_and_key(fields, path, ("client_cert_file", "client_key_file"))
        for name in ("client_cert_file", "client_key_file", "server_name"):
            if name in fields and url.startswith("http://"):
                self.fail(fields[name], field_path(path, name), "only for an https:// url")
        return Upstream(
            url=url,
            connect_timeout=self.field(
                fields, "connect_timeout", path, self.duration, base.connect_timeout
            ),
            first_byte_timeout=self.field(
                fields, "first_byte_timeout", path, self.duration, base.first_byte_timeout
            ),
            idle_timeout=self.field(fields, "idle_timeout", path, self.duration, base.idle_timeout),
            timeout=self.field(fields, "timeout", path, self.duration, base.timeout),
            max_connections=self.field(
                fields, "max_connections", path, self.count, base.max_connections
            ),
            max_pending=self.field(
                fields, "max_pending", path, self.count_or_zero, base.max_pending
            ),
            keepalive_timeout=self.field(
                fields, "keepalive_timeout", path, self.duration_or_zero, base.keepalive_timeout
            ),
            ca_file=self.field(fields, "ca_file", path, self.ca_file, None),
            client_cert_file=client[0] if client else None,
            client_key_file=client[1] if client else None,
            server_name=self.field(fields, "server_name", path, self.host_name, None),
            model=self.field(fields, "model", path, self.string, "") or None,
            http2=self.field(fields, "http2", path, self.boolean, False),
        )

    def upstream_url(self, node: Node, path: str, default: str) -> str:
        """An upstream's URL, without credentials."""
        value = self.url(node, path, default)
        if urlsplit(value).username is not None:
            # Never used to authenticate, and it would show in /status, logs and state.
            self.fail(node, path, "credentials in an upstream URL are not supported: remove them")
            return default
        return value

    def ejection(self, node: Node, path: str, default: Ejection | None) -> Ejection | None:
        """A route's `ejection`; None for `ejection: false`."""
        if isinstance(node, ScalarNode) and self.scalar(node, path) is False:
            return None
        base = Ejection()
        fields = self.mapping(node, path, [f.name for f in dataclass_fields(Ejection)])
        return Ejection(
            consecutive_errors=self.field(
                fields, "consecutive_errors", path, self.count, base.consecutive_errors
            ),
            base_time=self.field(fields, "base_time", path, self.duration, base.base_time),
            max_time=self.field(fields, "max_time", path, self.duration, base.max_time),
        )

    def cohort(self, node: Node, path: str, default: Cohort) -> Cohort:
        """A route's `cohort`."""
        fields = self.mapping(node, path, ("keys", "salt", "missing"), ("keys",))
        keys: list[KeySource] = []
        if "keys" in fields:
            keys_path = field_path(path, "keys")
            for item, item_path in self.sequence(fields["keys"], keys_path):
                keys.append(self.key_source(item, item_path, KeySource(Source.HEADER, "-")))
            if isinstance(fields["keys"], SequenceNode) and not keys:
                self.fail(fields["keys"], keys_path, "at least one key source is needed")
        return Cohort(
            keys=tuple(keys),
            salt=self.field(fields, "salt", path, self.string, default.salt),
            missing=self.field(
                fields,
                "missing",
                path,
                lambda n, p, d: self.choice(n, p, d, Missing),
                Missing.STABLE,
            ),
        )

    def rollback_hook(
        self, node: Node, path: str, default: RollbackHook | None
    ) -> RollbackHook | None:
        """An `on_rollback` or `on_promote` webhook."""
        fields = self.mapping(node, path, ("webhook", "timeout", "attempts"), ("webhook",))
        base = RollbackHook("")
        return RollbackHook(
            webhook=self.field(fields, "webhook", path, self.url, ""),
            timeout=self.field(fields, "timeout", path, self.duration, base.timeout),
            attempts=self.field(fields, "attempts", path, self.count, base.attempts),
        )
