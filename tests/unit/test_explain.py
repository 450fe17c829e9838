"""Verdicts in words."""

from __future__ import annotations

from typing import Any

from proxy.tools.explain import explain

FAILING: dict[str, Any] = {
    "at": 0.0,
    "result": "fail",
    "action": "rollback",
    "why": "3 failed verdicts in a row",
    "consecutive_failures": 3,
    "failures_before_rollback": 3,
    "checks": [
        {
            "check": "latency",
            "result": "pass",
            "threshold": 1.5,
            "observed": 1.1,
            "bound": 0.93,
            "upper": 1.31,
            "stable": {"requests": 790, "error_rate": 0.009, "latency_quantile_seconds": 0.042},
            "candidate": {"requests": 812, "error_rate": 0.113, "latency_quantile_seconds": 0.047},
            "note": "p95 within the ratio",
        },
        {
            "check": "error_rate",
            "result": "fail",
            "threshold": 0.01,
            "observed": 0.104,
            "bound": 0.064,
            "upper": 0.144,
            "stable": {"requests": 790, "error_rate": 0.009},
            "candidate": {"requests": 812, "error_rate": 0.113},
            "note": "candidate error rate is higher than allowed",
        },
        {
            "check": "outcome:click",
            "result": "inconclusive",
            "threshold": 0.02,
            "observed": None,
            "bound": None,
            "stable": {"requests": 790, "mean": None},
            "candidate": {"requests": 812, "mean": None},
            "note": "fewer than 200 requests per variant in the window",
        },
    ],
}


def test_a_rollback_is_told_with_its_numbers_failing_check_first():
    assert explain(FAILING) == "\n".join(
        [
            "fail, rolled back (3 failed verdicts in a row):",
            "  fail: candidate error rate 11.3 %, stable 0.9 %; the difference is between "
            "6.4 points and 14.4 points (allowed: 1.0 points) after 812 and 790 requests: proven "
            "worse than allowed",
            "  inconclusive: click: candidate mean ?, stable ?; fewer than 200 requests per "
            "variant in the window",
            "  pass: latency 47 ms against stable's 42 ms; their ratio is between 0.93 and 1.31 "
            "(allowed: 1.50) after 812 and 790 requests: proven within the limit",
        ]
    )


def test_a_pass_and_a_thin_window_in_words():
    passing = FAILING | {
        "result": "pass",
        "action": "continue",
        "why": "passed",
        "checks": FAILING["checks"][:1],
    }
    assert explain(passing).startswith("pass, the ramp goes on (passed):\n  pass: latency 47 ms")
    thin = {
        "check": "error_rate",
        "result": "inconclusive",
        "threshold": 0.01,
        "observed": None,
        "bound": None,
        "stable": {"requests": 20, "error_rate": 0.0},
        "candidate": {"requests": 3, "error_rate": None},
        "note": "fewer than 200 requests per variant in the window",
    }
    held = {"result": "inconclusive", "action": "hold", "checks": [thin]}
    assert explain(held) == (
        "inconclusive, the ramp held:\n  inconclusive: candidate error rate ?, stable 0.0 %; "
        "fewer than 200 requests per variant in the window"
    )


def test_a_sample_ratio_mismatch_in_words():
    check = {
        "check": "sample_ratio",
        "result": "fail",
        "threshold": 0.001,
        "observed": 0.15,
        "bound": 1.4e-7,
        "stable": {"requests": 850, "assigned": 850, "expected": 900.0},
        "candidate": {"requests": 150, "assigned": 150, "expected": 100.0},
        "note": "",
    }
    record = {
        "result": "error",
        "action": "hold",
        "note": "the split is broken (sample ratio): nothing measured can be trusted",
        "checks": [check],
    }
    assert explain(record) == (
        "error, the ramp held:\n  the split is broken (sample ratio): nothing measured can be "
        "trusted\n  fail: sample ratio: the candidate served 150 of 1000 "
        "randomly assigned requests, 100.0 expected (p = 1.4e-07, a mismatch below 0.001)"
    )


def test_a_metric_check_is_told_with_both_values_and_its_limit():
    record = FAILING | {
        "checks": [
            {
                "check": "metric:gpu_memory",
                "result": "fail",
                "threshold": 1.2,
                "observed": 1.5,
                "bound": 1.5,
                "stable": {"query": "s", "value": 4.0e9, "problem": None},
                "candidate": {"query": "c", "value": 6.0e9, "problem": None},
                "note": "candidate / stable = 1.5 is above max_ratio 1.2",
            },
            {
                "check": "metric:quality",
                "result": "inconclusive",
                "threshold": 0.9,
                "observed": None,
                "bound": None,
                "stable": {"query": "s", "value": 0.93, "problem": None},
                "candidate": {"query": "c", "value": None, "problem": "no data"},
                "note": "no candidate value (no data)",
            },
        ]
    }
    assert explain(record) == "\n".join(
        [
            "fail, rolled back (3 failed verdicts in a row):",
            "  fail: gpu_memory: candidate 6e+09, stable 4e+09; "
            "candidate / stable = 1.5 is above max_ratio 1.2",
            "  inconclusive: quality: candidate ?, stable 0.93; no candidate value (no data)",
        ]
    )


def test_a_failure_found_in_the_current_epoch_says_so():
    error = FAILING["checks"][1] | {"scope": "recent"}
    record = FAILING | {"checks": [error]}
    assert explain(record).splitlines()[1] == (
        "  fail: candidate error rate 11.3 %, stable 0.9 %; the difference is between 6.4 points "
        "and 14.4 points (allowed: 1.0 points) after 812 and 790 requests of the current epoch (a "
        "change the counts since the start would dilute): proven worse than allowed"
    )


def test_a_checks_share_of_the_error_rate_is_told_when_the_verdict_says_it():
    check = {**FAILING["checks"][1], "alpha": 0.00625}
    told = explain({**FAILING, "checks": [check]})
    assert told.endswith(
        "(allowed: 1.0 points) after 812 and 790 requests, at an error rate of 0.0063 (its share "
        "of the route's): proven worse than allowed"
    ), told


def test_every_word_is_told_with_what_it_means():
    base = FAILING["checks"][1]
    for word, meaning in (
        ("fail", "proven worse than allowed"),
        ("pass", "proven within the limit"),
        ("suspect", "looks worse than allowed, not yet proven: the ramp holds"),
        ("inconclusive", "not yet known"),
    ):
        told = explain({"result": word, "checks": [base | {"result": word}]})
        assert told.startswith(f"{word}:\n  {word}: candidate error rate") and told.endswith(
            f": {meaning}"
        )
    unmeasured = {
        "result": "error",
        "action": "hold",
        "why": "could not be measured (1 of 4)",
        "note": "cannot read the observations: the fleet's store: ConnectionError",
        "checks": [],
    }
    assert explain(unmeasured) == (
        "error, the ramp held (could not be measured (1 of 4)):\n"
        "  cannot read the observations: the fleet's store: ConnectionError"
    )
