"""The `state` section: where rollout state is kept (memory, a file, Redis and how to reach it).

Invariants
- The Redis fields are refused with any other backend; `url` and `sentinel`, and `cluster` and
  `sentinel`, exclude each other; a cluster has database 0 only.
- No secret is read from the file: a Redis URL with a password is refused (its variable is named
  in `password_env`).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from yaml.nodes import Node

from proxy.config.errors import field_path
from proxy.config.model import Listen, Sentinel, StateBackend, StateConfig
from proxy.config.reader import Reader

_KEY_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class StateReader(Reader):
    """Reads the `state` section."""

    def state(self, node: Node, path: str, default: StateConfig) -> StateConfig:
        """The `state` section."""
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
            backend = self.choice(
                fields["backend"], field_path(path, "backend"), backend, StateBackend
            )
        redis_only = [name for name in redis_fields if name in fields]
        if redis_only and backend is not StateBackend.REDIS:
            self.fail(
                fields[redis_only[0]],
                field_path(path, redis_only[0]),
                "only for the redis backend: set backend: redis, or remove it",
            )
        url = self.field(fields, "url", path, self.redis_url, default.url)
        ca_file = self.field(fields, "ca_file", path, self.ca_file, None)
        if ca_file and backend is StateBackend.REDIS and not url.startswith("rediss://"):
            self.fail(
                fields["ca_file"], field_path(path, "ca_file"), "only for a rediss:// url (TLS)"
            )
        sentinel = None
        if "sentinel" in fields:
            sentinel = self.sentinel(fields["sentinel"], field_path(path, "sentinel"))
            if "url" in fields:
                self.fail(
                    fields["url"],
                    field_path(path, "url"),
                    "either url or sentinel: with sentinel, the sentinels find the master",
                )
        cluster = self.field(fields, "cluster", path, self.boolean, False)
        if cluster and sentinel is not None:
            self.fail(
                fields["cluster"],
                field_path(path, "cluster"),
                "either cluster or sentinel: a Redis Cluster fails over by itself",
            )
        if cluster and urlsplit(url).path.strip("/") not in ("", "0"):
            self.fail(
                fields.get("url", fields["cluster"]),
                field_path(path, "url"),
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
        """The Redis sentinels and their service; None when either is missing."""
        fields = self.mapping(node, path, ("hosts", "service"), ("hosts", "service"))
        hosts = []
        if "hosts" in fields:
            for item, item_path in self.sequence(fields["hosts"], field_path(path, "hosts")):
                hosts.append(self.listen(item, item_path, Listen("127.0.0.1", 26379)))
            if not hosts:
                self.fail(fields["hosts"], field_path(path, "hosts"), "name at least one sentinel")
        service = self.field(fields, "service", path, self.name, "")
        return Sentinel(tuple(hosts), service) if hosts and service else None

    def redis_url(self, node: Node, path: str, default: str) -> str:
        """A redis:// or rediss:// URL, without a password."""
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
        """The prefix of every Redis key."""
        value = self.string(node, path, default)
        if not _KEY_PREFIX.fullmatch(value):
            self.fail(
                node, path, "expected letters, digits and . _ - : (e.g. grayscale or prod:eu)"
            )
            return default
        return value
