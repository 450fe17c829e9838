"""`${NAME}` in config values with `--expand-env`: substituted from the environment, read as the
field's type, and every problem named by file, line, field and variable."""

from __future__ import annotations

import textwrap

import pytest

from proxy.config.environment import FORMS, substitute
from proxy.config.loader import ConfigError, parse_config
from proxy.config.model import Config, Listen, LoadOptions

EXPAND = LoadOptions(expand_env=True)
ROUTE = """\
routes:
  - name: r
    match: {path_prefix: /r}
    stable: {url: "http://127.0.0.1:1"}
    candidate: {url: "http://127.0.0.1:2"}
    cohort: {keys: ["header:X-User-Id"], salt: SALT}
"""


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """GS_PORT=8081, GS_EMPTY set but empty, GS_UNSET and GS_OTHER unset."""
    monkeypatch.setenv("GS_PORT", "8081")
    monkeypatch.setenv("GS_EMPTY", "")
    monkeypatch.delenv("GS_UNSET", raising=False)
    monkeypatch.delenv("GS_OTHER", raising=False)


def expanded(text: str) -> Config:
    return parse_config(textwrap.dedent(text), "test.yaml", EXPAND)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        expanded(text)
    return [str(issue) for issue in info.value.issues]


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("${GS_PORT}", "8081"),
        ("a-${GS_PORT}-b", "a-8081-b"),
        ("${GS_UNSET:-fallback}", "fallback"),
        ("${GS_EMPTY:-fallback}", "fallback"),  # (as in the shell: unset or empty)
        ("${GS_PORT:-fallback}", "8081"),
        ("x${GS_EMPTY}y", "xy"),
        ("${GS_UNSET:-}x", "x"),
        ("$$", "$"),
        ("a$$b", "a$b"),
        ("$${GS_PORT}", "${GS_PORT}"),  # a dollar, then text
        ("$$$${GS_PORT}", "$${GS_PORT}"),
        ("$$${GS_PORT}", "$8081"),
        ("no dollar", "no dollar"),
    ],
)
def test_substitution(written: str, expected: str):
    assert substitute(written, {"GS_PORT": "8081", "GS_EMPTY": ""}) == (expected, [])


def test_the_text_a_variable_brings_is_not_substituted_again():
    assert substitute("${A}", {"A": "${B}$$", "B": "no"}) == ("${B}$$", [])


@pytest.mark.parametrize("written", ["$", "cost: 5$", "$GS_PORT", "${GS_PORT", "${1X}", "${A-b}"])
def test_a_dollar_that_starts_nothing_known_is_a_problem(written: str):
    text, problems = substitute(written, {"GS_PORT": "8081"})
    assert text == written
    assert len(problems) == 1 and problems[0].endswith(FORMS), problems


