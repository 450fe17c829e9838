"""The certificate files a config names, watched for renewals.

Invariants
- A change to any of the files (a renewal that replaces or rewrites one, a Kubernetes secret
  that swaps its links) calls `on_change` once it is seen; never while one of them is missing,
  which is a swap under way.
- The files watched are those of the config in force at each look.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from proxy.config.model import Config
from proxy.config.reload import POLL_SECONDS
from proxy.runtime.tasks import cancel_and_wait

log = logging.getLogger("grayscale.reload")


def certificate_files(config: Config) -> set[str]:
    """The files a reload reads again: the listeners' certificates and keys, the upstreams'
    authorities and client certificates."""
    files = {
        name
        for tls in (config.server.tls, config.server.admin_tls)
        if tls is not None
        for name in (tls.cert_file, tls.key_file)
    }
    for route in config.routes:
        for upstream in (route.stable, route.candidate):
            files.update(
                name
                for name in (upstream.ca_file, upstream.client_cert_file, upstream.client_key_file)
                if name
            )
    return files


def _signature(path: str) -> tuple[int, int, int, int] | None:
    """What identifies a file's version; None while it is missing."""
    try:
        st = Path(path).stat()  # (follows links: a swapped link shows as another inode)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class CertificateWatcher:
    """Polls the certificate files of `config()` and calls `on_change` when one changed."""

    def __init__(self, config: Callable[[], Config], on_change: Callable[[], Awaitable[object]]):
        self._config = config
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

    def _look(self) -> dict[str, tuple[int, int, int, int] | None]:
        return {path: _signature(path) for path in certificate_files(self._config())}

    async def _run(self) -> None:
        seen = self._look()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            current = self._look()
            if current == seen or None in current.values():
                continue
            seen = current
            try:
                await self._on_change()
            except Exception:
                log.exception("reload after a certificate file changed failed")
