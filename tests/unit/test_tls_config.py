"""TLS in the config: the listeners' `server.tls` and `server.admin_tls`, the upstreams' client
certificates and server names; each file checked at load, each error with its line and field."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from proxy.config.loader import ConfigError, parse_config
from proxy.config.model import ListenerTls, TlsVersion, Upstream
from tests.support.certificates import Authority, Pem

ROUTE = """\
routes:
  - name: r
    match: {path_prefix: /}
    stable: {url: "https://127.0.0.1:1"%s}
    candidate: {url: "http://127.0.0.1:2"}
    cohort: {keys: ["header:X-User-Id"]}
"""


@pytest.fixture
def pems(tmp_path: Path) -> tuple[Authority, Pem, Pem]:
    """An authority and two certificates it issued."""
    authority = Authority(tmp_path)
    return authority, authority.issue(), authority.issue("model.internal")


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.yaml")
    return [str(issue) for issue in info.value.issues]


def server(fields: str) -> str:
    return f"server:\n{fields}" + ROUTE % ""


def test_listener_tls_is_read_with_its_default_minimum_version(pems):
    _, pem, other = pems
    config = parse_config(
        server(
            f"  tls: {{cert_file: {pem.cert}, key_file: {pem.key}}}\n"
            f"  admin_tls: {{cert_file: {other.cert}, key_file: {other.key}, min_version: 1.3}}\n"
        )
    )
    assert config.server.tls == ListenerTls(str(pem.cert), str(pem.key), TlsVersion.TLS_1_2)
    assert config.server.admin_tls == ListenerTls(
        str(other.cert), str(other.key), TlsVersion.TLS_1_3
    )
    assert parse_config(ROUTE % "").server.tls is None


def test_min_version_is_1_2_or_1_3_written_either_way(pems):
    _, pem, _ = pems
    for written, version in (("1.3", "1.3"), ('"1.2"', "1.2")):
        tls = f"  tls: {{cert_file: {pem.cert}, key_file: {pem.key}, min_version: {written}}}\n"
        assert parse_config(server(tls)).server.tls.min_version == TlsVersion(version)
    for wrong in ("1.1", "1.0", "1", "tls1.3", "[1.3]"):
        tls = f"  tls: {{cert_file: {pem.cert}, key_file: {pem.key}, min_version: {wrong}}}\n"
        assert errors(server(tls)) == [
            "test.yaml:2: server.tls.min_version: expected one of: 1.2, 1.3"
        ]


def test_a_key_that_does_not_match_its_certificate_is_an_error_at_the_key(pems):
    _, pem, other = pems
    found = errors(server(f"  tls:\n    cert_file: {pem.cert}\n    key_file: {other.key}\n"))
    assert found == [
        f"test.yaml:4: server.tls.key_file: this key does not match the certificate in {pem.cert}"
    ]


def test_files_missing_unreadable_or_not_pem_are_errors_at_their_field(pems, tmp_path):
    _, pem, _ = pems
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    assert errors(server(f"  admin_tls:\n    cert_file: {missing}\n    key_file: {pem.key}\n")) == [
        f"test.yaml:3: server.admin_tls.cert_file: no such file: {missing}"
    ]
    assert errors(server(f"  tls:\n    cert_file: {junk}\n    key_file: {pem.key}\n")) == [
        f"test.yaml:3: server.tls.cert_file: not a PEM certificate chain: {junk}"
    ]
    assert errors(server(f"  tls:\n    cert_file: {pem.cert}\n    key_file: {junk}\n")) == [
        "test.yaml:4: server.tls.key_file: not a PEM private key (or one protected by a "
        f"passphrase): {junk}"
    ]
    assert errors(server(f"  tls: {{cert_file: {pem.cert}}}\n")) == [
        "test.yaml:2: server.tls.key_file: missing required field"
    ]


def test_a_key_protected_by_a_passphrase_is_refused_without_asking_for_it(pems, tmp_path):
    _, pem, _ = pems
    locked = tmp_path / "locked.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pem.key), "-aes256", "-passout", "pass:x", "-out", locked],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    (found,) = errors(server(f"  tls: {{cert_file: {pem.cert}, key_file: {locked}}}\n"))
    assert "server.tls.key_file: not a PEM private key (or one protected by a passphrase)" in found


def test_an_upstream_takes_a_client_certificate_and_a_server_name(pems):
    authority, pem, _ = pems
    fields = (
        f", ca_file: {authority.ca_file}, client_cert_file: {pem.cert}, "
        f"client_key_file: {pem.key}, server_name: model.internal"
    )
    stable = parse_config(ROUTE % fields).routes[0].stable
    assert (stable.client_cert_file, stable.client_key_file, stable.server_name) == (
        str(pem.cert),
        str(pem.key),
        "model.internal",
    )
    assert (
        parse_config(ROUTE % ", server_name: 10.0.0.7").routes[0].stable.server_name == "10.0.0.7"
    )
    bare = parse_config(ROUTE % "").routes[0].stable
    assert bare == Upstream("https://127.0.0.1:1", timeout=bare.timeout)


def test_a_client_certificate_needs_its_key_and_an_https_upstream(pems):
    _, pem, other = pems
    assert errors(ROUTE % f", client_cert_file: {pem.cert}") == [
        "test.yaml:4: routes[0].stable.client_key_file: needed with client_cert_file"
    ]
    assert errors(ROUTE % f", client_key_file: {pem.key}") == [
        "test.yaml:4: routes[0].stable.client_cert_file: needed with client_key_file"
    ]
    assert errors(ROUTE % f", client_cert_file: {pem.cert}, client_key_file: {other.key}") == [
        "test.yaml:4: routes[0].stable.client_key_file: this key does not match the "
        f"certificate in {pem.cert}"
    ]
    plain = (ROUTE % "").replace(
        'candidate: {url: "http://127.0.0.1:2"}',
        'candidate: {url: "http://127.0.0.1:2", server_name: model.internal}',
    )
    assert errors(plain) == [
        "test.yaml:5: routes[0].candidate.server_name: only for an https:// url"
    ]


def test_a_server_name_is_a_host_name_or_an_ip_address():
    for wrong in ('"model internal"', "-model", "model..internal", '"a/b"'):
        assert errors(ROUTE % f", server_name: {wrong}") == [
            "test.yaml:4: routes[0].stable.server_name: expected a host name like "
            "model.internal, or an IP address"
        ]
