"""A real `redis-server` on a free loopback port, for the tests of the shared state.

It keeps nothing on disk, so a restart comes back empty, as a failover to a fresh instance does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from tests.integration.conftest import free_port

MISSING = "redis-server is not installed (Debian: apt-get install redis-server)"


class RedisServer:
    """One redis-server process; `kill` and `start` again to simulate an outage."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def find(cls) -> RedisServer | None:
        binary = shutil.which("redis-server")
        return None if binary is None else cls(binary)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again) on the same port, empty; return once it answers PING."""
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self.ping():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """Kill it at once, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
