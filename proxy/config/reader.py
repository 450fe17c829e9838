"""Reading a YAML node tree into typed values, each problem recorded with its line and field path.

`Reader` knows the file's shapes (mappings, lists, single values) and its value kinds (strings,
counts, shares, durations, times, addresses, URLs, files...); the readers of the file's sections
(`proxy.config.sections`) build on it, and `proxy.config.loader` joins them.

Invariants
- Every read returns a usable value (the default, when the node is wrong) and records what is
  wrong, so one walk of the tree finds every problem in the file.
- A problem is recorded at the line of the node it is about, under the dotted path of its field;
  an unknown field is said to belong where the file has a field of that name, if it has one.
- A value that `spoil` reported (an environment variable that is not set) has no other problem
  recorded: the rest would follow from the first.
- A value substituted from the environment is read as its field's type: a text field takes its
  text as it is, whatever YAML would make of it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
import ssl
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.config.errors import ConfigIssue, field_path
from proxy.config.model import IPNetwork, KeySource, Listen, Source, TlsVersion
from proxy.config.values import LISTEN_FORM, parse_duration, parse_listen

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ANY_INDEX = re.compile(r"\[\d+\]")  # `routes[3].analysis`: the place is `routes[].analysis`
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def _no_passphrase() -> bytes:
    """The passphrase offered for a private key: none (else OpenSSL would ask on the terminal)."""
    return b""


def _chain_problem(cert: str, key: str) -> tuple[bool, str] | None:
    """What stops a certificate chain and its key from loading, and whether the key is at fault
    (else the certificate); None when they load."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, _no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return True, f"this key does not match the certificate in {cert}"
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
        except ssl.SSLError:
            return False, f"not a PEM certificate chain: {cert}"
        return True, f"not a PEM private key (or one protected by a passphrase): {key}"
    except OSError as exc:
        return Path(cert).is_file(), f"cannot read it: {exc.strerror or exc}"
    return None


