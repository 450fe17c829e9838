"""What happened to one request, and the parts of the proxy that are told of it.

Invariants
- An outcome is made once, when its request is over (answered, failed, or left by its client),
  and never changed; every observer sees the same one.
- States are explicit, not sentinels: `status` is None when the client left before an answer
  started (counted as 499, as nginx does); `error` names the answering variant's upstream
  failure, if any; when stable answered in the candidate's place, `candidate_error` or
  `candidate_status` says how the candidate failed (unreachable, or a 5xx replayed); `refused`
  marks a request the proxy answered itself before any upstream saw it (a body over
  `server.max_body_bytes`).
- Overload is nobody's failure: the proxy's own 503 when an upstream's slots and queue are full
  (`Failure.OVERLOADED`) is counted in the metrics, as the client saw it, but never `failed` nor
  `candidate_failed`, so it neither counts against a variant in the analysis nor ejects it.
- This module imports neither the HTTP code nor the analysis: whoever observes outcomes can be
  tested without sockets.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple, Protocol

from proxy.config.model import Variant
from proxy.routing import Decision

CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer started


class Failure(StrEnum):
    """Why an upstream exchange failed."""

    CONNECT = "connect"  # unreachable, refused, or not connected in time
    TIMEOUT = "timeout"  # no answer head, or a silent body, in time
    RESET = "reset"  # the connection closed before the answer was complete
    PROTOCOL = "protocol"  # the answer was not valid HTTP/1.1
    OVERLOADED = "overloaded"  # no free connection slot in time
    GRPC_STATUS = "grpc_status"  # a gRPC call ended with a status of the route's grpc_error_codes


class FallbackReason(StrEnum):
    """Why a request for the candidate was served by stable."""

    CONNECT = "connect"
    OVERLOADED = "overloaded"
    FIVE_XX = "5xx"
    EJECTED = "ejected"


class RequestOutcome(NamedTuple):
    """One finished request (a tuple: made for every request, it must be cheap to make)."""

    at: float  # wall time of its arrival
    route: str
    method: str
    decision: Decision
    variant: Variant  # the variant that answered, or was being asked when the client left
    status: int | None  # the status sent to the client; None: the client left first
    error: Failure | None = None
    refused: bool = False
    duration: float = 0.0  # seconds from arrival to the last byte sent
    ttfb: float | None = None  # seconds from sending upstream to the answer body's first byte
    bytes_in: int = 0
    bytes_out: int = 0
    fallback: FallbackReason | None = None
    candidate_error: Failure | None = None
    candidate_status: int | None = None
    ttft: float | None = None  # seconds from sending upstream to the first token (see forwarding)
    output_tokens: int | None = None  # as the answer's `usage` said, if it did
    request_id: bytes | None = None  # the `X-Grayscale-Request-Id` the answer carried
    candidate_out: bool = False  # the candidate was ejected when the request was assigned
    grpc_status: int | None = None  # the status that ended a gRPC call, if it was one

    @property
    def code(self) -> int:
        """The status as logged and counted: 499 when the client left first."""
        return CLIENT_CLOSED if self.status is None else self.status

    @property
    def overloaded(self) -> bool:
        """Whether an upstream's slots and queue were full: the proxy answered 503 itself, or
        sent the candidate's request to stable."""
        return self.error is Failure.OVERLOADED or self.candidate_error is Failure.OVERLOADED

    @property
    def failed(self) -> bool:
        """Whether the answering variant failed: an upstream failure or a 5xx. The proxy's own
        overload answer is nobody's failure: the upstream was never asked."""
        error = self.error
        if error is not None:
            return error is not Failure.OVERLOADED
        return self.status is not None and self.status >= 500

    @property
    def candidate_failed(self) -> bool:
        """Whether the candidate failed this request, stable answering in its place (a
        candidate out of free slots did not fail: it was never asked)."""
        error = self.candidate_error
        return (error is not None and error is not Failure.OVERLOADED) or (
            self.candidate_status is not None
        )


class Observer(Protocol):
    """Something told of every finished request: metrics, analysis windows, ejection, access log.

    `record` runs on the event loop for every request: it must be quick and never wait."""

    def record(self, outcome: RequestOutcome) -> None: ...
