"""The client address behind trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.routing.client_ip import client_ip

LB = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.5", ["198.51.100.7"], [], "203.0.113.5"),  # nothing trusted: the peer
        ("203.0.113.5", ["198.51.100.7"], LB, "203.0.113.5"),  # untrusted peer cannot spoof
        ("10.0.0.2", ["198.51.100.7"], LB, "198.51.100.7"),
        ("10.0.0.2", ["1.1.1.1, 198.51.100.7, 10.0.0.9"], LB, "198.51.100.7"),  # rightmost
        ("10.0.0.2", ["1.1.1.1", "198.51.100.7"], LB, "198.51.100.7"),  # repeated headers
        ("10.0.0.2", ["10.1.1.1, 10.0.0.9"], LB, "10.1.1.1"),  # all trusted: the first
        ("10.0.0.2", [], LB, "10.0.0.2"),  # no header: the peer
        ("fd00::1", ["2001:db8::5"], LB, "2001:db8::5"),
        ("10.0.0.2", ["garbage, 10.0.0.3"], LB, "garbage"),  # not an address: never matches
        ("10.0.0.2", ["198.51.100.7, garbage"], LB, "garbage"),  # ...and is never a trusted hop
        ("unix:/run/lb.sock", ["198.51.100.7"], LB, "unix:/run/lb.sock"),  # nor a trusted peer
        (None, ["198.51.100.7"], LB, None),
    ],
)
def test_client_ip(peer, forwarded, trusted, expected):
    assert client_ip(peer, forwarded, trusted) == expected
