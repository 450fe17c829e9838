"""The gRPC rules a gateway reads (proxy/http/grpc.py): which requests are calls, a call's
deadline, the status that ended it, and the proxy's own answers to calls."""

from __future__ import annotations

import pytest

from proxy.config.model import GrpcStatus
from proxy.http import grpc


@pytest.mark.parametrize(
    ("content_type", "call"),
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"application/grpc+json", True),
        (b"application/grpc;charset=utf-8", True),
        (b"Application/GRPC", True),
        (b"application/grpc-web", False),
        (b"application/grpc-web+proto", False),
        (b"application/grpcx", False),
        (b"application/json", False),
        (b"", False),
        (None, False),
    ],
)
def test_a_call_is_told_by_its_content_type(content_type: bytes | None, call: bool) -> None:
    assert grpc.is_call(content_type) is call


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"300m", 0.3),
        (b"250u", 250e-6),
        (b"7n", 7e-9),
        (b"99999999S", 99999999.0),  # 8 digits: the most the spec allows
        (b"0m", 0.0),
    ],
)
def test_grpc_timeout_values(value: bytes, seconds: float) -> None:
    assert grpc.deadline(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [None, b"", b"S", b"1", b"100", b"123456789S", b"1s", b"1.5S", b"-1S", b" 1S", b"1 S", b"1h"],
)
def test_a_malformed_grpc_timeout_is_no_deadline(value: bytes | None) -> None:
    assert grpc.deadline(value) is None


def test_the_status_is_read_from_the_fields_and_an_unreadable_one_is_unknown() -> None:
    assert grpc.status_of([(b"grpc-status", b"0")]) is GrpcStatus.OK
    assert grpc.status_of([(b"x", b"1"), (b"grpc-status", b"14")]) is GrpcStatus.UNAVAILABLE
    assert grpc.status_of([(b"grpc-status", b"16")]) is GrpcStatus.UNAUTHENTICATED
    for bad in (b"17", b"-1", b"OK", b"", b"1.0"):
        assert grpc.status_of([(b"grpc-status", bad)]) is GrpcStatus.UNKNOWN, bad
    assert grpc.status_of([(b"content-type", b"application/grpc")]) is None
    assert grpc.status_of([]) is None


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, GrpcStatus.INTERNAL),
        (401, GrpcStatus.UNAUTHENTICATED),
        (403, GrpcStatus.PERMISSION_DENIED),
        (404, GrpcStatus.UNIMPLEMENTED),
        (408, GrpcStatus.DEADLINE_EXCEEDED),
        (413, GrpcStatus.RESOURCE_EXHAUSTED),
        (429, GrpcStatus.UNAVAILABLE),
        (500, GrpcStatus.UNKNOWN),
        (502, GrpcStatus.UNAVAILABLE),
        (503, GrpcStatus.UNAVAILABLE),
        (504, GrpcStatus.DEADLINE_EXCEEDED),
        (505, GrpcStatus.UNKNOWN),
    ],
)
def test_the_proxys_own_answers_as_grpc_statuses(status: int, code: GrpcStatus) -> None:
    assert grpc.status_for_http(status) is code


def test_grpc_message_is_percent_encoded_outside_printable_ascii() -> None:
    assert grpc.encode_message("cannot connect: refused") == b"cannot connect: refused"
    assert grpc.encode_message("100% done") == b"100%25 done"
    assert grpc.encode_message("caf\u00e9\n") == b"caf%C3%A9%0A"


def test_a_trailers_only_answer_says_grpc_and_its_status() -> None:
    lines = grpc.trailers_only(GrpcStatus.UNAVAILABLE, "upstream down")
    assert lines == (
        b"content-type: application/grpc\r\ngrpc-status: 14\r\ngrpc-message: upstream down\r\n"
    )
    assert grpc.status_fields(GrpcStatus.DEADLINE_EXCEEDED, "late") == [
        (b"grpc-status", b"4"),
        (b"grpc-message", b"late"),
    ]
