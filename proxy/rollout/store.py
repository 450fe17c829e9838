"""Where rollout state lives between restarts: a small interface and its backends."""

from __future__ import annotations

import asyncio
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from proxy.rollout.machine import Action, Rollout, State, Status, Transition

FORMAT_VERSION = 1


class StateError(Exception):
    """The state store could not be read or written."""


class StateStore(Protocol):
    """Loads and saves every route's rollout at once."""

    async def load(self) -> dict[str, Rollout]:
        """The stored rollouts by route name (empty when nothing was stored yet)."""
        ...

    async def save(self, rollouts: Mapping[str, Rollout]) -> None:
        """Replace the stored rollouts."""
        ...

    async def set_aside(self) -> str | None:
        """Keep unreadable state for a person to look at; where it went, if anywhere."""
        ...


class MemoryStore:
    """Keeps state in this process only: a restart forgets it."""

    def __init__(self) -> None:
        self._rollouts: dict[str, Rollout] = {}

    async def load(self) -> dict[str, Rollout]:
        return dict(self._rollouts)

    async def save(self, rollouts: Mapping[str, Rollout]) -> None:
        self._rollouts = dict(rollouts)

    async def set_aside(self) -> str | None:
        return None


class FileStore:
    """A JSON file, replaced atomically (temp file, fsync, rename, fsync of the folder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    async def load(self) -> dict[str, Rollout]:
        return await asyncio.to_thread(self._read)

    async def save(self, rollouts: Mapping[str, Rollout]) -> None:
        text = json.dumps(encode(rollouts), indent=2, sort_keys=True)
        await asyncio.to_thread(self._write, text)

    async def set_aside(self) -> str | None:
        """Rename the unreadable file to `<name>.unreadable-<time>`, so saving cannot erase it."""
        aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
        try:
            os.replace(self.path, aside)
        except OSError:
            return None
        return str(aside)

    def _read(self) -> dict[str, Rollout]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read rollout state: {exc}") from exc
        try:
            return decode(json.loads(text))
        except (ValueError, RecursionError) as exc:
            raise StateError(f"{self.path}: rollout state is corrupt: {exc}") from exc

    def _write(self, text: str) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot write rollout state: {exc}") from exc


def encode(rollouts: Mapping[str, Rollout]) -> dict[str, Any]:
    """The JSON document of `rollouts`."""
    return {
        "version": FORMAT_VERSION,
        "rollouts": {
            name: {
                "identity": r.identity,
                "started_at": r.started_at,
                "status": r.status.value,
                "held": r.held,
                "frozen_at": r.frozen_at,
                "share_override": r.share_override,
                "history": [
                    {
                        "action": t.action.value,
                        "at": t.at,
                        "actor": t.actor,
                        "before": t.before.value,
                        "after": t.after.value,
                        "reason": t.reason,
                        "share": t.share,
                    }
                    for t in r.history
                ],
            }
            for name, r in rollouts.items()
        },
    }


def decode(document: Any) -> dict[str, Rollout]:
    """Rollouts from a JSON document; raises `ValueError` naming the first field that is missing
    or of the wrong type (any JSON value may come in: a file can be truncated, edited by hand, or
    written by another version)."""
    read = _Reader()
    read.mapping(document, "(document)")
    version = document.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ValueError(f"version: unknown format version {version!r}")
    rollouts = read.mapping(document.get("rollouts"), "rollouts")
    return {name: read.rollout(rollout, f"rollouts.{name}") for name, rollout in rollouts.items()}


class _Reader:
    """Typed reads of a JSON document's fields, each failure naming the field's path."""

    def mapping(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected an object, got {_kind(value)}")
        return value

    def field(self, document: dict[str, Any], name: str, path: str) -> Any:
        if name not in document:
            raise ValueError(f"{path}.{name}: missing")
        return document[name]

    def number(self, document: dict[str, Any], name: str, path: str) -> float:
        value = self.field(document, name, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{path}.{name}: expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise ValueError(f"{path}.{name}: expected a finite number, got {value}")
        return float(value)

    def optional_number(self, document: dict[str, Any], name: str, path: str) -> float | None:
        return (
            None if self.field(document, name, path) is None else self.number(document, name, path)
        )

    def text(self, document: dict[str, Any], name: str, path: str) -> str:
        value = self.field(document, name, path)
        if not isinstance(value, str):
            raise ValueError(f"{path}.{name}: expected a string, got {_kind(value)}")
        return value

    def optional_text(self, document: dict[str, Any], name: str, path: str) -> str | None:
        if self.field(document, name, path) is None:
            return None
        return self.text(document, name, path)

    def choice(self, document: dict[str, Any], name: str, path: str, kind: type[E]) -> E:
        value = self.text(document, name, path)
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"{path}.{name}: unknown value {value!r}") from None

    def rollout(self, value: Any, path: str) -> Rollout:
        r = self.mapping(value, path)
        history = self.field(r, "history", path)
        if not isinstance(history, list):
            raise ValueError(f"{path}.history: expected a list, got {_kind(history)}")
        return Rollout(
            identity=self.text(r, "identity", path),
            started_at=self.number(r, "started_at", path),
            status=self.choice(r, "status", path, Status),
            held=self.number(r, "held", path),
            frozen_at=self.optional_number(r, "frozen_at", path),
            share_override=self.optional_number(r, "share_override", path),
            history=tuple(
                self.transition(t, f"{path}.history[{i}]") for i, t in enumerate(history)
            ),
        )

    def transition(self, value: Any, path: str) -> Transition:
        t = self.mapping(value, path)
        return Transition(
            self.choice(t, "action", path, Action),
            self.number(t, "at", path),
            self.text(t, "actor", path),
            self.choice(t, "before", path, State),
            self.choice(t, "after", path, State),
            self.optional_text(t, "reason", path),
            self.optional_number(t, "share", path),
        )


E = TypeVar("E", Action, State, Status)


def _kind(value: Any) -> str:
    """A JSON value's type, as a person would say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else "a number"
