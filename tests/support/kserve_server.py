"""A small KServe v2 ("Triton") gRPC inference server for tests, on grpcio's asyncio API with the
stubs generated in tritonclient (`inference.GRPCInferenceService`), so that Triton's own client
can talk to it through the proxy.

It serves one model, `adder`: one FP32 input `INPUT0` of shape [-1] and one output `OUTPUT0` =
INPUT0 + 1 (sent in `raw_output_contents`; the input read from `raw_input_contents`, as
tritonclient sends it, or from `contents`). Only `ServerLive`, `ServerReady`, `ModelReady`,
`ModelMetadata` and `ModelInfer` are implemented (the rest answer UNIMPLEMENTED). `version` tells
two servers apart: it is the model's only version, in its metadata and in every answer's
`model_version`. `failure_rate` aborts that share of `ModelInfer` calls with UNAVAILABLE, spread
evenly and deterministic (call n fails when n * rate passes a whole number).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import grpc  # type: ignore[import-untyped]
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc  # type: ignore[import-untyped]

MODEL = "adder"
INPUT, OUTPUT = "INPUT0", "OUTPUT0"


@dataclass
class Infer:
    """One ModelInfer call as the server received it."""

    user: str | None  # its `x-user-id` metadata
    failed: bool  # aborted on purpose (UNAVAILABLE)


@dataclass
class KServeServer:
    """A KServe v2 server on 127.0.0.1 and the switches a test flips (read at each call)."""

    version: str  # the model's version: "1" on stable, "2" on candidate, say
    failure_rate: float = 0.0  # share of ModelInfer calls aborted with UNAVAILABLE
    infers: list[Infer] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)  # calls received, by method
    server: Any = None  # the grpc.aio.Server
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The upstream URL for a Grayscale route (h2c)."""
        return f"http://{self.address}"

    @property
    def failures(self) -> int:
        return sum(infer.failed for infer in self.infers)

    def _fails(self, index: int) -> bool:
        rate = Fraction(self.failure_rate).limit_denominator(1000)
        return (index + 1) * rate // 1 > index * rate // 1

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


class _Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The methods, named as the stubs name them."""

    def __init__(self, state: KServeServer) -> None:
        self.state = state

    def _count(self, method: str) -> None:
        self.state.calls[method] = self.state.calls.get(method, 0) + 1

    async def ServerLive(self, request: Any, context: Any) -> Any:
        self._count("ServerLive")
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        self._count("ServerReady")
        return service_pb2.ServerReadyResponse(ready=True)

    def _known(self, name: str, version: str) -> bool:
        return name == MODEL and version in ("", self.state.version)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        self._count("ModelReady")
        return service_pb2.ModelReadyResponse(ready=self._known(request.name, request.version))

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        self._count("ModelMetadata")
        if not self._known(request.name, request.version):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=MODEL,
            versions=[self.state.version],
            platform="grayscale_test",
            inputs=[tensor(name=INPUT, datatype="FP32", shape=[-1])],
            outputs=[tensor(name=OUTPUT, datatype="FP32", shape=[-1])],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self._count("ModelInfer")
        state = self.state
        metadata = dict(context.invocation_metadata() or ())
        failed = state._fails(len(state.infers))
        state.infers.append(Infer(metadata.get("x-user-id"), failed))
        if failed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"model version {state.version} busy")
        if not self._known(request.model_name, request.model_version):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.model_name}'")
        inputs = [tensor for tensor in request.inputs if tensor.name == INPUT]
        if len(inputs) != 1 or inputs[0].datatype != "FP32":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expected one FP32 {INPUT}")
        index = list(request.inputs).index(inputs[0])
        if request.raw_input_contents:
            values = np.frombuffer(request.raw_input_contents[index], dtype="<f4")
        else:
            values = np.array(inputs[0].contents.fp32_contents, dtype="<f4")
        output = service_pb2.ModelInferResponse.InferOutputTensor(
            name=OUTPUT, datatype="FP32", shape=[len(values)]
        )
        return service_pb2.ModelInferResponse(
            model_name=MODEL,
            model_version=state.version,
            id=request.id,
            outputs=[output],
            raw_output_contents=[(values + np.float32(1.0)).astype("<f4").tobytes()],
        )


async def start_kserve(version: str, **switches: Any) -> KServeServer:
    """A KServe v2 server whose model is at `version`, on a free port of 127.0.0.1."""
    state = KServeServer(version, **switches)
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(state), server)
    state.port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    state.server = server
    return state
