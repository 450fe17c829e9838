"""A real `redis-server` on a free loopback port, for the tests of the shared state.

It keeps nothing on disk, so a restart comes back empty, as a failover to a fresh instance does;
given a folder, `save` writes a snapshot there and a restart loads the last one saved, as a
restore from a backup (or a restart from an old RDB file) does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from itertools import count
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.support.ports import free_port
from tests.support.waiting import wait_until

MISSING = "redis-server is not installed (Debian: apt-get install redis-server)"


class RedisServer:
    """One redis-server process; `kill` and `start` again to simulate an outage. With
    `password`, clients must authenticate; with `tls` (a certificate and its key), `url` is
    its TLS port (the plain port stays open for `ping`)."""

    def __init__(
        self,
        binary: str,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
        folder: Path | None = None,
        cluster: bool = False,
    ) -> None:
        self.binary = binary
        self.folder = folder
        self.cluster = cluster
        self._scratch = tempfile.TemporaryDirectory(prefix="grayscale-redis-")
        self.bus_port = free_port() if cluster else None
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def find(
        cls,
        password: str | None = None,
        tls: tuple[Path, Path] | None = None,
        folder: Path | None = None,
    ) -> RedisServer | None:
        binary = shutil.which("redis-server")
        return None if binary is None else cls(binary, password, tls, folder)

    @property
    def url(self) -> str:
        if self.tls_port is not None:
            return f"rediss://127.0.0.1:{self.tls_port}/0"
        return f"redis://127.0.0.1:{self.port}/0"

    def _options(self) -> list[str]:
        options = ["--requirepass", self.password] if self.password else []
        # (a replica writes what it syncs to its folder: never the working directory)
        options += ["--dir", str(self.folder or self._scratch.name), "--dbfilename", "dump.rdb"]
        # (a replica syncs at once, not after the 5 s a master waits for more replicas to come)
        options += ["--repl-diskless-sync-delay", "0"]
        if self.cluster:
            assert self.folder is not None, "a cluster node keeps its nodes.conf in its folder"
            options += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{self.port}.conf",
                "--cluster-node-timeout", "2000",
                "--cluster-port", str(self.bus_port),  # (port + 10000 may not exist)
            ]  # fmt: skip
        if self.tls is not None:
            cert, key = self.tls
            options += [
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", str(cert),
                "--tls-key-file", str(key),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        return options

    def start(self, replica_of: int | None = None) -> None:
        """Start (again) on the same port, empty (or a replica of the Redis at port
        `replica_of`); return once it answers PING."""
        following = ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--loglevel", "warning",
                *following,
                *self._options(),
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited ({process.returncode}), port {self.port}")
            return self.ping()

        wait_until(answers, 10, f"redis-server did not start on port {self.port}", every=0.02)

    def kill(self) -> None:
        """Kill it at once, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def save(self) -> None:
        """Write a snapshot (`SAVE`) into the folder; the next `start` loads it."""
        assert self.folder is not None, "a RedisServer without a folder keeps nothing"
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"SAVE\r\n")
            assert sock.recv(16).startswith(b"+OK")

    def role(self) -> bytes:
        """The first lines of `INFO replication`."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"INFO replication\r\n")
            return sock.recv(4096)

    def replicating(self) -> bool:
        """Whether this replica's link to its master is up."""
        try:
            return b"master_link_status:up" in self.role()
        except OSError:
            return False

    def acknowledged(self, key: str = "probe") -> bool:
        """Whether a replica acknowledges a write to this master (of `key`, then deleted) within
        0.2 s: what a durable change waits for. (A replica whose link is up is not there yet:
        after a sync, the master streams writes to it from its first acknowledgement on, up to
        a second later.)"""
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=2)
        try:
            client.set(key, 1)
            client.delete(key)
            return int(client.execute_command("WAIT", 1, 200)) >= 1
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # up either way
        except OSError:
            return False


