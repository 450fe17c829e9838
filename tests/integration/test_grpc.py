"""gRPC through the proxy, with real peers on both sides (grpcio's asyncio API): the client speaks
h2c (or TLS with ALPN h2) to the proxy, which speaks h2c to two gRPC upstreams
(`tests/support/grpc_peers.py`). Unary and streaming calls, metadata both ways, stickiness, a
call's status counted as its variant's error, deadlines, the proxy's own answers to calls, the
health service, and a candidate failing 30 % of its calls rolled back by the analysis."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import h2.config
import h2.connection
import h2.events
import pytest

from proxy.app.server import Server
from proxy.rollout.machine import State
from tests.support.certificates import Authority
from tests.support.grpc_peers import (
    SERVING,
    UNARY,
    GrpcPeer,
    Methods,
    health_check,
    start_peer,
)
from tests.support.proxies import ProxyFactory
from tests.support.waiting import eventually

H2 = ", http2: true"  # the proxy's listener serves h2c beside HTTP/1.1
ROUTE = "grpc"
INTERVAL = 0.5  # the analysis's settings, as in tests/integration/test_analysis.py
FAILURES = 3
CALL_TIMEOUT = 5.0  # every call's deadline unless a test says otherwise
CALLS = 1500  # a failing candidate is rolled back within this many calls; an equal one is not


def grpc_route(
    stable: str, candidate: str, *, share: float = 0.0, extra: str = "", timeout: str = "10s"
) -> str:
    """One route for every path between two gRPC (h2c) upstreams, sticky on `x-user-id`, with
    neither fallback nor ejection unless `extra` (more route lines) says otherwise."""
    upstream = f"timeout: {timeout}, connect_timeout: 1s, http2: true"
    return (
        f"  - name: {ROUTE}\n"
        '    match: {path_prefix: "/"}\n'
        f'    stable: {{url: "{stable}", {upstream}}}\n'
        f'    candidate: {{url: "{candidate}", {upstream}}}\n'
        f'    cohort: {{keys: ["header:x-user-id"], salt: "{ROUTE}-salt"}}\n'
        f"    ramp: {{base: {share}}}\n"
        "    fallback: never\n" + extra + ("" if "ejection" in extra else "    ejection: false\n")
    )


def analysis(fields: str = "window: 2s") -> str:
    """The route lines of a fast analysis (those of the analysis's integration tests)."""
    return (
        f"    analysis: {{interval: {int(INTERVAL * 1000)}ms, {fields}, "
        f"min_requests: 60, failures_before_rollback: {FAILURES}}}\n"
    )


def target(server: Server) -> str:
    host, port = server.listener.address[:2]
    return f"{host}:{port}"


@pytest.fixture
async def peers() -> AsyncIterator[tuple[GrpcPeer, GrpcPeer]]:
    """A stable and a candidate gRPC upstream, stopped after the test."""
    stable = await start_peer("stable")
    candidate = await start_peer("candidate")
    yield stable, candidate
    await stable.stop()
    await candidate.stop()


@pytest.fixture
async def channels() -> AsyncIterator[Callable[..., Any]]:
    """Open gRPC channels to a proxy (`open(server, credentials=None)`); closed after."""
    opened: list[Any] = []

    def open_channel(server: Server, credentials: Any = None) -> Any:
        if credentials is None:
            channel = grpc.aio.insecure_channel(target(server))
        else:
            channel = grpc.aio.secure_channel(target(server), credentials)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        await channel.close()


async def grpc_proxy(
    start_proxy: ProxyFactory,
    peers: tuple[GrpcPeer, GrpcPeer],
    server_fields: str = H2,
    **route: Any,
) -> Server:
    stable, candidate = peers
    return await start_proxy(grpc_route(stable.url, candidate.url, **route), server_fields)


def metadata_value(metadata: Any, key: str) -> str | bytes | None:
    """The last value of `key` in gRPC metadata (None: absent)."""
    found = None
    for name, value in metadata or ():
        if name == key:
            found = value
    return found


async def variant_of(call: Any) -> str | None:
    """The variant that answered a finished call: initial metadata, or for a trailers-only
    answer (a failure without messages) the trailing metadata, where gRPC puts that block."""
    for metadata in (await call.initial_metadata(), await call.trailing_metadata()):
        value = metadata_value(metadata, "x-grayscale-variant")
        if value is not None:
            return str(value)
    return None


async def unary(methods: Methods, request: bytes, user: str, **options: Any) -> Any:
    """A unary call from `user`, awaited to its end (its failure kept on the call, not raised)."""
    options.setdefault("timeout", CALL_TIMEOUT)
    call = methods.unary(request, metadata=(("x-user-id", user),), **options)
    with contextlib.suppress(grpc.aio.AioRpcError):  # (the test reads the call's status)
        await call
    return call


def requests(server: Server, variant: str, code_class: str) -> float:
    """grayscale_requests_total for the route, `variant` and `code_class`."""
    labels = {"route": ROUTE, "variant": variant, "code_class": code_class}
    return server.recorder.registry.get_sample_value("grayscale_requests_total", labels) or 0.0


def upstream_errors(server: Server, variant: str) -> dict[str, float]:
    """grayscale_upstream_errors_total for the route and `variant`, by reason."""
    found: dict[str, float] = {}
    for family in server.recorder.registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "grayscale_upstream_errors_total"
                and labels.get("route") == ROUTE
                and labels.get("variant") == variant
            ):
                found[str(labels["reason"])] = sample.value
    return found


