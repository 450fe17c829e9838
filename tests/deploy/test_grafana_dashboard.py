"""deploy/grafana/grayscale.json: a real Prometheus scrapes the demo (the proxy in front of its
toy models, synthetic users, shadowing, clicks and a rollback), and every panel's query returns
data — a dashboard whose queries name series that do not exist is how dashboards rot."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.configs import demo_config
from tests.support.paths import ROOT
from tests.support.prometheus_server import MISSING, PrometheusServer
from tests.support.waiting import eventually_blocking

DASHBOARD = ROOT / "deploy" / "grafana" / "grayscale.json"
VARIABLES = {"$route": ".*", "$__rate_interval": "30s"}


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, with Grafana's variables filled in."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            found.append((f"{panel['title']} / {target['legendFormat']}", expr))
    return found


def test_the_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "grayscale" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
    names = [variable["name"] for variable in dashboard["templating"]["list"]]
    assert names == ["datasource", "route"]
    for where, expr in expressions(dashboard):
        assert "$" not in expr, (where, expr)  # every variable it uses is one the test fills


@pytest.mark.slow  # (Prometheus and the proxy under traffic for about 15 s)
@pytest.mark.timeout(180)  # (Prometheus's start: up to 30 s to be ready, 30 to scrape)
def test_every_panel_shows_data_from_a_proxy_under_traffic(tmp_path: Path):
    config = demo_config(tmp_path)
    faster = config.read_text().replace("interval: 2s, window: 10s", "interval: 500ms, window: 3s")
    config.write_text(re.sub(r"min_requests: \d+", "min_requests: 12", faster))
    admin = re.search(r'admin_listen: "(127\.0\.0\.1:\d+)"', config.read_text())
    assert admin is not None
    server = PrometheusServer.find(tmp_path / "prometheus", [admin[1]], job="grayscale")
    if server is None:
        pytest.skip(MISSING)
    (tmp_path / "prometheus").mkdir()
    command = ["demo", "--config", str(config), "--duration", "40", "--rate", "150"]
    demo = subprocess.Popen(
        [sys.executable, "-m", "proxy", *command, "--degrade-after", "8"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server.start()  # (about 5 s: its first scrape of the demo)
        dashboard = json.loads(DASHBOARD.read_text())
        rolled_back = 'grayscale_rollout_state{state="rolled_back"} == 1'
        assert eventually_blocking(lambda: server.query(rolled_back), 25, every=0.5)
        empty: list[str] = []

        def every_panel_shows_data() -> bool:  # (a rate needs two scrapes after its change)
            nonlocal empty
            empty = [where for where, expr in expressions(dashboard) if not server.query(expr)]
            return not empty

        assert eventually_blocking(every_panel_shows_data, 10, every=0.5), empty
        for annotation in dashboard["annotations"]["list"]:
            expr = annotation["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            result = server.query(expr)  # every annotation's query runs...
            if annotation["name"] in ("Rollbacks", "Failed verdicts"):  # ...and the demo's show
                assert result, annotation["name"]
    finally:
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=20)
        server.stop()
    assert demo.returncode == 0, err
    assert "Traceback" not in err
