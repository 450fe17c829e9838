"""Triton's own client (`tritonclient.grpc.aio`) through the proxy to two KServe v2 gRPC servers
(`tests/support/kserve_server.py`, the model `adder` at version "1" on stable and "2" on
candidate): health and metadata calls and inference pass, a user's calls stick to one variant,
and a candidate failing 30 % of its inferences with UNAVAILABLE is counted as failing while the
client sees Triton's InferenceServerException.

tritonclient's aio client does not show a call's initial metadata (`x-grayscale-variant`): the
variant that answered is read from the answer's `model_version` and the servers' records."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc  # type: ignore[import-untyped]
import numpy as np
import pytest
import tritonclient.grpc.aio as triton  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from proxy.app.server import Server
from tests.support.kserve_server import INPUT, MODEL, OUTPUT, KServeServer, start_kserve
from tests.support.proxies import ProxyFactory
from tests.support.waiting import eventually

ROUTE = "triton"
VERSIONS = {"stable": "1", "candidate": "2"}  # the model's version on each variant
TIMEOUT = 5.0  # every call's deadline (tritonclient's client_timeout)


def triton_route(stable: KServeServer, candidate: KServeServer, share: float) -> str:
    """The KServe service's methods between two h2c upstreams, sticky on `x-user-id`."""
    upstream = "timeout: 10s, connect_timeout: 1s, http2: true"
    return (
        f"  - name: {ROUTE}\n"
        '    match: {path_prefix: "/inference.GRPCInferenceService/"}\n'
        f'    stable: {{url: "{stable.url}", {upstream}}}\n'
        f'    candidate: {{url: "{candidate.url}", {upstream}}}\n'
        f'    cohort: {{keys: ["header:x-user-id"], salt: "{ROUTE}-salt"}}\n'
        f"    ramp: {{base: {share}}}\n"
        "    fallback: never\n"
        "    ejection: false\n"
    )


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, KServeServer]]:
    """A stable (version "1") and a candidate (version "2") KServe server, stopped after."""
    started = {variant: await start_kserve(version) for variant, version in VERSIONS.items()}
    yield started
    for server in started.values():
        await server.stop()


@pytest.fixture
async def triton_proxy(
    servers: dict[str, KServeServer], start_proxy: ProxyFactory
) -> AsyncIterator[Any]:
    """`start(share)`: a proxy (h2c) in front of `servers` and a tritonclient aio client to it,
    closed after the test."""
    clients: list[Any] = []

    async def start(share: float) -> tuple[Server, Any]:
        route = triton_route(servers["stable"], servers["candidate"], share)
        proxy = await start_proxy(route, ", http2: true")
        host, port = proxy.listener.address[:2]
        client = triton.InferenceServerClient(url=f"{host}:{port}")
        clients.append(client)
        return proxy, client

    yield start
    for client in clients:
        await client.close()


async def infer(client: Any, values: list[float], user: str) -> Any:
    """An inference of `adder` on `values` by `user` (an InferResult; raises on a failure)."""
    array = np.array(values, dtype=np.float32)
    tensor = triton.InferInput(INPUT, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)  # (sent in raw_input_contents)
    return await client.infer(
        MODEL,
        [tensor],
        outputs=[triton.InferRequestedOutput(OUTPUT)],
        headers={"x-user-id": user},
        client_timeout=TIMEOUT,
    )


def requests(proxy: Server, variant: str, code_class: str) -> float:
    labels = {"route": ROUTE, "variant": variant, "code_class": code_class}
    return proxy.recorder.registry.get_sample_value("grayscale_requests_total", labels) or 0.0


def upstream_errors(proxy: Server, variant: str) -> dict[str, float]:
    """grayscale_upstream_errors_total for the route and `variant`, by reason (those above 0)."""
    found: dict[str, float] = {}
    for family in proxy.recorder.registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "grayscale_upstream_errors_total"
                and labels.get("route") == ROUTE
                and labels.get("variant") == variant
                and sample.value  # (the reasons not seen are at 0)
            ):
                found[str(labels["reason"])] = sample.value
    return found


# 1. Health, metadata and inference, on the variant the share sends them to.