# 1. A unary call.


async def test_a_unary_call_gets_the_answer_metadata_both_ways_and_ok(
    peers, start_proxy, channels
) -> None:
    stable, _ = peers
    stable.trailing = (("x-peer-trailer", "from stable"), ("x-peer-trailer-bin", b"\x00\xffok"))
    server = await grpc_proxy(start_proxy, peers)  # share 0: stable
    methods = Methods.on(channels(server))
    call = methods.unary(b"hello", metadata=(("x-user-id", "alice"),), timeout=CALL_TIMEOUT)
    assert await call == b"stable:hello"
    assert await call.code() == grpc.StatusCode.OK
    initial = await call.initial_metadata()
    assert metadata_value(initial, "x-grayscale-variant") == "stable"
    assert metadata_value(initial, "x-grayscale-route") == ROUTE
    assert metadata_value(initial, "x-grayscale-request-id")
    trailing = await call.trailing_metadata()
    assert metadata_value(trailing, "x-peer-trailer") == "from stable"
    assert metadata_value(trailing, "x-peer-trailer-bin") == b"\x00\xffok"
    (seen,) = stable.calls
    assert seen.metadata["x-user-id"] == "alice"
    assert not any(key.startswith("x-grayscale-") for key in seen.metadata)
    assert await eventually(lambda: requests(server, "stable", "2xx") == 1)


# 2. Stickiness.


async def test_a_users_calls_stay_on_one_variant_and_both_variants_get_users(
    peers, start_proxy, channels
) -> None:
    server = await grpc_proxy(start_proxy, peers, share=0.5)
    methods = Methods.on(channels(server))
    chosen: dict[str, set[str]] = {}
    for round_ in range(3):
        for n in range(40):
            user = f"user-{n}"
            call = await unary(methods, b"r%d" % round_, user)
            assert await call.code() == grpc.StatusCode.OK
            variant = await variant_of(call)
            assert variant is not None
            assert (await call).decode() == f"{variant}:r{round_}"  # (it answered, too)
            chosen.setdefault(user, set()).add(variant)
    assert all(len(variants) == 1 for variants in chosen.values()), chosen
    assert {variant for (variant,) in chosen.values()} == {"stable", "candidate"}


# 3. Streams.


async def test_a_server_stream_passes_message_by_message(peers, start_proxy, channels) -> None:
    stable, _ = peers
    stable.gate = asyncio.Event()
    server = await grpc_proxy(start_proxy, peers)
    methods = Methods.on(channels(server))
    call = methods.stream(b"4", metadata=(("x-user-id", "alice"),), timeout=CALL_TIMEOUT)
    first = await asyncio.wait_for(call.read(), timeout=5)
    assert first == b"stable:0"
    assert stable.sent == 1  # (message 1 waits for the gate: this one came through alone)
    assert metadata_value(await call.initial_metadata(), "x-grayscale-variant") == "stable"
    stable.gate.set()
    rest = []  # (read() to the end: gRPC forbids mixing it with iterating on one call)
    while (message := await asyncio.wait_for(call.read(), timeout=5)) != grpc.aio.EOF:
        rest.append(message)
    assert rest == [b"stable:1", b"stable:2", b"stable:3"]
    assert await call.code() == grpc.StatusCode.OK


