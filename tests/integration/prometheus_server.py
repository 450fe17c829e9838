"""A real Prometheus server on a free loopback port, scraping a small exporter whose series the
tests set, for the tests of the metric checks (and anything else that needs PromQL answered).

Prometheus takes about 5 s to scrape a new target for the first time (its discovery manager sends
targets at most every 5 s), so one server serves the whole test session; tests keep apart by
using their own series.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MISSING = "prometheus is not installed (Debian: apt-get install prometheus)"
SCRAPE_INTERVAL = 0.25  # seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Exporter:
    """Serves `/metrics` in the text format: the series set with `set`, e.g.
    `exporter.set('quality{variant="stable"}', 0.9)`."""

    def __init__(self) -> None:
        self.series: dict[str, float] = {}
        lock = threading.Lock()
        self._lock = lock
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    lines = [f"{name} {value!r}" for name, value in exporter.series.items()]
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def set(self, series: str, value: float) -> None:
        with self._lock:
            self.series[series] = value

    def remove(self, series: str) -> None:
        with self._lock:
            self.series.pop(series, None)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class PrometheusServer:
    """One `prometheus` process scraping `targets` (as `job`) every `SCRAPE_INTERVAL`."""

    def __init__(self, binary: str, folder: Path, targets: list[str], job: str) -> None:
        self.binary = binary
        self.folder = folder
        self.targets = targets
        self.job = job
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def find(
        cls, folder: Path, targets: list[str], job: str = "exporter"
    ) -> PrometheusServer | None:
        binary = shutil.which("prometheus")
        return None if binary is None else cls(binary, folder, targets, job)

    def start(self) -> None:
        """Start, and return once the targets have been scraped (about 5 s)."""
        config = self.folder / "prometheus.yml"
        interval = f"{SCRAPE_INTERVAL * 1000:.0f}ms"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": interval, "scrape_timeout": interval},
                    "scrape_configs": [
                        {"job_name": self.job, "static_configs": [{"targets": self.targets}]}
                    ],
                }
            )
        )
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "prometheus.log").open("wb"),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.folder / "prometheus.log").read_text()
                raise RuntimeError(f"prometheus exited:\n{log}")
            try:
                if len(self.query(f'up{{job="{self.job}"}} == 1')) == len(self.targets):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus did not scrape its targets within 30 s")

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result of an instant query (a vector's series); a query Prometheus refuses
        raises, with its error."""
        data = urllib.parse.urlencode({"query": expression}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query", data, timeout=5) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            raise ValueError(f"{expression}: {error.read().decode()}") from error
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
