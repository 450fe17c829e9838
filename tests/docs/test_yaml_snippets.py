"""Every YAML snippet of README.md and docs/*.md loads with Grayscale's own loader, and every
table of defaults says what the loader does.

Every fenced block carries a label: `yaml`, `yaml expand-env`, `yaml invalid`, `sh` or `text`.

A `yaml` block is a Grayscale config, whole or a piece of one, and is parsed as written by
`proxy.config.loader.parse_config`, so the loader's own rules (unknown fields, repeated keys,
values) apply to it:

- a block with `routes` is a whole config and is parsed as it stands;
- a block whose keys are all top-level fields (`server`, `state`, `admin`, `access_log`,
  `outcomes`) is a piece of the top level, appended to a config of one minimal route;
- a block whose keys are all route fields (`analysis`, `shadow`, `on_rollback`, ...) is a piece
  of a route, indented into that minimal route, which then brings only the required fields the
  piece leaves out (`name`, `match`, `stable`, `candidate`, `cohort`).

A `yaml expand-env` block is a config written for `--expand-env` (`${NAME}`,
`${NAME:-default}`, `$$`): it is completed as a `yaml` block is and parsed with substitution on
(`LoadOptions(expand_env=True)`), in the environment `SNIPPET_ENVIRONMENT` below: its variables
are set, and every other variable the block names is unset, so that a default it gives is what
is read. It must name at least one variable (else it is a `yaml` block).

A `yaml invalid` block is a config the loader must refuse, and the `text` block right after it
shows `$ grayscale check NAME` and then exactly the loader's errors for it read as file NAME. The
command may give `--expand-env` and set variables before it (`$ PORT=80 grayscale check
--expand-env NAME`): the block is then read so, those variables set and every other it names
unset.

A table headed `| field | default | meaning |` or `| setting | default | what it does |` states
defaults: on each row whose field is one dotted name and whose default is one literal in
backticks, setting the field to that literal in the minimal config must change nothing.
"""

from __future__ import annotations

import copy
import textwrap
from typing import Any

import pytest
import yaml

from proxy.config.loader import ConfigError, parse_config
from proxy.config.model import LoadOptions
from tests.docs.configs import check_command, use_environment, variables
from tests.support.markdown_pages import PAGES, Block, blocks, tables

LABELS = {"yaml", "yaml expand-env", "yaml invalid", "sh", "text"}
# The environment a `yaml expand-env` block is read in (every other variable it names: unset).
SNIPPET_ENVIRONMENT = {"REDIS_HOST": "redis.internal", "GRAYSCALE_REPLICA": "a"}
TOP_LEVEL = {"server", "state", "admin", "access_log", "outcomes"}
ROUTE_FIELDS = {
    "name",
    "match",
    "stable",
    "candidate",
    "cohort",
    "ramp",
    "segments",
    "analysis",
    "on_rollback",
    "promote",
    "on_promote",
    "shadow",
    "fallback",
    "ejection",
}
MINIMAL_ROUTE = {
    "name": "name: docs",
    "match": "match: {path_prefix: /}",
    "stable": 'stable: {url: "http://127.0.0.1:9001"}',
    "candidate": 'candidate: {url: "http://127.0.0.1:9002"}',
    "cohort": 'cohort: {keys: ["header:X-User-Id"]}',
}
# What a route needs around a field that cannot stand alone, by the field's prefix.
CONTEXT: dict[str, dict[str, Any]] = {
    "routes[].analysis.prometheus.": {
        "analysis": {
            "prometheus": {"url": "http://127.0.0.1:9090"},
            "metrics": [{"name": "up", "query": "up", "max": 1}],
        }
    },
    "routes[].on_rollback.": {"on_rollback": {"webhook": "http://127.0.0.1:1/hook"}},
    "routes[].on_promote.": {"on_promote": {"webhook": "http://127.0.0.1:1/hook"}},
}
DEFAULTS_HEADERS = (["field", "default", "meaning"], ["setting", "default", "what it does"])

BLOCKS = [block for page in PAGES for block in blocks(page)]


def of_label(label: str) -> list[Block]:
    return [block for block in BLOCKS if block.label == label]


def minimal_route(leave_out: set[str]) -> str:
    lines = [line for field, line in MINIMAL_ROUTE.items() if field not in leave_out]
    return "routes:\n  - " + "\n    ".join(lines) + "\n"


def completed(block: Block) -> str:
    """The block as a whole config (see the module's text)."""
    document = yaml.safe_load(block.text)
    assert isinstance(document, dict), f"{block.where()}: a config is a mapping"
    keys = set(document)
    if "routes" in keys:
        return block.text
    if keys <= TOP_LEVEL:
        return minimal_route(set()) + block.text
    if keys <= ROUTE_FIELDS:
        route = minimal_route(keys).rstrip("\n")
        return route + "\n" + textwrap.indent(block.text, "    ")
    pytest.fail(f"{block.where()}: neither a config, its top level nor a route: {sorted(keys)}")


