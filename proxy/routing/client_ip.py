"""The client address of a request that may have passed through trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from proxy.config.model import IPNetwork


def is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    """Whether `address` lies in one of the `trusted` networks."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_ip(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
) -> str | None:
    """The address of the client, as nginx's `real_ip_recursive` finds it.

    When the peer is a trusted proxy, `X-Forwarded-For` (all its values, in order) is read from
    right to left and the first address that is not a trusted proxy is the client. An untrusted
    peer is the client itself, whatever the header says, so clients cannot spoof their address.

    >>> nets = [ipaddress.ip_network("10.0.0.0/8")]
    >>> client_ip("10.0.0.2", ["198.51.100.7, 10.0.0.9"], nets)
    '198.51.100.7'
    >>> client_ip("203.0.113.5", ["198.51.100.7"], nets)
    '203.0.113.5'
    """
    if peer is None or not trusted or not is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer
