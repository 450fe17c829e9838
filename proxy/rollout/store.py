"""Where rollout state lives between restarts and across processes: a small interface and its
backends (memory, a file, and Redis in `redis_store`).

Invariants
- A route's rollout changes only through `change`: an atomic read-modify-write of that one
  record, so two processes acting at once never lose one of the two actions (the second works
  on the first's result).
- `follow` tells the controller of changes made elsewhere (another worker, another replica), and
  of the store coming back after it was unavailable, so that last known state can be written
  back.
- `StateUnavailable` means nothing was changed anywhere (a shared store that cannot be reached);
  `StateError` that this process could not read or write its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from proxy.rollout.machine import Action, Rollout, State, Status, Transition

log = logging.getLogger("grayscale.rollout")

FORMAT_VERSION = 1
FOLLOW_EVERY = 0.5  # seconds between checks of a file changed by another process

Change = Callable[[Rollout | None], Rollout]  # the stored rollout (None: none yet) -> the new one
# a route's rollout, as changed elsewhere -> whether it is older than this process's (the store
# lost changes: write what this process knows back, as after an outage)
Follower = Callable[[str, Rollout], bool]
Recovery = Callable[[], Awaitable[None]]  # the store can be reached again


class StateError(Exception):
    """The state store could not be read or written."""


class StateUnavailable(Exception):
    """A shared state store cannot be reached: nothing was changed."""


class NotReplicated(Exception):
    """A change was made (`rollout`), but not acknowledged by the replicas asked for in time:
    a failover now could lose it."""

    def __init__(self, message: str, rollout: Rollout):
        super().__init__(message)
        self.rollout = rollout


class LeaseLost(StateUnavailable):
    """A change fenced by the decider's lease was refused: this process no longer holds it
    (another replica decides now). Nothing was changed."""


@dataclass(frozen=True, slots=True)
class Fence:
    """A change only the holder of a lease may make: the lease's key and the holder's token.
    The store checks it in the same atomic step as the change (a decider that stalled past its
    lease and woke up changes nothing)."""

    key: str
    token: str


class StateStore(Protocol):
    """Rollouts by route name, each changed atomically; see the module's invariants."""

    @property
    def healthy(self) -> bool:
        """Whether the store answered the last time it was asked, and took the last write."""
        ...

    @property
    def refusing(self) -> str | None:
        """Why the store, though it answers, refused the last write (a shared store out of
        memory, or read-only); None when it takes writes."""
        ...

    async def load(self, identities: Mapping[str, str]) -> dict[str, Rollout]:
        """The stored rollouts by route name; `identities` names each configured route's
        candidate (a store may keep one record per candidate)."""
        ...

    async def change(
        self,
        name: str,
        identity: str,
        change: Change,
        fence: Fence | None = None,
        durable: bool = False,
    ) -> Rollout:
        """Replace route `name`'s rollout by `change(stored)`, atomically; the result. With
        `fence`, only while its lease is held (else `LeaseLost`); a store without leases (one
        host's file or memory, where no lease is taken) ignores it. `durable`: a decision that
        must survive the store's failover (a rollback, a pause, a promotion): a replicated
        store waits for its replicas to acknowledge it, else raises `NotReplicated` (the change
        is made, on the master only)."""
        ...

    async def forget(self, name: str) -> None:
        """Drop route `name`'s rollout (its route left the config long ago)."""
        ...

    async def follow(
        self, identities: Mapping[str, str], on_change: Follower, on_recovery: Recovery
    ) -> None:
        """Report changes made elsewhere to the routes in `identities` (called again when the
        config changes), and the store's recovery after an outage."""
        ...

    async def close(self) -> None:
        """Stop following."""
        ...

    async def set_aside(self) -> str | None:
        """Keep unreadable state for a person to look at; where it went, if anywhere."""
        ...


