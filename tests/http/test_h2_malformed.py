"""The one-pass checks of HTTP/2 header blocks, requests' and answers', against h2's own inbound
validation (the oracle): the same blocks are malformed, on random blocks near the rules' edges."""

from __future__ import annotations

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import StreamReset
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, validate_headers
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.h2_malformed import malformed, malformed_answer
from proxy.http.h2_state import ServerH2State

GOOD = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]


def h2_refuses(fields: list[tuple[bytes, bytes]], trailers: bool, answer: bool = False) -> bool:
    flags = HeaderValidationFlags(
        is_client=answer,
        is_trailer=trailers,
        is_response_header=answer and not trailers,
        is_push_promise=False,
    )
    try:
        list(validate_headers(fields, flags))
    except ProtocolError:
        return True
    return False


names = st.sampled_from(
    [
        b":method", b":scheme", b":path", b":authority", b":protocol", b":status", b":status",
        b":custom",
        b":", b"", b"host", b"te", b"connection", b"keep-alive", b"upgrade",
        b"transfer-encoding", b"proxy-connection", b"x-a", b"X-A", b"x a", b"x:a", b"x\x7fa",
        b"x\xc3\xa9", b"cookie", b"content-length",
    ]
)  # fmt: skip
values = st.sampled_from(
    [
        b"", b"GET", b"CONNECT", b"POST", b"http", b"/", b"a", b"b", b"trailers", b"Trailers",
        b"gzip", b" a", b"a ", b"\ta", b"a\t", b"a\r\nb", b"a\x00", b"a\nb", b"a b", b"websocket",
        b"200", b"103",
    ]
)  # fmt: skip
fields = st.tuples(names, values)


@st.composite
def blocks(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """A valid request's fields, changed a little: fields inserted, dropped or replaced."""
    block = list(draw(st.permutations(GOOD))) + draw(st.lists(st.tuples(st.just(b"x-a"), values)))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(block)))
        action = draw(st.sampled_from(["insert", "drop", "replace"]))
        if action == "insert" or not block:
            block.insert(where, draw(fields))
        elif action == "drop":
            del block[min(where, len(block) - 1)]
        else:
            block[min(where, len(block) - 1)] = draw(fields)
    return block


@settings(max_examples=3000, deadline=None)
@given(blocks(), st.booleans())
def test_a_block_is_malformed_exactly_when_h2_refuses_it(block, trailers):
    assert (malformed(block, trailers) is not None) == h2_refuses(block, trailers)


ANSWER = [(b":status", b"200"), (b"content-type", b"application/grpc")]


@st.composite
def answers(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """A valid answer's fields, changed a little, as `blocks` changes a request's."""
    block = list(ANSWER) + draw(st.lists(st.tuples(st.just(b"x-a"), values)))
    for _ in range(draw(st.integers(0, 3))):
        where = min(draw(st.integers(0, len(block))), max(len(block) - 1, 0))
        action = draw(st.sampled_from(["insert", "drop", "replace"]))
        if action == "insert" or not block:
            block.insert(where, draw(fields))
        elif action == "drop":
            del block[where]
        else:
            block[where] = draw(fields)
    return block


@settings(max_examples=3000, deadline=None)
@given(answers(), st.booleans())
def test_an_answer_is_malformed_exactly_when_h2_refuses_it(block, trailers):
    assert (malformed_answer(block, trailers) is not None) == h2_refuses(
        block, trailers, answer=True
    )


@pytest.mark.parametrize(
    ("block", "trailers", "why"),
    [
        (ANSWER, False, None),
        ([(b"grpc-status", b"0")], True, None),
        ([(b"content-type", b"x")], False, "no :status"),
        ([*ANSWER, (b":path", b"/")], False, "b':path' after a regular field"),
        ([(b":path", b"/"), *ANSWER], False, "a request's pseudo-header in an answer"),
        ([(b":status", b"200")], True, "a pseudo-header in trailers"),
        ([*ANSWER, (b"host", b"a"), (b"host", b"b")], False, None),
        (
            [*ANSWER, (b"connection", b"close")],
            False,
            "the connection-specific field b'connection'",
        ),
    ],
)
def test_what_makes_an_answer_malformed_is_said(block, trailers, why):
    assert malformed_answer(block, trailers) == why
    assert h2_refuses(block, trailers, answer=True) is (why is not None)


@pytest.mark.parametrize(
    ("block", "trailers", "why"),
    [
        (GOOD, False, None),
        ([(b"x-a", b"b")], True, None),
        ([*GOOD, (b"te", b"trailers")], False, None),
        ([*GOOD, (b"te", b"Trailers")], False, None),
        ([(b"te", b"gzip")], True, "TE: b'gzip'"),
        ([(b":method", b"CONNECT"), (b":authority", b"a:443")], False, None),
        ([*GOOD, (b"host", b"a")], False, None),
        ([*GOOD, (b"x-A", b"b")], False, "an invalid field name b'x-A'"),
        ([*GOOD, (b"x-a", b"b ")], False, "an invalid value of b'x-a'"),
        ([*GOOD, (b"connection", b"close")], False, "the connection-specific field b'connection'"),
        ([*GOOD, (b"host", b"b")], False, ":authority and Host differ"),
        ([*GOOD[:3], (b"host", b"a"), (b"host", b"a")], False, "Host twice"),
        ([*GOOD[:3], (b"host", b"a")], False, None),
        ([*GOOD[:3]], False, "neither :authority nor Host"),
        ([*GOOD, (b":protocol", b"websocket")], False, ":protocol without CONNECT"),
        (
            [(b":method", b"CONNECT"), GOOD[3], (b":path", b"/")],
            False,
            "CONNECT with :scheme or :path",
        ),
        ([(b"x-a", b"b"), *GOOD], False, "b':method' after a regular field"),
        ([*GOOD[:2], (b":path", b""), GOOD[3]], False, "an empty :path"),
        ([(b":path", b"/")], True, "a pseudo-header in trailers"),
        ([*GOOD, (b":status", b"200")], False, "the pseudo-header b':status' in a request"),
    ],
)
def test_what_makes_a_block_malformed_is_said(block, trailers, why):
    assert malformed(block, trailers) == why
    assert h2_refuses(block, trailers) is (why is not None)


def _served(trailers: list[tuple[bytes, bytes]], answered_first: bool):
    """The server's events (or error) for a request whose trailers are `trailers`, sent while
    the stream is open or after the server ended it with its answer."""
    server = ServerH2State(H2Configuration(client_side=False, header_encoding=None))
    client = H2Connection(
        H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    server.initiate_connection()
    client.initiate_connection()
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, [(b":method", b"POST"), *GOOD[1:]])
    server.receive_data(client.data_to_send())
    if answered_first:
        server.send_headers(1, [(b":status", b"200")], end_stream=True)
        client.receive_data(server.data_to_send())
    client.send_headers(1, trailers, end_stream=True)
    return server, client.data_to_send()


@pytest.mark.parametrize("trailers", [[(b"connection", b"x")], [(b":path", b"/x")]])
def test_malformed_trailers_reset_their_open_stream_and_are_a_connection_error_once_it_closed(
    trailers,
):
    server, sent = _served(trailers, answered_first=False)
    assert [type(e) for e in server.receive_data(sent)] == [StreamReset]
    server, sent = _served(trailers, answered_first=True)
    with pytest.raises(ProtocolError) as raised:
        server.receive_data(sent)
    assert raised.value.error_code == ErrorCodes.PROTOCOL_ERROR
