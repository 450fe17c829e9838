"""Cookie headers as real browsers send them: one odd cookie never hides the others."""

from __future__ import annotations

import pytest

from proxy.http.cookies import parse_cookies


@pytest.mark.parametrize(
    ("header", "uid"),
    [
        ("uid=alice", "alice"),
        ('prefs={"x":1}; uid=alice', "alice"),  # a JSON value (SimpleCookie gave up on it)
        ('prefs={"a":1,"b":[2,3]}; uid=alice', "alice"),  # with commas
        (
            "_ga=GA1.2.1234567890.1600000000; _gid=GA1.2.987654321.1600000000; "
            "_fbp=fb.1.1600000000000.1234567890; uid=alice; _gat_UA-1234567-1=1",
            "alice",
        ),  # analytics cookies around it
        ("theme=dark mode; uid=alice", "alice"),  # a space in a value
        ("session; uid=alice", "alice"),  # a pair without '='
        ("=orphan; uid=alice", "alice"),  # an empty name
        ('uid="alice"', "alice"),  # quoted: the quotes are not part of the value
        ("  uid  =  alice  ;", "alice"),  # whitespace around
        ("uid=alice; uid=bob", "alice"),  # repeated: the first wins
        ("uid=a=b=c", "a=b=c"),  # only the first '=' splits
        ("uid=", ""),  # empty: present, and empty (the cohort key counts it as missing)
        ("other=1", None),
        ("uid=al\udcffice", "al\udcffice"),  # a byte that is not UTF-8 stays as received
    ],
)
def test_the_uid_cookie_is_found_in_real_world_headers(header, uid):
    assert parse_cookies([header]).get("uid") == uid


def test_cookies_from_several_header_lines_first_wins():
    assert parse_cookies(["a=1; uid=first", "uid=second; b=2"]) == {
        "a": "1",
        "uid": "first",
        "b": "2",
    }


def test_a_lone_quote_is_kept():
    assert parse_cookies(['uid="']) == {"uid": '"'}
