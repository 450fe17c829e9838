"""YAML → validated `Config`, reporting every problem with file, line and dotted field path.

The YAML is composed into a node tree first so each value keeps its line; then the tree is walked
once, collecting all problems before raising, so a user fixes a file in one pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import math
import re
import socket
import ssl
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.config.model import (
    MAX_OUTCOME,
    METRIC_PLACEHOLDER,
    METRIC_PLACEHOLDERS,
    OUTCOME_NAME,
    AccessLogConfig,
    AdminConfig,
    AnalysisMethod,
    AnalysisSpec,
    AttributeCondition,
    ClientIpCondition,
    Cohort,
    Compare,
    Comparison,
    Condition,
    Config,
    Ejection,
    ExactCompare,
    Fallback,
    Inconclusive,
    IPNetwork,
    JsonCompare,
    KeySource,
    LatencyMeasure,
    Listen,
    MetricCheck,
    Missing,
    OnError,
    OutcomeBasis,
    OutcomeCheck,
    OutcomesConfig,
    PathPrefixCondition,
    PrometheusSource,
    Promotion,
    Ramp,
    RollbackHook,
    Route,
    Segment,
    Sentinel,
    ServerConfig,
    Shadow,
    Source,
    StateBackend,
    StateConfig,
    TextCompare,
    Upstream,
    UserIdCondition,
    Variant,
)

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

DEFAULT_EJECTION: Ejection | None = Ejection()
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds of a duration written `500ms`, `30s`, `5m`, `1h` or `1d`; 0 when it is not one."""
    match = _DURATION.match(text)
    return float(match[1]) * _UNIT_SECONDS[match[2]] if match else 0.0


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
MAX_WORKERS = 256
_KEY_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_METHOD = re.compile(r"[A-Z]{1,20}")


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