class Reader:
    """Walks the node tree; every method returns a usable value and records problems."""

    def __init__(self, source: str, substituted: Collection[Node] = ()):
        """`substituted`: the values whose text came from the environment, which a text field
        takes as they are (see `proxy.config.environment`)."""
        self.source = source
        self._substituted = frozenset(substituted)
        self.issues: list[ConfigIssue] = []
        self._constructor = SafeConstructor()
        self._homes: dict[str, set[str]] = {}  # each field name read: where it belongs
        self._unknown: list[tuple[int, str]] = []  # (the issue's index, the field's name)
        self._spoiled: set[Node] = set()  # values whose one problem is already recorded

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
        """Record a problem of `node` (unless its value is spoiled: see `spoil`)."""
        if node not in self._spoiled:
            self._record(node, path, message)

    def spoil(self, node: Node, path: str, message: str) -> None:
        """Record a problem that makes the value at `node` unusable; of the problems of that
        value, only those recorded with `spoil` are kept."""
        self._record(node, path, message)
        self._spoiled.add(node)

    def _record(self, node: Node, path: str, message: str) -> None:
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
                self.fail(key_node, field_path(path, key), "duplicate field")
            elif key not in fields:
                # (recorded whatever the node: its index must be the issue's)
                self._unknown.append((len(self.issues), key))
                message = f"unknown field (expected one of: {', '.join(fields)})"
                self._record(key_node, field_path(path, key), message)
            else:
                found[key] = value_node
        for name in required:
            if name not in found:
                self.fail(node, field_path(path, name), "missing required field")
        return found

    def sequence(self, node: Node, path: str) -> Iterator[tuple[Node, str]]:
        """The items of a sequence node with their paths."""
        if not isinstance(node, SequenceNode):
            self.fail(node, path, "expected a list")
            return
        for index, item in enumerate(node.value):
            yield item, f"{path}[{index}]"

    def scalar(self, node: Node, path: str) -> object:
        """The value of a single-value node as YAML types it; None (and a problem) otherwise."""
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
        return default if node is None else read(node, field_path(path, name), default)

    # --- value kinds -----------------------------------------------------------------------

    def string(self, node: Node, path: str, default: str) -> str:
        """A non-empty string; a number is taken as its text."""
        value = node.value if node in self._substituted else self.scalar(node, path)
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
        """A name: letters, digits, '_', '.' and '-', at most 64."""
        value = self.string(node, path, default)
        if value and not _NAME.match(value):
            self.fail(node, path, "names use letters, digits, '_', '.' and '-' (at most 64)")
        return value

    def boolean(self, node: Node, path: str, default: bool) -> bool:
        """true or false."""
        value = self.scalar(node, path)
        if isinstance(value, bool):
            return value
        self.fail(node, path, "expected true or false")
        return default

    def count(self, node: Node, path: str, default: int) -> int:
        """A whole number of at least 1."""
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(node, path, "expected a whole number of at least 1")
            return default
        return value

    def count_or_zero(self, node: Node, path: str, default: int) -> int:
        """A whole number of at least 0."""
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(node, path, "expected a whole number of at least 0")
            return default
        return value

    def duration_or_zero(self, node: Node, path: str, default: float) -> float:
        """Seconds of a positive duration, or 0 written `0` or `0s`."""
        if self.scalar(node, path) in (0, "0", "0s"):
            return 0.0
        return self.duration(node, path, default)

    def number(self, node: Node, path: str, default: float) -> float:
        """A finite number."""
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
        """A finite number of at least 0."""
        value = self.number(node, path, default)
        if value < 0:
            self.fail(node, path, f"expected a number of at least 0, got {value:g}")
            return default
        return value

    def fraction(self, node: Node, path: str, default: float) -> float:
        """A share between 0 and 1."""
        value = self.number(node, path, default)
        if not 0.0 <= value <= 1.0:
            self.fail(node, path, f"expected a share between 0 and 1, got {value:g}")
            return default
        return value

    def duration(self, node: Node, path: str, default: float) -> float:
        """Seconds of a positive duration like `500ms`, `30s`, `5m`, `1h` or `1d`."""
        value = self.scalar(node, path)
        seconds = parse_duration(value) if isinstance(value, str) else 0.0
        if seconds <= 0:
            self.fail(node, path, "expected a positive duration like 500ms, 30s, 5m, 1h or 1d")
            return default
        return seconds

    def timestamp(self, node: Node, path: str, default: float | None) -> float | None:
        """POSIX seconds of an ISO 8601 time with its timezone."""
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
        """A `HOST:PORT` to listen on."""
        found = parse_listen(self.string(node, path, ""))
        if found is None:
            self.fail(node, path, LISTEN_FORM)
            return default
        return found

    def url(self, node: Node, path: str, default: str) -> str:
        """An http(s) URL without query or fragment, less its trailing slash."""
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

    def ca_file(self, node: Node, path: str, default: str | None) -> str | None:
        """A file of PEM certificate authorities."""
        value = self.readable_file(node, path, default)
        if value:
            try:
                ssl.create_default_context(cafile=value)
            except (ssl.SSLError, OSError) as exc:
                self.fail(node, path, f"not a file of PEM certificate authorities: {exc}")
                return default
        return value

    def certificate_and_key(
        self, fields: dict[str, Node], path: str, names: tuple[str, str]
    ) -> tuple[str, str] | None:
        """The PEM files of a certificate chain and its private key that fields `names`
        (certificate, key) name, both or neither; loaded to check them, so that a pair that
        cannot be used is a config error rather than a failure at the first connection."""
        cert_name, key_name = names
        cert = self.field(fields, cert_name, path, self.readable_file, None)
        key = self.field(fields, key_name, path, self.readable_file, None)
        if (cert_name in fields) != (key_name in fields):
            given, missing = (cert_name, key_name) if cert_name in fields else (key_name, cert_name)
            self.fail(fields[given], field_path(path, missing), f"needed with {given}")
            return None
        if cert is None or key is None:
            return None
        problem = _chain_problem(cert, key)
        if problem is not None:
            key_at_fault, message = problem
            name = key_name if key_at_fault else cert_name
            self.fail(fields[name], field_path(path, name), message)
            return None
        return cert, key

    def tls_version(self, node: Node, path: str, default: TlsVersion) -> TlsVersion:
        """A TLS version, `1.2` or `1.3`, read as written (YAML would make a number of it)."""
        text = node.value if isinstance(node, ScalarNode) else None
        for version in TlsVersion:
            if text == version.value:
                return version
        self.fail(node, path, f"expected one of: {', '.join(TlsVersion)}")
        return default

    def host_name(self, node: Node, path: str, default: str | None) -> str | None:
        """A DNS name or an IP address."""
        value = self.string(node, path, "")
        if not value:
            return default
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(value))
        if not _HOST_NAME.match(value):
            self.fail(node, path, "expected a host name like model.internal, or an IP address")
            return default
        return value

    def readable_file(self, node: Node, path: str, default: str | None) -> str | None:
        """The path of a file that exists."""
        value = self.string(node, path, "")
        if value and not Path(value).is_file():
            self.fail(node, path, f"no such file: {value}")
            return default
        return value or default

    def choice(self, node: Node, path: str, default: E, kind: type[E]) -> E:
        """One of the values of the enumeration `kind`."""
        value = self.scalar(node, path)
        for option in kind:
            if value == option.value:
                return option
        self.fail(node, path, f"expected one of: {', '.join(kind)}")
        return default

    def key_source(self, node: Node, path: str, default: KeySource) -> KeySource:
        """Where a request attribute is found: `header:NAME`, `cookie:NAME` or `query:NAME`."""
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

    def networks(self, node: Node, path: str) -> tuple[IPNetwork, ...]:
        """A list of IP addresses or CIDR blocks."""
        networks: list[IPNetwork] = []
        for value in self.strings(node, path):
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                self.fail(node, path, f"{value!r} is not an IP address or CIDR block")
        return tuple(networks)

    def unique(self, node: Node, path: str, values: list[tuple[str, str]]) -> None:
        """Report each value used twice among a list's items (`values`: each item's value, and
        the field that holds it)."""
        seen: set[str] = set()
        for index, (value, name) in enumerate(values):
            if value and value in seen and isinstance(node, SequenceNode):
                self.fail(node.value[index], f"{path}[{index}].{name}", f"{value!r} is used twice")
            seen.add(value)
