"""Header names as upstream servers read them, and the identity a request is routed by.

CGI and WSGI servers turn `X-Grayscale-Variant` and `X_Grayscale_Variant` into the same
`HTTP_X_GRAYSCALE_VARIANT`: the proxy's own fields and hop-by-hop fields must not get through
under the underscore spelling. A header named in `Connection` is hop-by-hop (RFC 9110 §7.6.1):
it does not reach the upstream, so it must not route the request either. A cohort key sent twice
is ambiguous: refused, since the upstream would see both. Each test checks, with h11, the bytes
the upstream received.
"""

from __future__ import annotations

import json
from itertools import count

import pytest

from proxy.app.server import Server
from proxy.routing import bucket, threshold
from tests.support.proxies import ProxyFactory
from tests.support.raw_peers import (
    Answer,
    GatewayFactory,
    RawClient,
    RawUpstream,
    Received,
    UpstreamFactory,
    answer,
    answer_each,
)

SALT = "spellings-salt"
SHARE = 0.5


async def ask(url: str, payload: bytes) -> Answer:
    client = await RawClient.connect(url)
    try:
        await client.send(payload)
        return await client.answer()
    finally:
        client.close()


def request(*lines: bytes) -> bytes:
    return b"GET /x HTTP/1.1\r\nHost: models.test\r\n%s\r\n" % b"".join(
        line + b"\r\n" for line in lines
    )


def read_as_cgi(received: Received) -> set[str]:
    """The names of the header fields received, as a CGI server reads them."""
    return {name.replace("_", "-") for name, _ in received.headers}


# --- the underscore spelling of a field the proxy owns or drops -------------------------------

FORGED = [
    b"X-Grayscale_Variant: candidate",
    b"X_Grayscale_Shadow: 1",
    b"x_grayscale_route: other",
    b"X_GRAYSCALE_REQUEST_ID: forged",
    b"Transfer_Encoding: chunked",
    b"Keep_Alive: timeout=1",
    b"Proxy_Authorization: Basic c2VjcmV0",
    b"Content_Length: 5",
    b"X_Forwarded_For: 6.6.6.6",
    b"X_Forwarded_Proto: https",
    b"X_Forwarded_Host: evil.test",
]


async def test_underscore_spellings_of_our_and_hop_by_hop_fields_never_reach_the_upstream(
    gateway: GatewayFactory,
) -> None:
    proxy, upstream = await gateway()
    got = await ask(proxy.proxy_url, request(*FORGED, b"X_Custom_Thing: kept"))
    assert got.status == 200
    (received,) = upstream.requests
    names = [name for name, _ in received.headers]
    assert [n for n in names if "_" in n] == ["x_custom_thing"]  # any other field passes
    assert received.header("x-forwarded-for") == "127.0.0.1"  # the proxy's own, only
    assert received.header("x-forwarded-proto") == "http"
    assert received.header("x-forwarded-host") == "models.test"
    assert not {n for n in read_as_cgi(received) if n.startswith("x-grayscale-")}
    assert {"transfer-encoding", "keep-alive", "proxy-authorization"}.isdisjoint(
        read_as_cgi(received)
    )


async def test_a_connection_option_is_dropped_in_any_spelling(gateway: GatewayFactory) -> None:
    proxy, upstream = await gateway()
    got = await ask(
        proxy.proxy_url, request(b"Connection: x-hop", b"X_Hop: 1", b"X-Hop: 2", b"X-Kept: 3")
    )
    assert got.status == 200
    (received,) = upstream.requests
    assert "x-hop" not in read_as_cgi(received)
    assert received.header("x-kept") == "3"


async def test_underscore_spellings_of_our_fields_in_an_answer_never_reach_the_client(
    gateway: GatewayFactory,
) -> None:
    forged = b"X_Grayscale_Variant: candidate\r\nX-Grayscale_Route: other\r\nKeep_Alive: x\r\n"

    async def script(connection, index):
        await answer_each(connection, lambda r: answer(b"ok", headers=forged + b"X_Other: 1\r\n"))

    proxy, _ = await gateway(script)
    got = await ask(proxy.proxy_url, request())
    assert got.status == 200
    assert got.values("x-grayscale-variant") == ["stable"]
    assert [name for name, _ in got.headers if "_" in name] == ["x_other"]


# --- the identity the router reads is the identity the upstream reads ------------------------