async def test_a_client_stream_reaches_the_upstream_whole(peers, start_proxy, channels) -> None:
    server = await grpc_proxy(start_proxy, peers)
    methods = Methods.on(channels(server))
    user = (("x-user-id", "bob"),)

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"a", b"b", b"c"):
            yield part

    collected = methods.collect(parts(), metadata=user, timeout=CALL_TIMEOUT)
    assert await collected == b"stable:a+b+c"
    assert await collected.code() == grpc.StatusCode.OK


async def test_a_bidirectional_stream_answers_each_message_before_the_next_is_sent(
    peers, start_proxy, channels
) -> None:
    server = await grpc_proxy(start_proxy, peers)
    methods = Methods.on(channels(server))
    echo = methods.echo(metadata=(("x-user-id", "bob"),), timeout=CALL_TIMEOUT)
    for word in (b"one", b"two", b"three"):  # each answer read before the next is written
        await echo.write(word)
        assert await asyncio.wait_for(echo.read(), timeout=5) == b"stable:" + word
    await echo.done_writing()
    assert await echo.read() == grpc.aio.EOF
    assert await echo.code() == grpc.StatusCode.OK


# 4. A call's status counted as its variant's error.


UNAVAILABLE, NOT_FOUND = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND
ERROR_CODES = {  # the route's grpc_error_codes lines: (them, a status they count, one they do not)
    "default": ("", UNAVAILABLE, NOT_FOUND),
    "by-name": ("    grpc_error_codes: [NOT_FOUND]\n", NOT_FOUND, UNAVAILABLE),
    "by-number": ("    grpc_error_codes: [5]\n", NOT_FOUND, UNAVAILABLE),
}


@pytest.mark.parametrize("case", ERROR_CODES)
async def test_a_listed_status_is_an_error_of_the_candidate_and_a_status_not_listed_is_not(
    peers, start_proxy, channels, case: str
) -> None:
    codes, counted, not_counted = ERROR_CODES[case]
    _, candidate = peers
    candidate.failure_rate = 1.0
    server = await grpc_proxy(start_proxy, peers, share=1.0, extra=codes)
    methods = Methods.on(channels(server))
    details = "candidate says no: ünïcode, 100 % sure"

    candidate.failure_code, candidate.failure_details = counted, details
    call = await unary(methods, b"x", "alice")
    assert (await call.code(), await call.details()) == (counted, details)
    assert await variant_of(call) == "candidate"
    assert await eventually(lambda: requests(server, "candidate", "error") == 1)
    assert sum(upstream_errors(server, "candidate").values()) == 1
    print(f"\n{counted.name} counted: {upstream_errors(server, 'candidate')}")

    candidate.failure_code, candidate.failure_details = not_counted, "not an error of the server"
    call = await unary(methods, b"x", "alice")
    assert (await call.code(), await call.details()) == (not_counted, "not an error of the server")
    assert await eventually(lambda: requests(server, "candidate", "2xx") == 1)
    assert requests(server, "candidate", "error") == 1
    assert sum(upstream_errors(server, "candidate").values()) == 1
    assert requests(server, "stable", "2xx") == requests(server, "stable", "error") == 0


# 5. A deadline.


async def test_a_calls_deadline_ends_it_with_deadline_exceeded_and_lets_go_of_the_upstream(
    peers, start_proxy, channels
) -> None:
    stable, _ = peers
    server = await grpc_proxy(start_proxy, peers)
    methods = Methods.on(channels(server))
    warm = await unary(methods, b"warm", "alice", timeout=10)  # (connections open both ways:
    assert await warm.code() == grpc.StatusCode.OK  # the 0.3 s are the call's alone)
    stable.delay = 5.0
    started = time.monotonic()
    call = await unary(methods, b"slow", "alice", timeout=0.3)
    elapsed = time.monotonic() - started
    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 2.0, elapsed
    assert len(stable.calls) == 2
    seen = stable.calls[-1]
    # grpc-timeout passed on (grpc rounds it up to its timer's grain: a few ms over at most)
    assert seen.time_remaining is not None and 0 < seen.time_remaining <= 0.35
    assert await eventually(seen.ended.is_set, within=2.0)  # (not after the 5 s of work)
    assert seen.cancelled


