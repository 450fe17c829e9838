"""deploy/prometheus/: the rules load (`promtool check rules`), their unit tests pass (`promtool
test rules`), and every Grayscale series they name is one a running proxy exports."""

from __future__ import annotations

import re
import shutil
import subprocess

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app.server import Server
from tests.support.configs import route_yaml
from tests.support.paths import ROOT
from tests.support.proxies import ProxyFactory

RULES = ROOT / "deploy" / "prometheus"
MISSING = "promtool is not installed (Debian: apt-get install prometheus)"


def promtool(*arguments: str) -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip(MISSING)
    done = subprocess.run(
        [binary, *arguments], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_load():
    assert "SUCCESS: 15 rules found" in promtool("check", "rules", "grayscale-rules.yaml")


def test_the_rules_unit_tests_pass():
    assert "SUCCESS" in promtool("test", "rules", "grayscale-rules.test.yaml")


async def exported_series(server: Server) -> set[str]:
    """The names of every series a proxy can export (a histogram's `_bucket`, `_sum` and
    `_count`, a counter's `_total`), whether or not it has samples yet."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.admin_url + "/metrics") as answer,
    ):
        text = await answer.text()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


async def test_every_series_the_rules_name_is_exported(start_proxy: ProxyFactory):
    server = await start_proxy(route_yaml("http://127.0.0.1:1", "http://127.0.0.1:2"))
    exported = await exported_series(server)
    named = set(
        re.findall(
            r"(?<!:)\bgrayscale_[a-z_]+\b(?!:)", (RULES / "grayscale-rules.yaml").read_text()
        )
    )
    assert named, "no series found in the rules"
    assert named <= exported, sorted(named - exported)


def test_the_rule_files_sit_where_the_readme_says():
    readme = (ROOT / "README.md").read_text()
    for path in (
        "deploy/prometheus/grayscale-rules.yaml",
        "deploy/prometheus/grayscale-rules.test.yaml",
    ):
        assert (ROOT / path).is_file() and path in readme, path
