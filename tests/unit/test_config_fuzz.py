"""Generated YAML never crashes the loader with anything but a config error."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config.loader import AS_WRITTEN, ConfigError, parse_config
from proxy.config.model import Config, LoadOptions

FIELDS = [
    "server",
    "listen",
    "admin_listen",
    "trusted_proxies",
    "max_body_bytes",
    "routes",
    "name",
    "match",
    "path_prefix",
    "stable",
    "candidate",
    "url",
    "timeout",
    "connect_timeout",
    "cohort",
    "keys",
    "salt",
    "missing",
    "ramp",
    "start",
    "base",
    "slope",
    "per",
    "max",
    "segments",
    "when",
    "unless",
    "variant",
    "analysis",
    "interval",
    "window",
    "min_requests",
    "state",
    "backend",
    "path",
    "admin",
    "token_env",
    "access_log",
    "sample",
    "fallback",
    "ejection",
    "header:X-User-Id",
    "client_ip",
    "user_id",
    "on_rollback",
    "webhook",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "1d",
            "30s",
            "http://127.0.0.1:9",
            "/v1",
            "stable",
            "10.0.0.0/8",
            "header:X",
            "2026-12-01T00:00:00Z",
        ]
    ),
)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


# Values for `--expand-env`: set, unset and defaulted variables, dollars, and broken references.
expanding_scalars = st.one_of(
    scalars,
    st.sampled_from(
        ["${PATH}", "${GRAYSCALE_FUZZ_UNSET}", "${GRAYSCALE_FUZZ_UNSET:-7}", "$$", "$", "${x"]
    ),
    st.text(alphabet="${}:-_aZ09. ", max_size=12),
)
expanding_documents = st.recursive(
    expanding_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)
EXPAND = LoadOptions(expand_env=True)


def check(text: str, options: LoadOptions = AS_WRITTEN) -> None:
    try:
        assert isinstance(parse_config(text, "fuzz.yaml", options), Config)
    except ConfigError as exc:
        assert exc.issues and all(issue.file == "fuzz.yaml" for issue in exc.issues)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents)
def test_generated_documents(document: object) -> None:
    check(yaml.safe_dump(document))


@settings(max_examples=150, deadline=None)
@given(document=st.dictionaries(st.just("routes"), st.lists(documents, max_size=3), min_size=1))
def test_generated_routes(document: object) -> None:
    check(yaml.safe_dump(document))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    check(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=expanding_documents)
def test_generated_documents_with_environment_substitution(document: object) -> None:
    check(yaml.safe_dump(document), EXPAND)


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="${}:-_aZ09. \n&*!|'\"[],#", max_size=200))
def test_arbitrary_text_with_environment_substitution(text: str) -> None:
    check(text, EXPAND)