@dataclass
class RawAnswer:
    """What a raw HTTP/2 call got: its head's and trailers' fields, its body, and whether the
    stream ended (or was reset) in time."""

    fields: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    ended: bool = False

    def get(self, name: bytes) -> bytes | None:
        return dict(self.fields).get(name)


async def raw_call(server: Server, fields: list[tuple[str, str]], message: bytes) -> RawAnswer:
    """One gRPC unary call spoken in raw HTTP/2 frames (the `h2` library as the client), which,
    unlike grpcio, never resets the stream at its own deadline: what the proxy answered."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    head = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", target(server)),
        (":path", UNARY),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *fields,
    ]
    client.send_headers(1, head)
    client.send_data(1, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
    host, port = server.listener.address[:2]
    reader, writer = await asyncio.open_connection(host, port)
    answer = RawAnswer()
    try:
        writer.write(client.data_to_send())
        async with asyncio.timeout(CALL_TIMEOUT):
            while not answer.ended:
                data = await reader.read(65536)
                if not data:
                    break
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        answer.fields += [(bytes(k), bytes(v)) for k, v in event.headers]
                    elif isinstance(event, h2.events.DataReceived):
                        answer.body += event.data
                        client.acknowledge_received_data(event.flow_controlled_length, 1)
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        answer.ended = True
                writer.write(client.data_to_send())
    finally:
        writer.close()
    return answer


async def test_a_call_past_its_grpc_timeout_is_ended_and_counted_an_error_of_its_variant(
    peers, start_proxy
) -> None:
    """A client that does not give up at its own deadline still gets DEADLINE_EXCEEDED in
    time, and the call is an error of the variant that was asked (the proxy's deadline or the
    upstream's status: either counts)."""
    stable, _ = peers
    stable.delay = 5.0
    server = await grpc_proxy(start_proxy, peers)
    started = time.monotonic()
    answer = await raw_call(server, [("grpc-timeout", "300m"), ("x-user-id", "alice")], b"slow")
    elapsed = time.monotonic() - started
    assert answer.ended and elapsed < 2.0, (answer, elapsed)
    assert answer.get(b":status") == b"200", answer
    assert answer.get(b"grpc-status") == b"%d" % grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert answer.get(b"x-grayscale-variant") == b"stable"
    assert await eventually(lambda: requests(server, "stable", "error") == 1)
    print(f"\ncounted under reasons {upstream_errors(server, 'stable')}")


# 6. The upstream is down.


async def test_a_call_to_a_stopped_upstream_gets_unavailable_with_a_message(
    peers, start_proxy, channels
) -> None:
    _, candidate = peers
    server = await grpc_proxy(start_proxy, peers, share=1.0)
    await candidate.stop()
    methods = Methods.on(channels(server))
    call = await unary(methods, b"x", "alice")
    code, details = await call.code(), await call.details()
    print(f"\nthe client saw {code.name}: {details!r}")
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details and "http2 header" not in details.lower()  # the proxy's own gRPC answer
    assert await variant_of(call) == "candidate"
    assert await eventually(lambda: requests(server, "candidate", "error") == 1)
    assert upstream_errors(server, "candidate").get("connect") == 1


# 7. The health service.


async def test_the_health_check_passes_through_and_says_serving(
    peers, start_proxy, channels
) -> None:
    server = await grpc_proxy(start_proxy, peers)
    answer = await health_check(channels(server))
    assert answer.status == SERVING
    answer = await health_check(channels(server), "test.Peer")
    assert answer.status == SERVING


# 8. The analysis rolls back a gRPC candidate failing 30 % of its calls.


async def drive(
    methods: Methods, seconds: float, until: Callable[[int], bool], concurrency: int = 16
) -> list[tuple[str | None, Any]]:
    """Unary calls from random users (seeded) for `seconds` or until `until(calls made)`: the
    variant and status of each."""
    deadline = time.monotonic() + seconds
    rng = random.Random(4)
    done: list[tuple[str | None, Any]] = []

    async def worker() -> None:
        while time.monotonic() < deadline and not until(len(done)):
            call = await unary(methods, b"p", f"user-{rng.randrange(100_000)}")
            done.append((await variant_of(call), await call.code()))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def test_a_grpc_candidate_failing_30_percent_of_calls_is_rolled_back(
    peers, start_proxy, channels
) -> None:
    stable, candidate = peers
    candidate.failure_rate, candidate.failure_code = 0.3, grpc.StatusCode.UNAVAILABLE
    server = await grpc_proxy(start_proxy, peers, share=0.5, extra=analysis())
    methods = Methods.on(channels(server))

    def rolled_back() -> bool:
        return server.controller.state(ROUTE, time.time()) is State.ROLLED_BACK

    started = time.monotonic()
    calls = await drive(methods, 10.0, lambda made: rolled_back())
    elapsed = time.monotonic() - started
    print(f"\nrolled back after {len(calls)} calls, {elapsed:.2f} s")
    assert rolled_back(), (len(calls), elapsed)
    assert len(calls) <= CALLS
    last = server.controller.rollout(ROUTE).last
    assert last.actor == "analysis" and last.reason.startswith("analysis: error_rate")
    assert candidate.failures > 0 and stable.failures == 0
    assert {code for variant, code in calls if variant == "stable"} == {grpc.StatusCode.OK}

    seen_by_candidate = candidate.unary_calls
    after = await drive(methods, 0.5, lambda made: False, concurrency=4)
    assert after and {variant for variant, _ in after} == {"stable"}
    assert {code for _, code in after} == {grpc.StatusCode.OK}
    assert candidate.unary_calls == seen_by_candidate


@pytest.mark.parametrize("failure_rate", [0.0, 0.01], ids=["healthy", "one-percent"])
async def test_a_grpc_candidate_equal_to_stable_is_not_rolled_back(
    peers, start_proxy, channels, failure_rate: float
) -> None:
    for peer in peers:
        peer.failure_rate, peer.delay = failure_rate, 0.005
    # (limits that a few seconds of traffic can prove an equal candidate within, as in
    # test_analysis.py: a pass is proof, not the absence of a failure)
    limits = "window: 2s, max_error_rate_increase: 0.1, max_latency_ratio: 3"
    server = await grpc_proxy(start_proxy, peers, share=0.5, extra=analysis(limits))
    methods = Methods.on(channels(server))

    def passed_twice(made: int = CALLS) -> bool:
        labels = {"route": ROUTE, "check": "overall", "result": "pass"}
        passes = server.recorder.registry.get_sample_value(
            "grayscale_analysis_verdicts_total", labels
        )
        return made >= CALLS and (passes or 0) >= 2

    calls = await drive(methods, 10.0, passed_twice)
    print(f"\n{len(calls)} calls")
    assert passed_twice(len(calls)), len(calls)
    assert server.controller.state(ROUTE, time.time()) is State.RAMPING
    assert {variant for variant, _ in calls} == {"stable", "candidate"}


# 9. Over TLS.


async def test_a_unary_call_over_tls_with_alpn_h2(
    peers, start_proxy, channels, tmp_path: Path
) -> None:
    authority = Authority(tmp_path)
    pem = authority.issue()
    tls = f', tls: {{cert_file: "{pem.cert}", key_file: "{pem.key}"}}' + H2
    server = await grpc_proxy(start_proxy, peers, server_fields=tls)
    assert server.proxy_url.startswith("https://")
    credentials = grpc.ssl_channel_credentials(root_certificates=authority.ca_file.read_bytes())
    methods = Methods.on(channels(server, credentials))
    call = await unary(methods, b"secure", "alice")
    assert await call.code() == grpc.StatusCode.OK, await call.details()
    assert await call == b"stable:secure"
    assert await variant_of(call) == "stable"
    (seen,) = peers[0].calls
    assert seen.metadata.get("x-forwarded-proto") == "https"
