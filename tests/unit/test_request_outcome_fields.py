"""A `RequestOutcome` is built with every field named: its 19 fields include pairs of one type
(`ttfb` and `ttft`, `bytes_in` and `bytes_out`, `error` and `candidate_error`) that a type
checker cannot tell apart when passed by position. (A named tuple accepts positions, so this
test is what refuses them, in the code and in the tests.)"""

from __future__ import annotations

import ast
from pathlib import Path

from proxy.records.request_outcome import RequestOutcome

ROOT = Path(__file__).resolve().parents[2]


def positional_calls(path: Path) -> list[int]:
    """The lines where `RequestOutcome(...)` is called with an argument by position."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "RequestOutcome"
            and node.args
        ):
            found.append(node.lineno)
    return found


def test_every_request_outcome_is_built_by_keyword() -> None:
    sources = [
        p for folder in ("proxy", "tests", "loadtests") for p in (ROOT / folder).rglob("*.py")
    ]
    offenders = {str(p.relative_to(ROOT)): lines for p in sources if (lines := positional_calls(p))}
    assert offenders == {}
    built = sum("RequestOutcome(" in p.read_text() for p in sources)
    assert built >= 5  # the gateway, the trials and the tests that build outcomes were read


def test_the_check_sees_a_positional_call(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("x = RequestOutcome(1.0, route='r')\ny = RequestOutcome(at=1.0)\n")
    assert positional_calls(sample) == [1]


def test_the_fields_are_the_ones_named() -> None:
    assert RequestOutcome._fields[:6] == ("at", "route", "method", "decision", "variant", "status")
    assert {"ttfb", "ttft", "bytes_in", "bytes_out", "candidate_error"} <= set(
        RequestOutcome._fields
    )