class MemoryStore:
    """Keeps state in this process only: a restart forgets it."""

    healthy = True
    refusing = None

    def __init__(self) -> None:
        self._rollouts: dict[str, Rollout] = {}

    async def load(self, identities: Mapping[str, str] | None = None) -> dict[str, Rollout]:
        return dict(self._rollouts)

    async def change(
        self,
        name: str,
        identity: str,
        change: Change,
        fence: Fence | None = None,
        durable: bool = False,
    ) -> Rollout:
        self._rollouts[name] = changed = change(self._rollouts.get(name))
        return changed

    async def forget(self, name: str) -> None:
        self._rollouts.pop(name, None)

    async def follow(
        self, identities: Mapping[str, str], on_change: Follower, on_recovery: Recovery
    ) -> None:
        """Nothing changes it from elsewhere."""

    async def close(self) -> None:
        """Nothing to stop."""

    async def set_aside(self) -> str | None:
        return None


class FileStore:
    """A JSON file, replaced atomically (temp file, fsync, rename, fsync of the folder); each
    change made under an exclusive lock on `<file>.lock`, so that the workers of one host
    sharing the file never lose an update, and followed by polling for their changes."""

    healthy = True
    refusing = None  # (a file that cannot be written is a `StateError`, reported as such)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._follower: asyncio.Task[None] | None = None
        self._seen: tuple[int, int, int] | None = None

    async def load(self, identities: Mapping[str, str] | None = None) -> dict[str, Rollout]:
        return await asyncio.to_thread(self._read)

    async def change(
        self,
        name: str,
        identity: str,
        change: Change,
        fence: Fence | None = None,
        durable: bool = False,
    ) -> Rollout:
        return await asyncio.to_thread(self._change, name, change)  # (fsync'd: durable)

    async def forget(self, name: str) -> None:
        await asyncio.to_thread(self._forget, name)

    async def follow(
        self, identities: Mapping[str, str], on_change: Follower, on_recovery: Recovery
    ) -> None:
        if self._follower is None:
            self._seen = self._signature()
            self._follower = asyncio.get_running_loop().create_task(
                self._follow(on_change, on_recovery)
            )

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    async def set_aside(self) -> str | None:
        """Rename the unreadable file to `<name>.unreadable-<time>`, so saving cannot erase it."""
        aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
        try:
            os.replace(self.path, aside)
        except OSError:
            return None
        return str(aside)

    async def _follow(self, on_change: Follower, on_recovery: Recovery) -> None:
        while True:
            await asyncio.sleep(FOLLOW_EVERY)
            seen = self._signature()
            if seen == self._seen:
                continue
            self._seen = seen
            try:
                rollouts = await asyncio.to_thread(self._read)
            except StateError:
                continue  # caught mid-change or broken: the next change or look will tell
            behind = [on_change(name, rollout) for name, rollout in rollouts.items()]
            if any(behind):  # (a file restored from an older copy)
                await on_recovery()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115
        except OSError as exc:
            raise StateError(f"{self.path}: cannot write rollout state: {exc}") from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _change(self, name: str, change: Change) -> Rollout:
        with self._locked():
            rollouts = self._read()
            rollouts[name] = changed = change(rollouts.get(name))
            self._write(json.dumps(encode(rollouts), indent=2, sort_keys=True))
            self._seen = self._signature()  # our own change: nothing to follow
        return changed

    def _forget(self, name: str) -> None:
        with self._locked():
            rollouts = self._read()
            if rollouts.pop(name, None) is not None:
                self._write(json.dumps(encode(rollouts), indent=2, sort_keys=True))
                self._seen = self._signature()

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
        "rollouts": {name: encode_rollout(r) for name, r in rollouts.items()},
    }


def encode_rollout(r: Rollout) -> dict[str, Any]:
    """The JSON object of one rollout."""
    return {
        "identity": r.identity,
        "started_at": r.started_at,
        "status": r.status.value,
        "held": r.held,
        "frozen_at": r.frozen_at,
        "share_override": r.share_override,
        "judged": r.judged,
        "run": r.run,
        "revision": r.revision,
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


def decode_rollout(document: Any, path: str) -> Rollout:
    """One rollout from its JSON object; raises `ValueError` naming the bad field."""
    return _Reader().rollout(document, path)


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

    def count(self, document: dict[str, Any], name: str, path: str) -> int:
        value = self.field(document, name, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{path}.{name}: expected a whole number of at least 0")
        return value

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
            judged=self.count(r, "judged", path) if "judged" in r else 0,  # (older files)
            run=max(1, self.count(r, "run", path)) if "run" in r else 1,
            revision=self.count(r, "revision", path) if "revision" in r else 0,
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
