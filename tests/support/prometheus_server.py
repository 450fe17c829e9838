"""A real Prometheus server on a free loopback port, scraping a small exporter whose series the
tests set, for the tests of the metric checks (and anything else that needs PromQL answered).

Prometheus takes about 5 s to scrape a new target for the first time (its discovery manager sends
targets at most every 5 s), so one server serves the whole test session; tests keep apart by
using their own series.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.waiting import wait_until

MISSING = "prometheus is not installed (Debian: apt-get install prometheus)"
SCRAPE_INTERVAL = 0.25  # seconds
START_WITHIN = 30.0  # seconds to be ready, then as many to have scraped every target


class _QuietServer(ThreadingHTTPServer):
    """A server that takes a scraper hanging up mid-answer (Prometheus stopping) as normal."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


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

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
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
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def find(
        cls, folder: Path, targets: list[str], job: str = "exporter"
    ) -> PrometheusServer | None:
        binary = shutil.which("prometheus")
        return None if binary is None else cls(binary, folder, targets, job)

    def start(self) -> None:
        """Start, and return once it is ready and has scraped its targets (about 5 s)."""
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
        log = self.folder / "prometheus.log"
        with log.open("wb") as stderr:  # (the process keeps its own copy of the descriptor)
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        # Ready first: until then it refuses connections, then answers 503 while it opens its
        # storage and loads its config; only then are queries answered.
        wait_until(self._ready, START_WITHIN, "prometheus was not ready", every=0.1)
        wait_until(self._scraped, START_WITHIN, "prometheus did not scrape its targets", every=0.1)

    def _running(self) -> None:
        """Raise, with what it logged, if the process has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.folder / "prometheus.log").read_text()
            raise RuntimeError(f"prometheus exited ({self.process.returncode}):\n{log}")

    def _ready(self) -> bool:
        """Whether `/-/ready` answers 200 (a refused connection, a 503 or a timeout: not yet)."""
        self._running()
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return int(answer.status) == 200
        except OSError:  # (URLError and HTTPError are OSErrors; so are a refusal and a timeout)
            return False

    def _scraped(self) -> bool:
        """Whether every target has been scraped (`up == 1`)."""
        self._running()
        try:
            return len(self.query(f'up{{job="{self.job}"}} == 1')) == len(self.targets)
        except OSError:
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result of an instant query (a vector's series); a query Prometheus refuses
        raises, with its error."""
        data = urllib.parse.urlencode({"query": expression}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query", data, timeout=5) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            if error.code >= 500:  # (not refused: not answered; e.g. 503 while starting)
                raise
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