def test_values_take_their_fields_type_after_substitution(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GS_BYTES", "2048")
    monkeypatch.setenv("GS_SHARE", "0.25")
    monkeypatch.setenv("GS_YES", "true")
    monkeypatch.setenv("GS_TIMEOUT", "30s")
    config = expanded(
        """\
        server:
          listen: 127.0.0.1:${GS_PORT}
          max_body_bytes: ${GS_BYTES}
        admin: {protect_reads: "${GS_YES}"}
        routes:
          - name: r
            match: {path_prefix: /r}
            stable: {url: "http://127.0.0.1:${GS_PORT}", timeout: "${GS_TIMEOUT}"}
            candidate: {url: "http://127.0.0.1:2"}
            cohort: {keys: ["header:X-User-Id"]}
            ramp: {base: "${GS_SHARE}"}
        """
    )
    assert config.server.listen == Listen("127.0.0.1", 8081)
    assert config.server.max_body_bytes == 2048
    assert config.admin.protect_reads is True  # (quoted in a {...} mapping: a boolean all the same)
    route = config.routes[0]
    assert (route.stable.url, route.stable.timeout) == ("http://127.0.0.1:8081", 30.0)
    assert route.ramp.base == 0.25


@pytest.mark.parametrize("value", ["0123", "yes", "1.50", "~", "2026-12-01", "[a, b]", "a: b"])
def test_a_text_field_takes_the_text_as_it_is(monkeypatch: pytest.MonkeyPatch, value: str):
    monkeypatch.setenv("GS_SALT", value)
    quoted = ROUTE.replace("salt: SALT", 'salt: "${GS_SALT}"')
    assert expanded(quoted).routes[0].cohort.salt == value
    plain = ROUTE.replace(
        'cohort: {keys: ["header:X-User-Id"], salt: SALT}',
        'cohort:\n      keys: ["header:X-User-Id"]\n      salt: ${GS_SALT}',
    )
    assert expanded(plain).routes[0].cohort.salt == value


def test_a_substituted_value_of_the_wrong_type_is_an_error_at_its_field(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("GS_BYTES", "lots")
    found = errors("server:\n  max_body_bytes: ${GS_BYTES}\n" + ROUTE)
    assert found == ["test.yaml:2: server.max_body_bytes: expected a whole number of at least 1"]


def test_an_unset_variable_names_file_line_field_and_variable_and_nothing_else():
    found = errors(
        'server: {listen: "127.0.0.1:${GS_UNSET}"}\n'
        + ROUTE.replace("http://127.0.0.1:2", "${GS_OTHER}")
        + "    segments:\n"
        + '      - {name: s, when: {"header:X-Region": [eu, "${GS_UNSET}"]}, variant: stable}\n'
    )
    assert found == [
        "test.yaml:1: server.listen: environment variable GS_UNSET is not set (or give a "
        "default: ${GS_UNSET:-default})",
        "test.yaml:6: routes[0].candidate.url: environment variable GS_OTHER is not set (or give "
        "a default: ${GS_OTHER:-default})",
        'test.yaml:9: routes[0].segments[0].when["header:X-Region"][1]: environment variable '
        "GS_UNSET is not set (or give a default: ${GS_UNSET:-default})",
    ]


def test_every_problem_of_a_value_is_named_once_each(monkeypatch: pytest.MonkeyPatch):
    found = errors(ROUTE.replace("salt: SALT", 'salt: "${GS_UNSET}-$HOME-${GS_OTHER}"'))
    assert found == [
        "test.yaml:6: routes[0].cohort.salt: environment variable GS_UNSET is not set (or give a "
        "default: ${GS_UNSET:-default})",
        f"test.yaml:6: routes[0].cohort.salt: unexpected '$HOME': {FORMS}",
        "test.yaml:6: routes[0].cohort.salt: environment variable GS_OTHER is not set (or give a "
        "default: ${GS_OTHER:-default})",
    ]


def test_a_variable_set_but_empty_is_empty():
    (found,) = errors(ROUTE.replace("salt: SALT", 'salt: "${GS_EMPTY}"'))
    assert found == "test.yaml:6: routes[0].cohort.salt: expected a non-empty string"


def test_field_names_are_never_substituted():
    found = errors(ROUTE + "${GS_PORT}: 1\n")
    assert found == [
        "test.yaml:7: ${GS_PORT}: unknown field (expected one of: server, admin, state, "
        "access_log, outcomes, routes)"
    ]


def test_without_expand_env_every_dollar_stays_as_written():
    text = ROUTE.replace("salt: SALT", 'salt: "$${GS_PORT}-${GS_UNSET}"')
    assert parse_config(text).routes[0].cohort.salt == "$${GS_PORT}-${GS_UNSET}"
    assert parse_config(text).options == LoadOptions()


def test_an_aliased_value_is_substituted_once_where_it_is_written():
    config = expanded(
        """\
        routes:
          - name: a
            match: {path_prefix: /a}
            stable: {url: "http://127.0.0.1:1"}
            candidate: {url: "http://127.0.0.1:2"}
            cohort: {keys: ["header:X-User-Id"], salt: &salt "a$$b"}
          - name: b
            match: {path_prefix: /b}
            stable: {url: "http://127.0.0.1:1"}
            candidate: {url: "http://127.0.0.1:2"}
            cohort: {keys: ["header:X-User-Id"], salt: *salt}
        """
    )
    assert [route.cohort.salt for route in config.routes] == ["a$b", "a$b"]


def test_an_alias_of_a_spoiled_value_used_as_a_field_name_is_still_reported():
    # (at the line of the value the alias names, as every alias's problems are)
    found = errors('server: {listen: &x "${GS_UNSET}"}\n*x : 1\n' + ROUTE)
    assert found == [
        "test.yaml:1: server.listen: environment variable GS_UNSET is not set (or give a "
        "default: ${GS_UNSET:-default})",
        "test.yaml:1: ${GS_UNSET}: unknown field (expected one of: server, admin, state, "
        "access_log, outcomes, routes)",
    ]
