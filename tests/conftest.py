"""Suite-wide settings: async tests run on uvloop, the event loop `grayscale serve` uses; no test
passes while the proxy logged at ERROR (the default exception handlers of asyncio and uvloop log
there too, so an exception in a callback or a task nobody awaited fails the test); and the
fixtures more than one folder uses (tests/support/fixtures.py) are registered for every test."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import pytest_timeout  # type: ignore[import-untyped]
import uvloop

pytest_plugins = ["tests.support.fixtures"]


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], Any]]:
    return {"uvloop": uvloop.new_event_loop}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "logs_errors(*texts): the test provokes ERROR log lines containing one of these texts",
    )
    config.addinivalue_line(
        "markers",
        "slow: a test of 10 s or more (a long seeded simulation, a benchmark, a failover, the "
        "demo run to its end), with its own @pytest.mark.timeout; not in `make test`, run by "
        "`make test-slow`",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's "thread" method, naming the test: past its timeout, the run stops with
    the test's id and the stack of every thread (the stacks alone do not name an async test,
    whose frame is off the stack while it awaits)."""
    if settings.method != "thread":
        return None

    def expired() -> None:
        capture = item.config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(item)
        item.config.get_terminal_writer().line(
            f"\nTIMEOUT: {item.nodeid} ran past its {settings.timeout:g} s", red=True, bold=True
        )
        pytest_timeout.timeout_timer(item, settings)  # (the stacks, then the process exits)

    timer = threading.Timer(settings.timeout, expired)
    timer.name = f"timeout of {item.nodeid}"

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # (pytest-timeout cancels it)
    timer.start()
    return True


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say loudly which tests did not run for want of a system program (redis-server...)."""
    missing: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        if "is not installed" in reason:
            reason = reason.removeprefix("Skipped: ")
            missing[reason] = missing.get(reason, 0) + 1
    if missing:
        terminalreporter.section("TESTS NOT RUN: system programs missing", sep="!", red=True)
        for reason, count in missing.items():
            terminalreporter.line(f"{count} tests skipped: {reason}", red=True, bold=True)


class _Errors(logging.Handler):
    """Collects every record at ERROR or above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_error_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if anything logged at ERROR during it (its fixtures' teardown included),
    except lines the test declares with `@pytest.mark.logs_errors("text", ...)`."""
    errors = _Errors()
    root = logging.getLogger()
    root.addHandler(errors)
    try:
        yield
    finally:
        root.removeHandler(errors)
    expected = [text for mark in request.node.iter_markers("logs_errors") for text in mark.args]
    unexpected = [
        record
        for record in errors.records
        if not any(text in record.getMessage() for text in expected)
    ]
    if unexpected:
        formatter = logging.Formatter("%(name)s: %(message)s")
        lines = "\n".join(formatter.format(record) for record in unexpected)
        pytest.fail(f"logged at ERROR during the test:\n{lines}", pytrace=False)
