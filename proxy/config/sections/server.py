"""The sections of one process: `server` (listeners, limits, shutdown, workers), `admin`,
`access_log` and `outcomes`.

Invariants
- Every field of each section is read, or else the default of its model class is kept.
- `server.workers` is at most 256, and more than one only where the OS has SO_REUSEPORT.
- A listener's TLS certificate and key load together (checked here, at every load and reload).
"""

from __future__ import annotations

import socket
from dataclasses import fields as dataclass_fields

from yaml.nodes import Node

from proxy.config.errors import field_path
from proxy.config.model import (
    AccessLogConfig,
    AdminConfig,
    IPNetwork,
    ListenerTls,
    OutcomesConfig,
    ServerConfig,
    TlsVersion,
)
from proxy.config.reader import Reader

MAX_WORKERS = 256


class ServerReader(Reader):
    """Reads the process's sections."""

    def server(self, node: Node, path: str, default: ServerConfig) -> ServerConfig:
        """The `server` section."""
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
                "http2",
                "http2_max_streams",
                "tls",
                "admin_tls",
            ),
        )
        trusted: tuple[IPNetwork, ...] = ()
        if "trusted_proxies" in fields:
            trusted = self.networks(fields["trusted_proxies"], field_path(path, "trusted_proxies"))
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
            http2=self.field(fields, "http2", path, self.boolean, default.http2),
            http2_max_streams=self.field(
                fields, "http2_max_streams", path, self.count, default.http2_max_streams
            ),
            tls=self.field(fields, "tls", path, self.listener_tls, default.tls),
            admin_tls=self.field(fields, "admin_tls", path, self.listener_tls, default.admin_tls),
        )

    def listener_tls(
        self, node: Node, path: str, default: ListenerTls | None
    ) -> ListenerTls | None:
        """A listener's `tls` (`server.tls`, `server.admin_tls`)."""
        fields = self.mapping(
            node, path, ("cert_file", "key_file", "min_version"), ("cert_file", "key_file")
        )
        pair = None
        if "cert_file" in fields and "key_file" in fields:  # (else one is reported missing)
            pair = self.certificate_and_key(fields, path, ("cert_file", "key_file"))
        min_version = self.field(fields, "min_version", path, self.tls_version, TlsVersion.TLS_1_2)
        return default if pair is None else ListenerTls(*pair, min_version)

    def workers(self, node: Node, path: str, default: int) -> int:
        """The number of worker processes."""
        value = self.count(node, path, default)
        if value > MAX_WORKERS:
            self.fail(node, path, f"at most {MAX_WORKERS}")
            return default
        if value > 1 and not hasattr(socket, "SO_REUSEPORT"):
            self.fail(node, path, "more than one worker needs SO_REUSEPORT, which this OS lacks")
            return default
        return value

    def admin(self, node: Node, path: str, default: AdminConfig) -> AdminConfig:
        """The `admin` section."""
        fields = self.mapping(node, path, [f.name for f in dataclass_fields(AdminConfig)])
        hosts: tuple[str, ...] = ()
        if "allowed_hosts" in fields:
            hosts = tuple(
                host.lower()
                for host in self.strings(fields["allowed_hosts"], field_path(path, "allowed_hosts"))
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
        """The `access_log` section."""
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
        """The `outcomes` section."""
        fields = self.mapping(node, path, [f.name for f in dataclass_fields(OutcomesConfig)])
        return OutcomesConfig(
            token_env=self.field(fields, "token_env", path, self.string, default.token_env),
            secret_env=self.field(fields, "secret_env", path, self.string, default.secret_env),
            ttl=self.field(fields, "ttl", path, self.duration, default.ttl),
            max_batch=self.field(fields, "max_batch", path, self.count, default.max_batch),
            max_names=self.field(fields, "max_names", path, self.count, default.max_names),
            max_tracked=self.field(fields, "max_tracked", path, self.count, default.max_tracked),
        )
