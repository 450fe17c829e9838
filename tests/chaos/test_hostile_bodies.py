"""Request bodies built to make routing by `model` expensive: each is answered in a bounded time
with a clear 400 (or routed, when it is valid and within bounds), while the event loop keeps
answering and memory stays flat. Before the value bound, the first body froze the process for
13.5 s and the array of empty objects grew it by 260 MiB."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.proxies import serve_subprocess
from tests.support.stall_watch import watching
from tests.support.upstream import url_of

MiB = 1024 * 1024
HOSTILE = {
    "two million members": (
        b'{"model":"llama",' + b'"":0,' * 2_097_102 + b'"":0}',
        400,
        "holds more than 100000 JSON values",
    ),
    "an array of empty objects": (
        b'{"model":"llama","a":[' + b"{}," * 3_400_000 + b"{}]}",
        400,
        "holds more than 100000 JSON values",
    ),
    "whitespace padding": (b'{"model":"llama", "a":' + b" " * (10 * MiB - 64) + b"1}", 200, ""),
    "a 4,301-digit number": (b'{"model":"llama","n":' + b"1" * 4301 + b"}", 400, "cannot be read"),
    "model in capitals": (b'{"model":"llama","MODEL":"other"}', 400, "write it 'model'"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_hostile_model_body_costs_a_bounded_time_and_no_memory(name, upstreams, tmp_path):
    body, status, message = HOSTILE[name]
    assert len(body) <= 10 * MiB  # (within the default max_body_bytes)
    stable, candidate = upstreams
    config = tmp_path / "grayscale.yaml"
    config.write_text(
        'server: {listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}\n'
        "state: {backend: memory}\nroutes:\n"
        "  - name: llama\n"
        "    match: {path_prefix: /v1/, model: [llama]}\n"
        f'    stable: {{url: "{url_of(stable)}"}}\n'
        f'    candidate: {{url: "{url_of(candidate)}"}}\n'
        '    cohort: {keys: ["header:X-User-Id"]}\n'
    )
    served = await serve_subprocess(config)
    try:
        async with (
            watching(served.process.pid, served.admin_url) as watch,
            aiohttp.ClientSession() as session,
            session.post(
                served.proxy_url + "/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json", "X-User-Id": "u1"},
            ) as response,
        ):
            answer = await response.read()
        print(
            f"\n{name}: {response.status}, the loop stalled {watch.stall * 1000:.0f} ms at most, "
            f"memory grew {watch.grown_mib:.1f} MiB"
        )
        assert response.status == status, answer[:200]
        assert message.encode() in answer
        assert watch.stall < 0.4  # (2.6 s before on a 2-core machine, 13.5 s on a slower one)
        assert watch.grown_mib < 60  # (the body itself is 10 MiB, held once or twice)
    finally:
        served.process.terminate()
        await served.process.wait()
