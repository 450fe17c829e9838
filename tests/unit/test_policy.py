"""The decision policy: one pure step, the only copy of its rules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from proxy.analysis.policy import Act, Memory, Ramp, Rules, step
from proxy.analysis.verdict import Result, Verdict
from proxy.config.model import Inconclusive, OnError
from proxy.rollout.machine import State

RUN = "http://c#salt@1"
RAMPING = Ramp(RUN, State.RAMPING, 0.2)
RULES = Rules(failures_before_rollback=3, max_errors_in_a_row=2)


def verdict(result: Result) -> Verdict:
    return Verdict(0.0, result, ())


def steps(results: list[Result], ramp: Ramp = RAMPING, rules: Rules = RULES) -> list[Act]:
    memory, acts = Memory(), []
    for i, result in enumerate(results):
        memory, done = step(memory, verdict(result), ramp, rules, float(i))
        acts.append(done.act)
    return acts


F, E, S, N, P = Result.FAIL, Result.ERROR, Result.SUSPECT, Result.INCONCLUSIVE, Result.PASS
HOLD, GO, BACK = Act.HOLD, Act.CONTINUE, Act.ROLLBACK


@pytest.mark.parametrize(
    ("results", "acts"),
    [
        ([F, F, F], [HOLD, HOLD, BACK]),  # three fails in a row
        ([F, F, P, F, F], [HOLD, HOLD, GO, HOLD, HOLD]),  # a pass ends the row
        ([F, F, S, F], [HOLD, HOLD, HOLD, HOLD]),  # so does a suspect
        ([F, F, N, F], [HOLD, HOLD, HOLD, HOLD]),  # and an inconclusive
        ([F, E, F, F], [HOLD, HOLD, HOLD, BACK]),  # an error neither ends nor extends it
        ([E, E], [HOLD, HOLD]),  # two errors reach the limit: on_error hold holds on
        ([E, P, E, N], [HOLD, GO, HOLD, HOLD]),  # a measured verdict ends the errors
        ([S, S, S, S], [HOLD] * 4),  # suspect holds, and never rolls back
        ([P, P], [GO, GO]),
    ],
)
def test_each_word_steps_as_the_rules_say(results, acts):
    assert steps(results) == acts


def test_suspect_error_and_fail_hold_whatever_on_inconclusive_says():
    continuing = Rules(on_inconclusive=Inconclusive.CONTINUE)
    assert steps([N, S, N, E, N, F, P], rules=continuing) == [GO, HOLD, GO, HOLD, GO, HOLD, GO]


def test_errors_beyond_the_limit_roll_back_under_on_error_rollback_or_hold_loudly():
    rolling = Rules(max_errors_in_a_row=3, on_error=OnError.ROLLBACK)
    assert steps([E, E, E], rules=rolling) == [HOLD, HOLD, BACK]
    memory = Memory()
    alarms = []
    for i in range(4):
        memory, done = step(memory, verdict(E), RAMPING, RULES, float(i))
        alarms.append((done.act, done.alarm, memory.errors))
    assert alarms == [(HOLD, False, 1), (HOLD, True, 2), (HOLD, True, 3), (HOLD, True, 4)]
    assert done.reason == "4 verdicts in a row could not be measured: held (on_error: hold)"


def test_nothing_holds_a_ramp_without_candidate_traffic():
    empty = Ramp(RUN, State.PENDING, 0.0)
    assert steps([N, S, E, F], ramp=empty) == [GO, GO, GO, GO]
    assert steps([F, F, F], ramp=empty) == [GO, GO, BACK]  # (a rollback is still a rollback)


def test_promotion_after_a_passing_streak_at_the_max_and_what_ends_it():
    at_max = Ramp(RUN, State.COMPLETE, 1.0)
    rules = Rules(promote_after=30.0)
    memory = Memory()
    for at, result, act in [
        (0.0, P, GO),  # the streak begins
        (10.0, N, HOLD),  # inconclusive neither counts nor ends it
        (20.0, P, GO),
        (30.0, P, Act.PROMOTE),  # 30 s since it began
    ]:
        memory, done = step(memory, verdict(result), at_max, rules, at)
        assert done.act is act, at
    for breaker in (F, S, E):
        memory, _ = step(Memory(), verdict(P), at_max, rules, 0.0)
        memory, _ = step(memory, verdict(breaker), at_max, rules, 10.0)
        assert memory.passing_since is None, breaker
    ramping, _ = step(Memory(), verdict(P), RAMPING, rules, 0.0)  # not at the max: no streak
    assert ramping.passing_since is None


def test_memory_belongs_to_one_run():
    memory = Memory()
    for i in range(2):
        memory, _ = step(memory, verdict(F), RAMPING, RULES, float(i))
    assert memory.failures == 2
    next_run = Ramp("http://c#salt@2", State.RAMPING, 0.1)
    memory, done = step(memory, verdict(F), next_run, RULES, 3.0)
    assert (memory.run, memory.failures, done.act) == ("http://c#salt@2", 1, HOLD)


PROXY = Path(__file__).resolve().parents[2]


def _sources() -> list[Path]:
    return [
        path
        for folder in ("proxy", "loadtests", "tests")
        for path in (PROXY / folder).rglob("*.py")
        if "mutants" not in path.parts
    ]


def test_no_copy_of_the_policy_reads_its_rules():
    """Only the policy compares a count with `failures_before_rollback` or
    `max_errors_in_a_row`, or decides on `on_inconclusive` / `on_error`: the loop, selftest and
    every simulation step `policy.step` (a copy would measure figures of rules that do not run)."""
    rules = {"failures_before_rollback", "max_errors_in_a_row", "on_inconclusive", "on_error"}
    found = []
    for path in _sources():
        if path.name in ("policy.py", "test_policy.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Compare | ast.If | ast.IfExp | ast.BoolOp):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Attribute) and inner.attr in rules:
                    found.append(f"{path.relative_to(PROXY)}:{node.lineno}: {inner.attr}")
    assert found == []


def _imports(path: Path) -> set[str]:
    """The project modules `path` imports when it runs (not those for type checking only)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("proxy.")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle in `graph`, if it has one."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for after in sorted(graph.get(node, ())):
            if state.get(after) == 1:
                return [*path[path.index(after) :], after]
            if after not in state and (found := visit(after)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_circle_between_modules_or_packages():
    modules = {}
    for path in (PROXY / "proxy").rglob("*.py"):
        parts = path.relative_to(PROXY).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = _imports(path)
    assert _cycle(modules) is None
    packages: dict[str, set[str]] = {}
    for module, imported in modules.items():
        home = ".".join(module.split(".")[:2])
        packages.setdefault(home, set()).update(".".join(name.split(".")[:2]) for name in imported)
    for home, imported in packages.items():
        imported.discard(home)
    assert _cycle(packages) is None, "analysis, rollout and fleet must not import in a circle"
