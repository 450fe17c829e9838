"""Property: whatever valid requests a client sends, split however it likes, pipelined or one by
one, the upstream receives exactly one equivalent request for each (parsed by h11, an HTTP/1.1
implementation independent of ours), and each answer reaches the client that asked, in order."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app.server import Server
from tests.support.raw_peers import (
    GatewayFactory,
    PeerConnection,
    RawClient,
    RawUpstream,
    Received,
    answer,
    answer_each,
)

HOP_BY_HOP = {"connection", "keep-alive", "te", "transfer-encoding", "upgrade", "trailer"}
ADDED = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "via"}
_examples = itertools.count()


@dataclass
class Sent:
    """One request as the client sends it, and what it should become upstream."""

    rid: str
    method: str
    target: bytes  # as sent: origin-form or absolute-form
    upstream_target: str  # origin-form
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunks: list[int] | None  # chunk sizes when sent chunked

    def wire(self) -> bytes:
        lines = [b"%s %s HTTP/1.1\r\n" % (self.method.encode(), self.target)]
        lines += [b"%s: %s\r\n" % pair for pair in self.headers]
        if self.chunks is None:
            if self.body or self.method in ("POST", "PUT", "PATCH"):
                lines.append(b"Content-Length: %d\r\n" % len(self.body))
            return b"".join(lines) + b"\r\n" + self.body
        lines.append(b"Transfer-Encoding: chunked\r\n")
        out, at = [b"".join(lines), b"\r\n"], 0
        for size in self.chunks:
            out.append(b"%x\r\n%s\r\n" % (size, self.body[at : at + size]))
            at += size
        out.append(b"0\r\n\r\n")
        return b"".join(out)


token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
value = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.,;:=/\"'()[]{}<>?@!#$%&*+~",
    max_size=40,
).map(str.strip)
segment = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~%20", min_size=1, max_size=12)


@st.composite
def requests(draw: st.DrawFn, rid: str) -> Sent:
    method = draw(st.sampled_from(["GET", "HEAD", "DELETE", "OPTIONS", "POST", "PUT", "PATCH"]))
    path = "/" + "/".join(draw(st.lists(segment, max_size=3)))
    query = draw(st.one_of(st.none(), st.lists(st.tuples(token, token), max_size=3)))
    origin = path + ("" if query is None else "?" + "&".join(f"{k}={v}" for k, v in query))
    absolute = draw(st.booleans()) and draw(st.booleans())
    target = ("http://models.test" if absolute else "") + origin
    headers = [(b"Host", b"models.test"), (b"X-Request-Id", rid.encode())]
    for name, text in draw(st.lists(st.tuples(token, value), max_size=6)):
        headers.append((b"X-" + name.encode(), text.encode()))
    body, chunks = b"", None
    if method in ("POST", "PUT", "PATCH"):
        size = draw(st.one_of(st.integers(0, 3000), st.integers(60_000, 80_000)))
        body = draw(st.binary(min_size=size, max_size=size)) if size < 3000 else bytes(size)
        if draw(st.booleans()) and len(body) > 1:
            cuts = sorted(draw(st.lists(st.integers(1, len(body) - 1), max_size=4, unique=True)))
            edges = [0, *cuts, len(body)]
            chunks = [b - a for a, b in itertools.pairwise(edges)]
    return Sent(rid, method, target.encode(), origin, headers, body, chunks)


@st.composite
def sessions(draw: st.DrawFn) -> tuple[list[Sent], bool, list[int]]:
    example = next(_examples)
    sent = [draw(requests(f"{example}-{i}")) for i in range(draw(st.integers(1, 5)))]
    pipelined = draw(st.booleans())
    size = sum(len(s.wire()) for s in sent)
    cuts = draw(st.lists(st.integers(1, max(1, size - 1)), max_size=8, unique=True))
    return sent, pipelined, sorted(cuts)


def description(request: Received) -> bytes:
    """An answer naming the request's id and its body's length and digest."""
    rid = request.header("x-request-id") or "?"
    digest = hashlib.sha256(request.body).hexdigest()[:16]
    text = f"{rid} {len(request.body)} {digest}".encode()
    if request.method == "HEAD":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(text)
    return answer(text)


async def describe(connection: PeerConnection, index: int) -> None:
    await answer_each(connection, description)


async def send_in_pieces(client: RawClient, data: bytes, cuts: list[int]) -> None:
    """Write `data` split at `cuts` (positions in it), pausing so each piece is read alone."""
    at = 0
    for cut in [c for c in cuts if 0 < c < len(data)] + [len(data)]:
        await client.send(data[at:cut])
        await asyncio.sleep(0.001)
        at = cut


@pytest.fixture
async def described(gateway: GatewayFactory) -> tuple[Server, RawUpstream]:
    """One proxy in front of a `describe` upstream, shared by all examples of a test."""
    return await gateway(describe)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(session=sessions())
async def test_each_request_reaches_the_upstream_once_and_each_answer_its_client(
    described: tuple[Server, RawUpstream], session: tuple[list[Sent], bool, list[int]]
) -> None:
    sent, pipelined, cuts = session
    proxy, upstream = described
    client = await RawClient.connect(proxy.proxy_url)
    try:
        answers = []
        if pipelined:
            await send_in_pieces(client, b"".join(s.wire() for s in sent), cuts)
            for s in sent:
                answers.append(await client.answer(head_request=s.method == "HEAD"))
        else:
            for s in sent:
                await send_in_pieces(client, s.wire(), cuts)
                answers.append(await client.answer(head_request=s.method == "HEAD"))
    finally:
        client.close()
    for s, got in zip(sent, answers, strict=True):
        digest = hashlib.sha256(s.body).hexdigest()[:16]
        expected = f"{s.rid} {len(s.body)} {digest}".encode()
        assert got.status == 200
        assert got.body == (b"" if s.method == "HEAD" else expected)
    ids = {s.rid for s in sent}
    received = [r for r in upstream.requests if r.header("x-request-id") in ids]
    assert [r.header("x-request-id") for r in received] == [s.rid for s in sent]
    for s, r in zip(sent, received, strict=True):
        assert (r.method, r.target, r.body) == (s.method, s.upstream_target, s.body)
        theirs = [(n, v) for n, v in r.headers if n not in ADDED | {"host", "content-length"}]
        ours = [
            (n.decode().lower(), v.decode())
            for n, v in s.headers
            if n.lower() not in {b"host", b"content-length"}
        ]
        assert [pair for pair in theirs if pair[0] not in HOP_BY_HOP] == ours
        assert r.header("x-forwarded-host") == "models.test"
        assert r.values("via") == ["1.1 grayscale"]