def load_config(path: str | Path) -> Config:
    """Read and validate the YAML file at `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(str(path), 0, "", f"cannot read file: {exc}")]) from exc
    return parse_config(text, str(path))


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate YAML `text`; `source` names it in error messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError([ConfigIssue(source, line, "", f"invalid YAML: {exc.problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(source, 0, "", f"invalid YAML: {exc}")]) from exc
    if root is None:
        raise ConfigError([ConfigIssue(source, 1, "", "the file is empty")])
    parser = _Parser(source)
    config = parser.config(root, hashlib.sha256(text.encode()).hexdigest()[:12])
    parser.report_unknown()
    if parser.issues:
        raise ConfigError(sorted(parser.issues, key=lambda issue: issue.line))
    return config


_ANY_INDEX = re.compile(r"\[\d+\]")  # `routes[3].analysis`: the place is `routes[].analysis`


def _sub(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Parser:
    """Walks the node tree; every method returns a usable value and records problems."""

    def __init__(self, source: str):
        self.source = source
        self.issues: list[ConfigIssue] = []
        self._constructor = SafeConstructor()
        self._homes: dict[str, set[str]] = {}  # each field name read: where it belongs
        self._unknown: list[tuple[int, str]] = []  # (the issue's index, the field's name)

    def report_unknown(self) -> None:
        """Say, of each unknown field, where a field of that name belongs, if the file has
        such a place (`on_rollback` at the top: it belongs under `routes[]`)."""
        for index, key in self._unknown:
            homes = sorted(self._homes.get(key, ()))
            if homes:
                where = " or ".join(f"under {home}" if home else "at the top" for home in homes)
                issue = self.issues[index]
                message = f"unknown field here: {key!r} belongs {where}"
                self.issues[index] = replace(issue, message=message)

    def fail(self, node: Node, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.source, node.start_mark.line + 1, path, message))

    # --- structure -------------------------------------------------------------------------

    def mapping(
        self, node: Node, path: str, fields: Collection[str], required: Collection[str] = ()
    ) -> dict[str, Node]:
        """The fields of a mapping node; unknown, duplicate and missing fields are reported."""
        home = _ANY_INDEX.sub("[]", path)
        for name in fields:
            self._homes.setdefault(name, set()).add(home)
        if not isinstance(node, MappingNode):
            self.fail(node, path, "expected a mapping")
            return {}
        found: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                self.fail(key_node, path, "field names must be strings")
            elif key in found:
                self.fail(key_node, _sub(path, key), "duplicate field")
            elif key not in fields:
                self._unknown.append((len(self.issues), key))
                self.fail(
                    key_node,
                    _sub(path, key),
                    f"unknown field (expected one of: {', '.join(fields)})",
                )
            else:
                found[key] = value_node
        for name in required:
            if name not in found:
                self.fail(node, _sub(path, name), "missing required field")
        return found

    def sequence(self, node: Node, path: str) -> Iterator[tuple[Node, str]]:
        """The items of a sequence node with their paths."""
        if not isinstance(node, SequenceNode):
            self.fail(node, path, "expected a list")
            return
        for index, item in enumerate(node.value):
            yield item, f"{path}[{index}]"

    def scalar(self, node: Node, path: str) -> object:
        if not isinstance(node, ScalarNode):
            self.fail(node, path, "expected a single value")
            return None
        try:
            return self._constructor.construct_object(node, deep=True)
        except (ConstructorError, ValueError) as exc:
            self.fail(node, path, f"invalid value: {exc}")
            return None

    def field(
        self,
        fields: dict[str, Node],
        name: str,
        path: str,
        read: Callable[[Node, str, T], T],
        default: T,
    ) -> T:
        """Read field `name` with `read`, or `default` when it is absent."""
        node = fields.get(name)
        return default if node is None else read(node, _sub(path, name), default)

    # --- scalar kinds ----------------------------------------------------------------------

    def string(self, node: Node, path: str, default: str) -> str:
        value = self.scalar(node, path)
        if isinstance(value, bool):
            self.fail(node, path, "expected a string (quote yes/no/on/off/true/false)")
        elif isinstance(value, int | float):
            return str(value)
        elif isinstance(value, str) and value:
            return value
        elif isinstance(node, ScalarNode):
            self.fail(node, path, "expected a non-empty string")
        return default

    def name(self, node: Node, path: str, default: str) -> str:
        value = self.string(node, path, default)
        if value and not _NAME.match(value):
            self.fail(node, path, "names use letters, digits, '_', '.' and '-' (at most 64)")
        return value

    def boolean(self, node: Node, path: str, default: bool) -> bool:
        value = self.scalar(node, path)
        if isinstance(value, bool):
            return value
        self.fail(node, path, "expected true or false")
        return default

    def count(self, node: Node, path: str, default: int) -> int:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(node, path, "expected a whole number of at least 1")
            return default
        return value

    def count_or_zero(self, node: Node, path: str, default: int) -> int:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(node, path, "expected a whole number of at least 0")
            return default
        return value

    def duration_or_zero(self, node: Node, path: str, default: float) -> float:
        if self.scalar(node, path) in (0, "0", "0s"):
            return 0.0
        return self.duration(node, path, default)

    def number(self, node: Node, path: str, default: float) -> float:
        value = self.scalar(node, path)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail(node, path, "expected a finite number")
            return default
        return float(value)

    def non_negative(self, node: Node, path: str, default: float) -> float:
        value = self.number(node, path, default)
        if value < 0:
            self.fail(node, path, f"expected a number of at least 0, got {value:g}")
            return default
        return value

    def fraction(self, node: Node, path: str, default: float) -> float:
        value = self.number(node, path, default)
        if not 0.0 <= value <= 1.0:
            self.fail(node, path, f"expected a share between 0 and 1, got {value:g}")
            return default
        return value

    def duration(self, node: Node, path: str, default: float) -> float:
        value = self.scalar(node, path)
        seconds = parse_duration(value) if isinstance(value, str) else 0.0
        if seconds <= 0:
            self.fail(node, path, "expected a positive duration like 500ms, 30s, 5m, 1h or 1d")
            return default
        return seconds

    def timestamp(self, node: Node, path: str, default: float | None) -> float | None:
        value = self.scalar(node, path)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            self.fail(node, path, "expected an ISO 8601 time like 2026-12-01T00:00:00Z")
            return default
        if value.tzinfo is None:
            self.fail(node, path, "the time needs a timezone, e.g. a trailing Z for UTC")
            return default
        return value.timestamp()

    def listen(self, node: Node, path: str, default: Listen) -> Listen:
        value = self.string(node, path, "")
        host, _, port = value.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port.isdigit() or int(port) > 65535:
            self.fail(node, path, "expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
            return default
        return Listen(host, int(port))

    def url(self, node: Node, path: str, default: str) -> str:
        value = self.string(node, path, "")
        try:
            parts = urlsplit(value)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port
        except ValueError:
            valid = False
        if not valid or parts.query or parts.fragment:
            self.fail(node, path, "expected an http(s) URL like http://127.0.0.1:9001")
            return default
        return value.rstrip("/")

    def upstream_url(self, node: Node, path: str, default: str) -> str:
        value = self.url(node, path, default)
        if urlsplit(value).username is not None:
            # Never used to authenticate, and it would show in /status, logs and state.
            self.fail(node, path, "credentials in an upstream URL are not supported: remove them")
            return default
        return value

    def ca_file(self, node: Node, path: str, default: str | None) -> str | None:
        value = self.readable_file(node, path, default)
        if value:
            try:
                ssl.create_default_context(cafile=value)
            except (ssl.SSLError, OSError) as exc:
                self.fail(node, path, f"not a file of PEM certificate authorities: {exc}")
                return default
        return value

    def choice(self, node: Node, path: str, default: E, kind: type[E]) -> E:
        value = self.scalar(node, path)
        for option in kind:
            if value == option.value:
                return option
        self.fail(node, path, f"expected one of: {', '.join(kind)}")
        return default

    def key_source(self, node: Node, path: str, default: KeySource) -> KeySource:
        value = self.string(node, path, "")
        source, _, name = value.partition(":")
        valid_name = bool(name) and (source != Source.HEADER or bool(_HEADER_NAME.match(name)))
        if source in {s.value for s in Source} and valid_name:
            return KeySource(Source(source), name)
        self.fail(node, path, "expected header:NAME, cookie:NAME or query:NAME")
        return default

    def strings(self, node: Node, path: str) -> list[str]:
        """A list of strings; a single value is taken as a list of one."""
        if isinstance(node, ScalarNode):
            return [self.string(node, path, "")]
        return [self.string(item, item_path, "") for item, item_path in self.sequence(node, path)]

    # --- sections --------------------------------------------------------------------------

    def config(self, root: Node, digest: str) -> Config:
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

    def state(self, node: Node, path: str, default: StateConfig) -> StateConfig:
        redis_fields = (
            "url",
            "key_prefix",
            "password_env",
            "ca_file",
            "sentinel",
            "cluster",
            "max_clock_skew",
            "min_replicas_ack",
        )
        fields = self.mapping(node, path, ("backend", "path", *redis_fields))
        backend = default.backend
        if "backend" in fields:
            backend = self.choice(fields["backend"], _sub(path, "backend"), backend, StateBackend)
        redis_only = [name for name in redis_fields if name in fields]
        if redis_only and backend is not StateBackend.REDIS:
            self.fail(
                fields[redis_only[0]],
                _sub(path, redis_only[0]),
                "only for the redis backend: set backend: redis, or remove it",
            )
        url = self.field(fields, "url", path, self.redis_url, default.url)
        ca_file = self.field(fields, "ca_file", path, self.ca_file, None)
        if ca_file and backend is StateBackend.REDIS and not url.startswith("rediss://"):
            self.fail(fields["ca_file"], _sub(path, "ca_file"), "only for a rediss:// url (TLS)")
        sentinel = None
        if "sentinel" in fields:
            sentinel = self.sentinel(fields["sentinel"], _sub(path, "sentinel"))
            if "url" in fields:
                self.fail(
                    fields["url"],
                    _sub(path, "url"),
                    "either url or sentinel: with sentinel, the sentinels find the master",
                )
        cluster = self.field(fields, "cluster", path, self.boolean, False)
        if cluster and sentinel is not None:
            self.fail(
                fields["cluster"],
                _sub(path, "cluster"),
                "either cluster or sentinel: a Redis Cluster fails over by itself",
            )
        if cluster and urlsplit(url).path.strip("/") not in ("", "0"):
            self.fail(
                fields.get("url", fields["cluster"]),
                _sub(path, "url"),
                "a Redis Cluster has database 0 only: end the url with /0 or nothing",
            )
        return StateConfig(
            backend,
            self.field(fields, "path", path, self.string, default.path),
            url,
            self.field(fields, "key_prefix", path, self.key_prefix, default.key_prefix),
            self.field(fields, "password_env", path, self.string, "") or None,
            ca_file,
            sentinel,
            cluster,
            self.field(fields, "max_clock_skew", path, self.duration, default.max_clock_skew),
            self.field(fields, "min_replicas_ack", path, self.count_or_zero, -1)
            if "min_replicas_ack" in fields
            else None,
        )

    def sentinel(self, node: Node, path: str) -> Sentinel | None:
        fields = self.mapping(node, path, ("hosts", "service"), ("hosts", "service"))
        hosts = []
        if "hosts" in fields:
            for item, item_path in self.sequence(fields["hosts"], _sub(path, "hosts")):
                hosts.append(self.listen(item, item_path, Listen("127.0.0.1", 26379)))
            if not hosts:
                self.fail(fields["hosts"], _sub(path, "hosts"), "name at least one sentinel")
        service = self.field(fields, "service", path, self.name, "")
        return Sentinel(tuple(hosts), service) if hosts and service else None

    def redis_url(self, node: Node, path: str, default: str) -> str:
        value = self.string(node, path, "")
        try:
            parts = urlsplit(value)
            valid = parts.scheme in ("redis", "rediss") and bool(parts.hostname)
            _ = parts.port
            database = parts.path.strip("/")
            valid = valid and (not database or database.isdigit())
        except ValueError:
            valid = False
        if not valid or parts.fragment:
            self.fail(
                node, path, "expected a Redis URL like redis://127.0.0.1:6379/0 (or rediss://)"
            )
            return default
        if parts.password is not None or "password" in parse_qs(parts.query):
            # A secret in the config would show in version control, /status and logs.
            self.fail(node, path, "no password in the URL: name its variable in state.password_env")
            return default
        return value

    def key_prefix(self, node: Node, path: str, default: str) -> str:
        value = self.string(node, path, default)
        if not _KEY_PREFIX.fullmatch(value):
            self.fail(
                node, path, "expected letters, digits and . _ - : (e.g. grayscale or prod:eu)"
            )
            return default
        return value

    def admin(self, node: Node, path: str, default: AdminConfig) -> AdminConfig:
        fields = self.mapping(node, path, [f.name for f in dataclass_fields(AdminConfig)])
        hosts: tuple[str, ...] = ()
        if "allowed_hosts" in fields:
            hosts = tuple(
                host.lower()
                for host in self.strings(fields["allowed_hosts"], _sub(path, "allowed_hosts"))
            )
        return AdminConfig(
            token_env=self.field(fields, "token_env", path, self.string, default.token_env),
            protect_reads=self.field(
                fields, "protect_reads", path, self.boolean, default.protect_reads
            ),
            allowed_hosts=hosts,
            head_timeout=self.field(
                fields, "head_timeout", path, self.duration, default.head_timeout
            ),
            body_timeout=self.field(
                fields, "body_timeout", path, self.duration, default.body_timeout
            ),
            max_connections=self.field(
                fields, "max_connections", path, self.count, default.max_connections
            ),
        )

    def access_log(
        self, node: Node, path: str, default: AccessLogConfig | None
    ) -> AccessLogConfig | None:
        fields = self.mapping(node, path, ("path", "sample", "hash_secret_env"), ("path",))
        base = AccessLogConfig()
        return AccessLogConfig(
            path=self.field(fields, "path", path, self.string, base.path),
            sample=self.field(fields, "sample", path, self.fraction, base.sample),
            hash_secret_env=self.field(
                fields, "hash_secret_env", path, self.string, base.hash_secret_env
            ),
        )

    def outcomes(self, node: Node, path: str, default: OutcomesConfig) -> OutcomesConfig:
        fields = self.mapping(node, path, [f.name for f in dataclass_fields(OutcomesConfig)])
        return OutcomesConfig(
            token_env=self.field(fields, "token_env", path, self.string, default.token_env),
            secret_env=self.field(fields, "secret_env", path, self.string, default.secret_env),
            ttl=self.field(fields, "ttl", path, self.duration, default.ttl),
            max_batch=self.field(fields, "max_batch", path, self.count, default.max_batch),
            max_names=self.field(fields, "max_names", path, self.count, default.max_names),
            max_tracked=self.field(fields, "max_tracked", path, self.count, default.max_tracked),
        )

    def outcome_checks(
        self, node: Node, path: str, default: tuple[OutcomeCheck, ...]
    ) -> tuple[OutcomeCheck, ...]:
        checks = []
        for item, item_path in self.sequence(node, path):
            fields = self.mapping(
                item,
                item_path,
                ("name", "max_decrease", "relative", "per", "range"),
                ("name", "max_decrease"),
            )
            per = self.field(
                fields,
                "per",
                item_path,
                lambda n, p, d: self.choice(n, p, d, OutcomeBasis),
                OutcomeBasis.REQUEST,
            )
            if per is OutcomeBasis.OUTCOME and "range" not in fields:
                self.fail(
                    item,
                    _sub(item_path, "range"),
                    "missing required field: per: outcome needs the values' [min, max]",
                )
            checks.append(
                OutcomeCheck(
                    name=self.field(fields, "name", item_path, self.check_name, ""),
                    max_decrease=self.field(
                        fields, "max_decrease", item_path, self.non_negative, 0.0
                    ),
                    relative=self.field(fields, "relative", item_path, self.boolean, False),
                    per=per,
                    range=self.field(fields, "range", item_path, self.value_range, (0.0, 1.0)),
                )
            )
        self.unique(node, path, [(c.name, "name") for c in checks])
        return tuple(checks)

    def value_range(
        self, node: Node, path: str, default: tuple[float, float]
    ) -> tuple[float, float]:
        items = list(self.sequence(node, path))
        if len(items) != 2:
            if isinstance(node, SequenceNode):
                self.fail(node, path, "expected [min, max]: two numbers")
            return default
        low, high = (self.number(item, item_path, 0.0) for item, item_path in items)
        if not low < high:
            self.fail(node, path, f"expected min below max, got [{low:g}, {high:g}]")
            return default
        if not (low >= -MAX_OUTCOME and high <= MAX_OUTCOME):
            self.fail(node, path, f"expected numbers between -{MAX_OUTCOME:g} and {MAX_OUTCOME:g}")
            return default
        return low, high

    def check_name(self, node: Node, path: str, default: str) -> str:
        value = self.string(node, path, default)
        if value and not OUTCOME_NAME.fullmatch(value):
            self.fail(node, path, "expected letters, digits and _ . : - (at most 64)")
        return value

    def unique(self, node: Node, path: str, values: list[tuple[str, str]]) -> None:
        seen: set[str] = set()
        for index, (value, field_path) in enumerate(values):
            if value and value in seen and isinstance(node, SequenceNode):
                self.fail(
                    node.value[index], f"{path}[{index}].{field_path}", f"{value!r} is used twice"
                )
            seen.add(value)

    def server(self, node: Node, path: str, default: ServerConfig) -> ServerConfig:
        fields = self.mapping(
            node,
            path,
            (
                "listen",
                "admin_listen",
                "trusted_proxies",
                "max_body_bytes",
                "max_json_values",
                "max_event_bytes",
                "request_buffer_bytes",
                "client_body_timeout",
                "send_timeout",
                "shutdown_delay",
                "drain_timeout",
                "workers",
            ),
        )
        trusted: tuple[IPNetwork, ...] = ()
        if "trusted_proxies" in fields:
            trusted = self.networks(fields["trusted_proxies"], _sub(path, "trusted_proxies"))
        return ServerConfig(
            listen=self.field(fields, "listen", path, self.listen, default.listen),
            admin_listen=self.field(
                fields, "admin_listen", path, self.listen, default.admin_listen
            ),
            trusted_proxies=trusted,
            max_body_bytes=self.field(
                fields, "max_body_bytes", path, self.count, default.max_body_bytes
            ),
            max_json_values=self.field(
                fields, "max_json_values", path, self.count, default.max_json_values
            ),
            max_event_bytes=self.field(
                fields, "max_event_bytes", path, self.count, default.max_event_bytes
            ),
            request_buffer_bytes=self.field(
                fields, "request_buffer_bytes", path, self.count, default.request_buffer_bytes
            ),
            client_body_timeout=self.field(
                fields, "client_body_timeout", path, self.duration, default.client_body_timeout
            ),
            send_timeout=self.field(
                fields, "send_timeout", path, self.duration, default.send_timeout
            ),
            shutdown_delay=self.field(
                fields, "shutdown_delay", path, self.duration_or_zero, default.shutdown_delay
            ),
            drain_timeout=self.field(
                fields, "drain_timeout", path, self.duration, default.drain_timeout
            ),
            workers=self.field(fields, "workers", path, self.workers, default.workers),
        )

    def workers(self, node: Node, path: str, default: int) -> int:
        value = self.count(node, path, default)
        if value > MAX_WORKERS:
            self.fail(node, path, f"at most {MAX_WORKERS}")
            return default
        if value > 1 and not hasattr(socket, "SO_REUSEPORT"):
            self.fail(node, path, "more than one worker needs SO_REUSEPORT, which this OS lacks")
            return default
        return value

    def networks(self, node: Node, path: str) -> tuple[IPNetwork, ...]:
        """A list of IP addresses or CIDR blocks."""
        networks: list[IPNetwork] = []
        for value in self.strings(node, path):
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                self.fail(node, path, f"{value!r} is not an IP address or CIDR block")
        return tuple(networks)

    def route(self, node: Node, path: str) -> Route:
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
            ),
            required=("name", "match", "stable", "candidate", "cohort"),
        )
        name = self.field(fields, "name", path, self.name, "")
        prefix = ""
        models: tuple[str, ...] = ()
        if "match" in fields:
            match_path = _sub(path, "match")
            match = self.mapping(
                fields["match"], match_path, ("path_prefix", "model"), ("path_prefix",)
            )
            prefix = self.field(match, "path_prefix", match_path, self.string, "/")
            if "model" in match:
                models = self.models(match["model"], _sub(match_path, "model"))
            if not prefix.startswith("/"):
                self.fail(
                    match["path_prefix"], _sub(match_path, "path_prefix"), "must start with /"
                )
        placeholder = Upstream("http://invalid")
        ramp = self.field(fields, "ramp", path, self.ramp, Ramp())
        segments: list[Segment] = []
        if "segments" in fields:
            segments_path = _sub(path, "segments")
            for item, item_path in self.sequence(fields["segments"], segments_path):
                segments.append(self.segment(item, item_path, ramp))
            self.unique(fields["segments"], segments_path, [(s.name, "name") for s in segments])
        return Route(
            name=name,
            path_prefix=prefix,
            stable=self.field(fields, "stable", path, self.upstream, placeholder),
            candidate=self.field(fields, "candidate", path, self.upstream, placeholder),
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
        )

    def promotion(self, fields: dict[str, Node], path: str) -> Promotion | None:
        node = fields.get("promote")
        if node is None:
            return None
        where = _sub(path, "promote")
        promote = self.mapping(node, where, ("after",), ("after",))
        after = self.field(promote, "after", where, self.duration, 0.0)
        if "analysis" not in fields:
            self.fail(node, where, "needs analysis: a candidate is promoted on passing verdicts")
        return Promotion(after)

    def shadow(self, node: Node, path: str, route: str) -> Shadow:
        names = [f.name for f in dataclass_fields(Shadow)]
        fields = self.mapping(node, path, names, ("share",))
        base = Shadow(0.0, f"{route}-shadow")
        methods = base.methods
        if "methods" in fields:
            methods = tuple(
                m.upper() for m in self.strings(fields["methods"], _sub(path, "methods"))
            )
            if not methods or not all(_METHOD.fullmatch(m) for m in methods):
                self.fail(
                    fields["methods"], _sub(path, "methods"), "expected HTTP methods like POST"
                )
        minimum = None
        if "min_agreement" in fields:
            minimum = self.fraction(fields["min_agreement"], _sub(path, "min_agreement"), 0.0)
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
                self.fail(fields["min_similarity"], _sub(path, "min_similarity"), "only with text")
            paths = tuple(self.strings(fields["json"], _sub(path, "json")))
            if not paths or not all(paths):
                self.fail(fields["json"], _sub(path, "json"), "expected one or more field paths")
            tolerance = self.field(fields, "tolerance", path, self.non_negative, 0.0)
            return JsonCompare(paths, tolerance)
        if "tolerance" in fields:
            self.fail(fields["tolerance"], _sub(path, "tolerance"), "only with json")
        return TextCompare(
            self.field(fields, "text", path, self.string, ""),
            self.field(fields, "min_similarity", path, self.fraction, 0.9),
        )

    def models(self, node: Node, path: str) -> tuple[str, ...]:
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

    def analysis(self, node: Node, path: str, default: AnalysisSpec | None) -> AnalysisSpec:
        base = AnalysisSpec()
        fields = self.mapping(node, path, [f.name for f in dataclass_fields(AnalysisSpec)])

        def read(name: str, kind: Callable[[Node, str, T], T], fallback: T) -> T:
            return self.field(fields, name, path, kind, fallback)

        spec = AnalysisSpec(
            interval=read("interval", self.duration, base.interval),
            window=read("window", self.duration, base.window),
            min_requests=read("min_requests", self.count, base.min_requests),
            max_error_rate_increase=read(
                "max_error_rate_increase", self.fraction, base.max_error_rate_increase
            ),
            max_latency_ratio=read("max_latency_ratio", self.number, base.max_latency_ratio),
            latency_quantile=read("latency_quantile", self.fraction, base.latency_quantile),
            latency=read(
                "latency", lambda n, p, d: self.choice(n, p, d, LatencyMeasure), base.latency
            ),
            confidence=read("confidence", self.fraction, base.confidence),
            failures_before_rollback=read(
                "failures_before_rollback", self.count, base.failures_before_rollback
            ),
            on_inconclusive=read(
                "on_inconclusive",
                lambda n, p, d: self.choice(n, p, d, Inconclusive),
                base.on_inconclusive,
            ),
            max_errors_in_a_row=read("max_errors_in_a_row", self.count, base.max_errors_in_a_row),
            on_error=read("on_error", lambda n, p, d: self.choice(n, p, d, OnError), base.on_error),
            outcomes=read("outcomes", self.outcome_checks, ()),
            method=read(
                "method", lambda n, p, d: self.choice(n, p, d, AnalysisMethod), base.method
            ),
            prometheus=read("prometheus", self.prometheus, None),
            metrics=read("metrics", self.metric_checks, ()),
        )
        if "metrics" in fields and "prometheus" not in fields:
            self.fail(fields["metrics"], _sub(path, "metrics"), "needs analysis.prometheus")
        if "prometheus" in fields and "metrics" not in fields:
            self.fail(fields["prometheus"], _sub(path, "prometheus"), "no analysis.metrics to run")
        checks = (
            (spec.window >= spec.interval, "window", "must be at least the interval"),
            (spec.max_latency_ratio >= 1.0, "max_latency_ratio", "must be at least 1"),
            (0.5 <= spec.confidence < 1.0, "confidence", "must be in [0.5, 1)"),
            (0.0 < spec.latency_quantile < 1.0, "latency_quantile", "must be in (0, 1)"),
        )
        for ok, name, message in checks:
            if not ok:
                self.fail(fields.get(name, node), _sub(path, name), message)
        return spec

    def prometheus(
        self, node: Node, path: str, default: PrometheusSource | None
    ) -> PrometheusSource | None:
        fields = self.mapping(node, path, ("url", "timeout", "token_env", "ca_file"), ("url",))
        url = self.field(fields, "url", path, self.url, "")
        if "url" in fields and urlsplit(url).password is not None:
            # A secret in the config would show in version control, /status and logs.
            self.fail(fields["url"], _sub(path, "url"), "no password in the URL: use token_env")
        base = PrometheusSource("")
        return PrometheusSource(
            url=url,
            timeout=self.field(fields, "timeout", path, self.duration, base.timeout),
            token_env=self.field(fields, "token_env", path, self.string, "") or None,
            ca_file=self.field(fields, "ca_file", path, self.ca_file, None),
        )

    def metric_checks(
        self, node: Node, path: str, default: tuple[MetricCheck, ...]
    ) -> tuple[MetricCheck, ...]:
        checks = []
        for item, item_path in self.sequence(node, path):
            fields = self.mapping(
                item, item_path, ("name", "query", *Comparison), ("name", "query")
            )
            limits = []
            for kind in Comparison:
                if kind in fields:
                    read = self.non_negative if kind.endswith(("increase", "decrease")) else None
                    value = (read or self.number)(fields[kind], _sub(item_path, kind), math.nan)
                    if kind.endswith("ratio") and not value > 0:
                        self.fail(fields[kind], _sub(item_path, kind), "must be above 0")
                    limits.append((kind, value))
            if not fields.keys() & set(Comparison) and isinstance(item, MappingNode):
                self.fail(item, item_path, f"needs one of {', '.join(Comparison)}")
            bounds = dict(limits)
            for low, high in (
                (Comparison.MIN, Comparison.MAX),
                (Comparison.MIN_RATIO, Comparison.MAX_RATIO),
            ):
                if bounds.get(low, -math.inf) > bounds.get(high, math.inf):
                    self.fail(fields[low], _sub(item_path, low), f"must not be above {high}")
            checks.append(
                MetricCheck(
                    name=self.field(fields, "name", item_path, self.check_name, ""),
                    query=self.field(fields, "query", item_path, self.metric_query, ""),
                    limits=tuple(limits),
                )
            )
        self.unique(node, path, [(c.name, "name") for c in checks])
        return tuple(checks)

    def metric_query(self, node: Node, path: str, default: str) -> str:
        value = self.string(node, path, default)
        for name in METRIC_PLACEHOLDER.findall(value):
            if name not in METRIC_PLACEHOLDERS:
                known = ", ".join("{{" + known + "}}" for known in METRIC_PLACEHOLDERS)
                self.fail(node, path, "unknown placeholder {{" + name + "}}: expected " + known)
        return value

    def rollback_hook(
        self, node: Node, path: str, default: RollbackHook | None
    ) -> RollbackHook | None:
        fields = self.mapping(node, path, ("webhook", "timeout", "attempts"), ("webhook",))
        base = RollbackHook("")
        return RollbackHook(
            webhook=self.field(fields, "webhook", path, self.url, ""),
            timeout=self.field(fields, "timeout", path, self.duration, base.timeout),
            attempts=self.field(fields, "attempts", path, self.count, base.attempts),
        )

    def upstream(self, node: Node, path: str, default: Upstream) -> Upstream:
        base = Upstream(default.url)
        fields = self.mapping(node, path, [f.name for f in dataclass_fields(Upstream)], ("url",))
        return Upstream(
            url=self.field(fields, "url", path, self.upstream_url, default.url),
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
            model=self.field(fields, "model", path, self.string, "") or None,
        )

    def readable_file(self, node: Node, path: str, default: str | None) -> str | None:
        value = self.string(node, path, "")
        if value and not Path(value).is_file():
            self.fail(node, path, f"no such file: {value}")
            return default
        return value or default

    def ejection(self, node: Node, path: str, default: Ejection | None) -> Ejection | None:
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
        fields = self.mapping(node, path, ("keys", "salt", "missing"), ("keys",))
        keys: list[KeySource] = []
        if "keys" in fields:
            keys_path = _sub(path, "keys")
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

    def ramp(self, node: Node, path: str, default: Ramp) -> Ramp:
        fields = self.mapping(node, path, ("start", "base", "slope", "per", "max"))
        ramp = Ramp(
            start=self.field(fields, "start", path, self.timestamp, default.start),
            base=self.field(fields, "base", path, self.fraction, 0.0),
            slope=self.field(fields, "slope", path, self.number, 0.0),
            per=self.field(fields, "per", path, self.duration, default.per),
            max=self.field(fields, "max", path, self.fraction, 1.0),
        )
        if ramp.base > ramp.max:
            self.fail(node, _sub(path, "base"), f"base {ramp.base:g} is above max {ramp.max:g}")
        return ramp

    def segment(self, node: Node, path: str, route_ramp: Ramp) -> Segment:
        fields = self.mapping(
            node, path, ("name", "when", "unless", "variant", "ramp"), required=("name", "when")
        )
        variant = None
        if "variant" in fields:
            variant = self.choice(fields["variant"], _sub(path, "variant"), Variant.STABLE, Variant)
        # A segment ramp starts with its route's rollout unless it names its own start.
        inherited = Ramp(start=route_ramp.start, per=route_ramp.per)
        ramp = self.field(fields, "ramp", path, self.ramp, inherited) if "ramp" in fields else None
        if (variant is None) == (ramp is None):
            self.fail(node, path, "a segment needs exactly one of 'variant' or 'ramp'")
        when = self.conditions(fields["when"], _sub(path, "when")) if "when" in fields else ()
        if isinstance(fields.get("when"), MappingNode) and not fields["when"].value:
            self.fail(fields["when"], _sub(path, "when"), "at least one condition is needed")
        unless = (
            self.conditions(fields["unless"], _sub(path, "unless")) if "unless" in fields else ()
        )
        return Segment(
            name=self.field(fields, "name", path, self.name, ""),
            when=when,
            unless=unless,
            variant=variant,
            ramp=ramp,
        )

    def conditions(self, node: Node, path: str) -> tuple[Condition, ...]:
        if not isinstance(node, MappingNode):
            self.fail(node, path, "expected a mapping of conditions")
            return ()
        conditions: list[Condition] = []
        for key_node, value_node in node.value:
            selector = str(key_node.value)
            item_path = f'{path}["{selector}"]' if ":" in selector else _sub(path, selector)
            condition = self.condition(selector, key_node, value_node, item_path)
            if condition is not None:
                conditions.append(condition)
        return tuple(conditions)

    def condition(self, selector: str, key_node: Node, node: Node, path: str) -> Condition | None:
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