def test_every_block_is_labelled():
    unlabelled = [
        f"{block.where()}: {block.label!r}" for block in BLOCKS if block.label not in LABELS
    ]
    assert not unlabelled, f"label every fenced block with one of {sorted(LABELS)}: {unlabelled}"


def test_the_pages_have_configs_of_every_kind():
    kinds = {frozenset(yaml.safe_load(block.text)) <= TOP_LEVEL for block in of_label("yaml")}
    assert len(of_label("yaml")) >= 10 and kinds == {True, False}


@pytest.mark.parametrize("block", of_label("yaml"), ids=Block.where)
def test_a_yaml_snippet_loads(block: Block):
    try:
        parse_config(completed(block), block.where())
    except ConfigError as exc:
        pytest.fail(f"{block.where()}: the loader refuses this snippet:\n{exc}")


@pytest.mark.parametrize("block", of_label("yaml expand-env"), ids=Block.where)
def test_an_expand_env_snippet_loads_with_the_environment_substituted(
    block: Block, monkeypatch: pytest.MonkeyPatch
):
    assert variables(block.text), f"{block.where()}: it names no variable: label it yaml"
    use_environment(monkeypatch, block.text, SNIPPET_ENVIRONMENT)
    try:
        parse_config(completed(block), block.where(), LoadOptions(expand_env=True))
    except ConfigError as exc:
        pytest.fail(f"{block.where()}: the loader refuses this snippet:\n{exc}")


@pytest.mark.parametrize("block", of_label("yaml invalid"), ids=Block.where)
def test_an_invalid_snippet_is_refused_with_the_errors_shown(
    block: Block, monkeypatch: pytest.MonkeyPatch
):
    following = BLOCKS[BLOCKS.index(block) + 1]
    assert following.label == "text", (
        f"{block.where()}: the errors shown must follow in a text block"
    )
    command = check_command(following)
    _, *shown = following.text.splitlines()
    assert command is not None, f"{following.where()}: open with $ grayscale check NAME"
    environ, args = command
    *flags, name = args
    assert set(flags) <= {"--expand-env"}, f"{following.where()}: check {flags} here"
    use_environment(monkeypatch, block.text, environ)
    with pytest.raises(ConfigError) as refused:
        parse_config(block.text, name, LoadOptions(expand_env="--expand-env" in flags))
    assert str(refused.value).splitlines() == shown


def defaults_rows() -> list[tuple[str, str, str]]:
    """(where, field, literal) of every row of a defaults table that states one literal."""
    rows = []
    for page in PAGES:
        for header, body in tables(page):
            if [cell.lower() for cell in header] not in DEFAULTS_HEADERS:
                continue
            for field, default, _ in body:
                if field.count("`") == 2 and default.count("`") == 2 and "," not in field:
                    rows.append((page.name, field.strip("`"), default.strip("`")))
    return rows


def with_field(dotted: str, value: Any | None) -> str:
    """The minimal config with `dotted` set to `value`, or (None) only its parents made."""
    route: dict[str, Any] = {
        "name": "docs",
        "match": {"path_prefix": "/"},
        "stable": {"url": "http://127.0.0.1:9001"},
        "candidate": {"url": "http://127.0.0.1:9002"},
        "cohort": {"keys": ["header:X-User-Id"]},
    }
    for prefix, context in CONTEXT.items():
        if dotted.startswith(prefix):
            route.update(copy.deepcopy(context))
    config: dict[str, Any] = {"routes": [route]}
    node = route if dotted.startswith("routes[].") else config
    *parents, leaf = dotted.removeprefix("routes[].").split(".")
    for name in parents:
        node = node.setdefault(name, {})
    if value is not None:
        node[leaf] = value
    return yaml.safe_dump(config, sort_keys=False)


@pytest.mark.parametrize(("where", "field", "literal"), defaults_rows())
def test_a_stated_default_is_the_loaders(where: str, field: str, literal: str):
    value = yaml.safe_load(literal)
    stated = parse_config(with_field(field, value), where)
    assert stated == parse_config(with_field(field, None), where), (
        f"{where}: {field}: {literal} is not the default"
    )


def test_the_defaults_tables_state_literals():
    pages = {where for where, _, _ in defaults_rows()}
    assert pages == {"README.md", "configuration.md"} and len(defaults_rows()) >= 20


def test_a_wrong_default_is_seen():
    """The check above can fail: a default that is not the loader's changes the config."""
    assert parse_config(with_field("routes[].ramp.per", "2d")) != parse_config(
        with_field("routes[].ramp.per", None)
    )
