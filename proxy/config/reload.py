"""Config reloads: what changed, and a watcher that notices a changed file."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.config.model import Config
from proxy.runtime.tasks import cancel_and_wait

log = logging.getLogger("grayscale.reload")
POLL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The outcome of one reload attempt.

    `result` is applied, unchanged (same text) or invalid (the running config stays).
    """

    at: float
    trigger: str
    result: str
    config: str
    errors: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "at": self.at,
            "trigger": self.trigger,
            "result": self.result,
            "config": self.config,
            "errors": list(self.errors),
            "restart_required": list(self.restart_required),
        }


def restart_required(running: Config, new: Config) -> tuple[str, ...]:
    """The fields of `new` that a reload cannot apply to a process started with `running`."""
    fields = {
        "server.listen": (running.server.listen, new.server.listen),
        "server.admin_listen": (running.server.admin_listen, new.server.admin_listen),
        "server.drain_timeout": (running.server.drain_timeout, new.server.drain_timeout),
        "server.workers": (running.server.workers, new.server.workers),
        "state": (running.state, new.state),
        "access_log": (running.access_log, new.access_log),
    }
    return tuple(name for name, (old, now) in fields.items() if old != now)


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    """What identifies the file's current version; None while it is missing.

    `os.stat` follows symbolic links, so a swapped link (a Kubernetes ConfigMap update) or a file
    replaced by rename shows as a new inode, an edit in place as a new mtime or size.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class ConfigWatcher:
    """Polls a config file and calls `on_change` when it may have changed."""

    def __init__(self, path: str | Path, on_change: Callable[[], Awaitable[object]]):
        self.path = Path(path)
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        seen = _signature(self.path)
        while True:
            await asyncio.sleep(POLL_SECONDS)
            current = _signature(self.path)
            if current is None or current == seen:
                continue  # missing for a moment while a ConfigMap swaps its links: wait
            seen = current
            try:
                await self._on_change()
            except Exception:
                log.exception("reload after a file change failed")