@pytest.mark.parametrize(("share", "variant"), [(0.0, "stable"), (1.0, "candidate")])
async def test_tritonclient_health_metadata_and_infer_pass_to_the_chosen_variant(
    servers, triton_proxy, share: float, variant: str
) -> None:
    proxy, client = await triton_proxy(share)
    user = {"x-user-id": "alice"}
    version = VERSIONS[variant]
    assert await client.is_server_live(headers=user, client_timeout=TIMEOUT) is True
    assert await client.is_server_ready(headers=user, client_timeout=TIMEOUT) is True
    assert await client.is_model_ready(MODEL, headers=user, client_timeout=TIMEOUT) is True
    assert await client.is_model_ready("absent", headers=user, client_timeout=TIMEOUT) is False
    metadata = await client.get_model_metadata(
        MODEL, headers=user, as_json=True, client_timeout=TIMEOUT
    )
    assert metadata["name"] == MODEL and metadata["versions"] == [version]
    assert metadata["inputs"] == [{"name": INPUT, "datatype": "FP32", "shape": ["-1"]}]
    assert metadata["outputs"] == [{"name": OUTPUT, "datatype": "FP32", "shape": ["-1"]}]

    values = [0.0, 1.5, -2.0, 1e6, 3.25]
    result = await infer(client, values, "alice")
    output = result.as_numpy(OUTPUT)
    assert output.dtype == np.float32 and output.shape == (5,)
    np.testing.assert_array_equal(output, np.array(values, dtype=np.float32) + 1)
    assert result.get_response().model_version == version

    # the variant's initial metadata, read with the same generated stubs on a grpcio channel
    host, port = proxy.listener.address[:2]
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ServerLive(
            service_pb2.ServerLiveRequest(), metadata=tuple(user.items()), timeout=TIMEOUT
        )
        assert (await call).live
        assert (await call.initial_metadata()).get("x-grayscale-variant") == variant

    answered, other = servers[variant], servers["candidate" if share == 0 else "stable"]
    assert answered.calls == {
        "ServerLive": 2,
        "ServerReady": 1,
        "ModelReady": 2,
        "ModelMetadata": 1,
        "ModelInfer": 1,
    }
    assert other.calls == {}
    assert [infer.user for infer in answered.infers] == ["alice"]
    assert await eventually(lambda: requests(proxy, variant, "2xx") == 7)
    assert upstream_errors(proxy, variant) == {}


# 2. Stickiness.


async def test_a_users_inferences_stay_on_one_variant_and_both_variants_get_users(
    servers, triton_proxy
) -> None:
    _, client = await triton_proxy(0.5)
    chosen: dict[str, set[str]] = {}
    for round_ in range(3):
        for n in range(30):
            user = f"user-{n}"
            result = await infer(client, [float(n), float(round_)], user)
            np.testing.assert_array_equal(result.as_numpy(OUTPUT), [n + 1.0, round_ + 1.0])
            chosen.setdefault(user, set()).add(result.get_response().model_version)
            metadata = await client.get_model_metadata(
                MODEL, headers={"x-user-id": user}, client_timeout=TIMEOUT
            )  # (any call of the user's: the same variant)
            assert list(metadata.versions) == [result.get_response().model_version]
    assert all(len(versions) == 1 for versions in chosen.values()), chosen
    assert {version for (version,) in chosen.values()} == {"1", "2"}
    # the servers agree: each saw only its users, each of those three times
    for variant, server in servers.items():
        users = {user for user, (version,) in chosen.items() if version == VERSIONS[variant]}
        assert Counter(infer.user for infer in server.infers) == dict.fromkeys(users, 3)


# 3. A failing candidate.


async def test_a_candidate_failing_30_percent_of_inferences_counts_as_failing(
    servers, triton_proxy
) -> None:
    candidate = servers["candidate"]
    candidate.failure_rate = 0.3
    proxy, client = await triton_proxy(0.5)
    failed: list[tuple[str, InferenceServerException]] = []
    answered: dict[str, int] = {"1": 0, "2": 0}
    for n in range(60):
        user = f"user-{n}"
        try:
            result = await infer(client, [float(n)], user)
        except InferenceServerException as error:
            failed.append((user, error))
            continue
        np.testing.assert_array_equal(result.as_numpy(OUTPUT), [n + 1.0])
        answered[result.get_response().model_version] += 1

    on_candidate = len(candidate.infers)
    assert on_candidate >= 10 and answered["1"] >= 10, (on_candidate, answered)
    assert candidate.failures == len(failed) == on_candidate * 3 // 10  # (evenly spread)
    assert answered["2"] == on_candidate - len(failed)
    for user, exception in failed:
        assert exception.status() == "StatusCode.UNAVAILABLE", exception
        assert exception.message() == "model version 2 busy"
        assert user in {infer.user for infer in candidate.infers if infer.failed}
    assert servers["stable"].failures == 0

    def counted() -> bool:
        return (
            requests(proxy, "candidate", "error") == len(failed)
            and requests(proxy, "candidate", "2xx") == answered["2"]
            and requests(proxy, "stable", "2xx") == answered["1"]
        )

    assert await eventually(counted)
    assert upstream_errors(proxy, "candidate") == {"grpc_status": len(failed)}
    assert upstream_errors(proxy, "stable") == {}
    assert requests(proxy, "stable", "error") == 0
