"""The command line's admin client: the status table's layout, and where the token may go."""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from proxy.api.admin_client import AdminError, call, status_table
from proxy.cli import build_parser


def route(name: str, reason: str | None, actor: str = "token:0123456789ab") -> dict[str, Any]:
    return {
        "name": name,
        "state": "rolled_back",
        "share": 0.0390,
        "requests": {"stable": {"2xx": 12345}, "candidate": {"2xx": 7}},
        "error_rate": {"stable": 0.039, "candidate": None},
        "last_transition": {
            "action": "rollback",
            "actor": actor,
            "at": 1_796_083_200.0,
            "reason": reason,
        },
    }


def test_every_column_is_separated_and_aligned_with_long_values():
    table = status_table(
        {"routes": [route("a-very-long-route-name", "error_rate 0.2 > 0.01"), route("b", None)]}
    )
    assert table.splitlines() == [
        "ROUTE                   STATE        SHARE  STABLE  ERR   CANDIDATE  ERR  VERDICT  "
        "LAST CHANGE",
        "a-very-long-route-name  rolled_back  3.90%  12345   3.9%  7          -    -        "
        "rollback by token:0123456789ab at 2026-12-01 00:00:00Z (error_rate 0.2 > 0.01)",
        "b                       rolled_back  3.90%  12345   3.9%  7          -    -        "
        "rollback by token:0123456789ab at 2026-12-01 00:00:00Z",
    ]


def test_the_verdict_column_says_the_word_what_followed_and_an_alarm():
    suspect = route("r", None) | {
        "analysis": {"last_verdict": {"result": "suspect"}, "action": "hold", "alarm": False}
    }
    unmeasured = route("u", None) | {
        "analysis": {
            "last_verdict": {"result": "error"},
            "action": "hold",
            "alarm": True,
            "errors_in_a_row": 6,
        }
    }
    rows = status_table({"routes": [suspect, unmeasured]}).splitlines()
    assert "  suspect, hold  " in rows[1]
    assert "  error, hold (ALARM: 6 errors in a row)  " in rows[2]


def test_a_fleet_route_shows_the_pooled_counts_with_this_replicas_beside_them():
    counts = {
        "at": 1_796_083_200.0,
        "pooled": True,
        "stable": {"requests": 40000, "errors": 400},
        "candidate": {"requests": 2000, "errors": 300},
    }
    fleet = route("f", None) | {"analysis": {"counts": counts}}
    alone = route("a", None) | {"analysis": {"counts": counts | {"pooled": False}}}
    rows = status_table({"routes": [fleet, alone]}).splitlines()
    assert "  40000 (here 12345)  1.0% (3.9%)  2000 (here 7)  15.0% (-)  " in rows[1], rows
    assert "  12345               3.9%         7              -  " in rows[2], rows
    assert rows[3].startswith("(counts: the analysis window over every replica"), rows
    assert len(status_table({"routes": [alone]}).splitlines()) == 2  # (no note without a fleet)


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-format", "json", "--log-level", "debug", "check", "x.yaml"],
        ["check", "--log-format", "json", "--log-level", "debug", "x.yaml"],
        ["--log-format", "text", "check", "--log-format", "json", "--log-level", "debug", "x.yaml"],
    ],
)
def test_log_options_go_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert (args.log_format, args.log_level, args.files) == ("json", "debug", ["x.yaml"])


def test_log_options_have_defaults():
    args = build_parser().parse_args(["check", "x.yaml"])
    assert (args.log_format, args.log_level) == ("text", "info")


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Redirects /status to another origin, and notes every Authorization it sees."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        if self.path == "/status":
            self.send_response(307)
            port = self.headers.get("Host", "").rpartition(":")[2]
            self.send_header("Location", f"http://localhost:{port}/x")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def admin_api() -> Iterator[str]:
    _Recorder.seen = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_redirect_is_not_followed_and_the_token_not_sent_again(admin_api):
    with pytest.raises(AdminError, match=r"307: redirected to .*; not followed"):
        call(admin_api, "GET", "/status", token="secret")
    assert _Recorder.seen == ["Bearer secret"]


def test_no_proxy_is_used_for_a_loopback_admin_api(admin_api, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setattr(urllib.request, "_opener", None)  # as in a new process: env read anew
    assert call(admin_api, "GET", "/ok", token="secret") == {"ok": True}