@pytest.fixture
async def split(
    raw_upstream: UpstreamFactory, start_proxy: ProxyFactory
) -> tuple[Server, RawUpstream, RawUpstream]:
    """A proxy at share 0.5 between two raw upstreams, keyed by `X-User-Id`, with a segment that
    pins `X-User-Group: staff` to the candidate."""
    stable, candidate = await raw_upstream(), await raw_upstream()
    route = (
        "  - name: models\n"
        '    match: {path_prefix: "/"}\n'
        f'    stable: {{url: "{stable.url}", timeout: 10s, connect_timeout: 1s}}\n'
        f'    candidate: {{url: "{candidate.url}", timeout: 10s, connect_timeout: 1s}}\n'
        f'    cohort: {{keys: ["header:X-User-Id", "cookie:uid", "query:user"], salt: "{SALT}"}}\n'
        f"    ramp: {{base: {SHARE}}}\n"
        "    ejection: false\n"
        '    segments: [{name: staff, when: {"header:X-User-Group": [staff]}, '
        "variant: candidate}]\n"
    )
    return await start_proxy(route), stable, candidate


def candidate_user() -> bytes:
    """A user id whose bucket is the candidate's at SHARE."""
    for n in count():
        user = f"user-{n}"
        if bucket(SALT, user) < threshold(SHARE):
            return user.encode()
    raise AssertionError("unreachable")


async def test_a_cohort_key_named_in_connection_is_not_a_key(split) -> None:
    proxy, stable, candidate = split
    user = candidate_user()
    got = await ask(proxy.proxy_url, request(b"X-User-Id: %s" % user))
    assert got.header("x-grayscale-variant") == "candidate"  # the key, when it is one
    got = await ask(
        proxy.proxy_url, request(b"Connection: keep-alive, X-User-Id", b"X-User-Id: %s" % user)
    )
    assert got.header("x-grayscale-variant") == "stable"  # no key: `missing: stable`
    (received,) = stable.requests
    assert received.header("x-user-id") is None  # and the upstream did not see one either
    assert candidate.requests[0].header("x-user-id") == user.decode()


async def test_a_cookie_key_still_counts_when_the_header_key_is_hop_by_hop(split) -> None:
    proxy, _, candidate = split
    user = candidate_user()
    got = await ask(
        proxy.proxy_url,
        request(b"Connection: x-user-id", b"X-User-Id: nobody", b"Cookie: uid=%s" % user),
    )
    assert got.header("x-grayscale-variant") == "candidate"  # the next key in order
    (received,) = candidate.requests
    assert (received.header("x-user-id"), received.header("cookie")) == (
        None,
        f"uid={user.decode()}",
    )


async def test_a_segment_header_named_in_connection_does_not_match(split) -> None:
    proxy, stable, candidate = split
    got = await ask(proxy.proxy_url, request(b"X-User-Group: staff"))
    assert candidate.requests[0].header("x-user-group") == "staff"
    assert got.header("x-grayscale-variant") == "candidate"
    got = await ask(proxy.proxy_url, request(b"Connection: X-User-Group", b"X-User-Group: staff"))
    assert got.header("x-grayscale-variant") == "stable"
    (received,) = stable.requests
    assert received.header("x-user-group") is None


@pytest.mark.parametrize(
    "fields",
    [
        (b"X-User-Id: user-a", b"X-User-Id: user-b"),
        (b"X-User-Id: user-a", b"x-user-id: user-a"),  # the same value twice: still refused
        (b"X-User-Id: user-a", b"X_User_Id: user-b"),  # a CGI server reads both as one name
    ],
    ids=["different", "same", "underscore"],
)
async def test_a_cohort_key_sent_twice_is_refused(split, fields: tuple[bytes, ...]) -> None:
    proxy, stable, candidate = split
    got = await ask(proxy.proxy_url, request(*fields))
    assert got.status == 400
    document = json.loads(got.body)
    assert document["error"] == "ambiguous_cohort_key"
    assert "X-User-Id" in document["message"]
    assert stable.received == candidate.received == b""  # no upstream saw it


async def test_a_cohort_key_query_parameter_given_twice_is_refused(split) -> None:
    proxy, stable, candidate = split
    twice = b"GET /x?user=a&user=b HTTP/1.1\r\nHost: models.test\r\n\r\n"
    got = await ask(proxy.proxy_url, twice)
    assert got.status == 400
    document = json.loads(got.body)
    assert (document["error"], document["message"].split()[0]) == ("ambiguous_cohort_key", "user")
    assert stable.received == candidate.received == b""
    others = b"GET /x?user=a&tag=1&tag=2 HTTP/1.1\r\nHost: models.test\r\n\r\n"
    assert (await ask(proxy.proxy_url, others)).status == 200


async def test_other_repeated_fields_and_a_lone_key_pass(split) -> None:
    proxy, stable, _ = split
    got = await ask(
        proxy.proxy_url,
        request(b"X-User-Id: ", b"Accept: a/b", b"Accept: c/d", b"X-Other: 1", b"X-Other: 2"),
    )
    assert got.status == 200  # (an empty key counts as missing: stable)
    (received,) = stable.requests
    assert received.values("accept") == ["a/b", "c/d"]
    assert received.values("x-other") == ["1", "2"]
