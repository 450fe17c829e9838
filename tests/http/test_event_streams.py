"""Time to first token on event streams as upstreams really send them: any case of the media
type (RFC 9110 §8.3.1), and lines ended by CR, LF or CRLF (the event-stream format allows all
three). A raw upstream sends a role-only frame at once and its first token later; the proxy's
metrics must show the token's time, not the first byte's."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app.server import Server
from proxy.dataplane.stream_meter import StreamMeter
from tests.support.raw_peers import GatewayFactory, PeerConnection, RawClient, Script

ROLE = b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}'
TOKEN = b'data: {"choices": [{"delta": {"content": "Hello"}}]}'
DELAY = 0.3  # between the role frame and the first token


def streaming(content_type: bytes, end: bytes) -> Script:
    """A script that streams ROLE at once and TOKEN after DELAY, lines ended by `end`."""

    async def script(connection: PeerConnection, index: int) -> None:
        await connection.request()
        connection.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
            % content_type
        )
        for event, pause in ((ROLE, DELAY), (TOKEN, 0.0)):
            frame = event + end + end
            connection.send(b"%x\r\n%s\r\n" % (len(frame), frame))
            await asyncio.sleep(pause)
        connection.send(b"0\r\n\r\n")

    return script


async def first_token_seconds(proxy: Server) -> tuple[float, float]:
    """The count and sum of the time-to-first-token histogram, over every variant."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.admin_url}/metrics") as response,
    ):
        text = await response.text()
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "grayscale_time_to_first_token_seconds_count":
                count += sample.value
            elif sample.name == "grayscale_time_to_first_token_seconds_sum":
                total += sample.value
    return count, total


async def stream_through(gateway: GatewayFactory, content_type: bytes, end: bytes) -> Server:
    proxy, _ = await gateway(streaming(content_type, end))
    client = await RawClient.connect(proxy.proxy_url)
    await client.send(b"POST /v1/chat HTTP/1.1\r\nHost: models.test\r\nContent-Length: 2\r\n\r\n{}")
    got = await client.answer()
    assert (got.status, got.clean) == (200, True)
    assert got.body == ROLE + end + end + TOKEN + end + end  # passed on as sent
    assert got.header("x-accel-buffering") == "no"  # read as an event stream
    client.close()
    return proxy


@pytest.mark.parametrize(
    "content_type",
    [b"Text/Event-Stream", b"TEXT/EVENT-STREAM; charset=utf-8", b"text/event-stream ;charset=x"],
)
async def test_the_media_type_is_read_in_any_case(gateway: GatewayFactory, content_type) -> None:
    proxy = await stream_through(gateway, content_type, b"\n")
    count, total = await first_token_seconds(proxy)
    assert count == 1
    # the token's time, not the role frame's (a timer may fire a millisecond early)
    assert DELAY - 0.01 <= total < DELAY + 0.25, total


@pytest.mark.parametrize("end", [b"\r", b"\r\n", b"\n"], ids=["cr", "crlf", "lf"])
async def test_every_line_end_of_the_format_is_read(gateway: GatewayFactory, end: bytes) -> None:
    proxy = await stream_through(gateway, b"text/event-stream", end)
    count, total = await first_token_seconds(proxy)
    assert count == 1
    assert DELAY - 0.01 <= total < DELAY + 0.25, total  # (a timer may fire a little early)


async def test_another_media_type_that_begins_alike_is_not_an_event_stream(
    gateway: GatewayFactory,
) -> None:
    proxy, _ = await gateway(streaming(b"text/event-streams", b"\n"))
    client = await RawClient.connect(proxy.proxy_url)
    await client.send(b"GET /v1/chat HTTP/1.1\r\nHost: models.test\r\n\r\n")
    got = await client.answer()
    assert got.status == 200 and got.header("x-accel-buffering") is None
    count, total = await first_token_seconds(proxy)
    assert count == 1 and total < DELAY  # not an event stream: its first byte


# --- the meter itself, line ends split anywhere -----------------------------------------------


def events(end: bytes) -> bytes:
    comment = b": keep-alive" + end
    return comment + ROLE + end + end + b"event: x" + end + TOKEN + end + end


@pytest.mark.parametrize("end", [b"\r", b"\r\n", b"\n"], ids=["cr", "crlf", "lf"])
def test_the_first_token_passes_with_the_end_of_its_event_however_the_stream_is_cut(end) -> None:
    stream = events(end)
    blank = len(stream) - len(end)  # the blank line that ends TOKEN's event: ended at its CR
    for cuts in itertools.combinations(range(1, len(stream)), 2):
        bounds = (0, *cuts, len(stream))
        meter = StreamMeter()
        for at, (a, b) in enumerate(itertools.pairwise(bounds)):
            meter.feed(stream[a:b], float(at))
        holding = next(i for i, b in enumerate(bounds[1:]) if b > blank)
        assert meter.first_token == float(holding), (end, cuts)


def test_a_crlf_split_over_two_chunks_is_one_line_end() -> None:
    meter = StreamMeter()
    meter.feed(b'data: {"choices": [{"delta":\r', 0.0)
    meter.feed(b'\ndata: {"content": "a"}}]}\r\n', 1.0)  # one event of two data lines
    assert meter.first_token is None
    meter.feed(b"\r\n", 2.0)
    assert meter.first_token == 2.0
    meter = StreamMeter()
    meter.feed(TOKEN + b"\r", 0.0)
    meter.feed(b"\r", 1.0)  # a lone CR after a CR: the blank line that ends the event
    assert meter.first_token == 1.0