class SentinelSet:
    """A Redis master, its replica and one sentinel (quorum 1) watching them as `service`:
    `failover` asks the sentinel to swap them, `kill_master` makes it do so on its own."""

    def __init__(self, binary: str, folder: Path, service: str = "grayscale") -> None:
        self.service = service
        self.folder = folder
        self.servers = [RedisServer(binary), RedisServer(binary)]
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None
        self.binary = binary

    def start(self) -> None:
        first, second = self.servers
        first.start()
        second.start(replica_of=first.port)
        config = self.folder / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\n"
            f"sentinel monitor {self.service} 127.0.0.1 {first.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 10000\n"
        )
        self.sentinel = subprocess.Popen(
            [self.binary, str(config), "--sentinel", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )
        wait_until(lambda: self.master_port() == first.port, 10, "the sentinel found no master")
        wait_until(first.acknowledged, 10, "the replica did not sync")

    def ask(self, command: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.sentinel_port), timeout=2) as sock:
            sock.sendall(command)
            return sock.recv(4096)

    def master_port(self) -> int | None:
        """The master's port, as the sentinel says."""
        try:
            answer = self.ask(
                f"SENTINEL GET-MASTER-ADDR-BY-NAME {self.service}\r\n".encode()
            ).split(b"\r\n")
        except OSError:
            return None
        return int(answer[4]) if len(answer) > 4 and answer[4].isdigit() else None

    def failover(self) -> None:
        """A planned failover (`SENTINEL FAILOVER`): the replica becomes the master."""
        assert self.ask(f"SENTINEL FAILOVER {self.service}\r\n".encode()).startswith(b"+OK")

    def kill(self) -> None:
        for server in self.servers:
            server.kill()
        if self.sentinel is not None:
            self.sentinel.kill()
            self.sentinel.wait()
            self.sentinel = None


class ClusterSet:
    """A Redis Cluster on loopback: three masters sharing the 16,384 slots, and one replica of
    the first (the others have none), so that a test can tell which master a command went to."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.masters = [RedisServer(binary, folder=folder, cluster=True) for _ in range(3)]
        self.replica = RedisServer(binary, folder=folder, cluster=True)

    @property
    def url(self) -> str:
        return self.masters[0].url

    def start(self) -> None:
        first = self.masters[0]
        nodes = [*self.masters, self.replica]
        for node in nodes:
            node.start()
        clients = [redis.Redis(port=node.port) for node in nodes]
        try:
            per = 16384 // len(self.masters)
            for i, client in enumerate(clients[: len(self.masters)]):
                last = 16383 if i == len(self.masters) - 1 else (i + 1) * per - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", i * per, last)
            for node in nodes[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port, node.bus_port)
            first_id = clients[0].execute_command("CLUSTER MYID")
            wait_until(lambda: all(_ok(c) for c in clients), 15, "the cluster did not form")
            wait_until(
                lambda: _replicates(clients[-1], first_id),
                15,
                "the replica did not follow its master",
            )
            probe = next(key for i in count() if self.master_of(key := f"probe{i}") is first)
            wait_until(lambda: first.acknowledged(probe), 15, "the replica did not sync")
        finally:
            for client in clients:
                client.close()

    def master_of(self, key: str) -> RedisServer:
        """The master holding `key`'s slot."""
        return self.masters[min(key_slot(key.encode()) // (16384 // 3), 2)]

    def kill(self) -> None:
        for node in [*self.masters, self.replica]:
            node.kill()


def _ok(client: redis.Redis) -> bool:
    info = client.cluster("INFO")  # (parsed: a dict of strings)
    return bool(info.get("cluster_state") == "ok" and str(info.get("cluster_known_nodes")) == "4")


def _replicates(client: redis.Redis, master: bytes | str) -> bool:
    """Make `client`'s node a replica of `master` (once the node knows it); whether it is."""
    master = master.decode() if isinstance(master, bytes) else master
    try:
        client.execute_command("CLUSTER REPLICATE", master)
    except redis.ResponseError:
        return False  # (it does not know the master yet)
    return True
