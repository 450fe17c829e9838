"""Where rollout state lives between restarts: a small interface and its backends."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

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
        except (ValueError, KeyError, TypeError) as exc:
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
    """Rollouts from a JSON document; raises ValueError, KeyError or TypeError when malformed."""
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"unknown format version {document.get('version')!r}")
    return {
        str(name): Rollout(
            identity=str(r["identity"]),
            started_at=float(r["started_at"]),
            status=Status(r["status"]),
            held=float(r["held"]),
            frozen_at=None if r["frozen_at"] is None else float(r["frozen_at"]),
            share_override=None if r["share_override"] is None else float(r["share_override"]),
            history=tuple(
                Transition(
                    Action(t["action"]),
                    float(t["at"]),
                    str(t["actor"]),
                    State(t["before"]),
                    State(t["after"]),
                    t["reason"],
                    t["share"],
                )
                for t in r["history"]
            ),
        )
        for name, r in document["rollouts"].items()
    }
