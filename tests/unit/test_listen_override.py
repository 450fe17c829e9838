"""`grayscale serve --listen/--admin-listen`: addresses in place of the file's, kept with the
config so that a reload reads the file the same way."""

from __future__ import annotations

import pytest

from proxy.cli import build_parser
from proxy.config.loader import ConfigError, load_config, parse_config
from proxy.config.model import Listen, LoadOptions
from proxy.config.values import parse_listen

FILE = """\
server: {listen: "127.0.0.1:8080", admin_listen: "127.0.0.1:9901", max_body_bytes: 7}
routes:
  - name: r
    match: {path_prefix: /r}
    stable: {url: "http://127.0.0.1:1"}
    candidate: {url: "http://127.0.0.1:2"}
    cohort: {keys: ["header:X-User-Id"]}
"""


def test_the_options_addresses_replace_the_files_and_the_rest_stays():
    options = LoadOptions(listen=Listen("::1", 0), admin_listen=Listen("0.0.0.0", 9))
    config = parse_config(FILE, "f.yaml", options)
    assert config.server.listen == Listen("::1", 0)
    assert config.server.admin_listen == Listen("0.0.0.0", 9)
    assert config.server.max_body_bytes == 7
    assert config.options == options


def test_one_address_alone_leaves_the_other_as_the_file_says():
    config = parse_config(FILE, "f.yaml", LoadOptions(listen=Listen("127.0.0.1", 18080)))
    assert config.server.listen == Listen("127.0.0.1", 18080)
    assert config.server.admin_listen == Listen("127.0.0.1", 9901)


def test_the_file_is_checked_whole_whatever_the_options():
    bad = FILE.replace('"127.0.0.1:8080"', '"8080"')
    with pytest.raises(ConfigError) as info:
        parse_config(bad, "f.yaml", LoadOptions(listen=Listen("127.0.0.1", 0)))
    assert [str(issue) for issue in info.value.issues] == [
        "f.yaml:1: server.listen: expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
    ]


def test_reading_the_file_again_with_its_options_gives_the_same_config(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text(FILE)
    first = load_config(path, LoadOptions(True, Listen("127.0.0.1", 0), None))
    again = load_config(first.source, first.options)
    assert again == first and again.options == first.options
    assert again.server.listen == Listen("127.0.0.1", 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", Listen("127.0.0.1", 8080)),
        ("[::1]:0", Listen("::1", 0)),
        ("localhost:65535", Listen("localhost", 65535)),
        ("8080", None),
        (":8080", None),
        ("h:65536", None),
        ("h:-1", None),
        ("h:²", None),  # (a digit to str.isdigit, not to int)
        ("h:٣", None),
    ],
)
def test_listen_addresses(text: str, expected: Listen | None):
    assert parse_listen(text) == expected


def test_a_port_in_other_digits_is_a_config_error():
    with pytest.raises(ConfigError, match=r"f.yaml:1: server.listen: expected HOST:PORT"):
        parse_config(FILE.replace("127.0.0.1:8080", "127.0.0.1:²"), "f.yaml")


def test_the_command_line_reads_addresses_and_expand_env():
    given = "serve -c f.yaml --expand-env --listen [::1]:8080 --admin-listen 0.0.0.0:0"
    args = build_parser().parse_args(given.split())
    assert (args.expand_env, args.listen, args.admin_listen) == (
        True,
        Listen("::1", 8080),
        Listen("0.0.0.0", 0),
    )
    plain = build_parser().parse_args(["serve", "-c", "f.yaml"])
    assert (plain.expand_env, plain.listen, plain.admin_listen) == (False, None, None)
    for command in (["check", "f.yaml"], ["simulate", "-c", "f"], ["selftest", "--config", "f"]):
        assert build_parser().parse_args([*command, "--expand-env"]).expand_env


def test_a_bad_address_on_the_command_line_is_refused(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "-c", "f.yaml", "--admin-listen", "9901"])
    assert info.value.code == 2
    assert (
        "argument --admin-listen: expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
        in capsys.readouterr().err
    )
