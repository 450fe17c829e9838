"""Immutable, validated configuration objects.

The YAML loader (`proxy.config.loader`, with its section readers) is the only producer of these
objects but `LoadOptions`, which the command line gives it; everything else reads them. All
durations are seconds, all times are POSIX timestamps (UTC), all shares are fractions in [0, 1].
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Variant(StrEnum):
    """The two upstreams a route splits traffic between."""

    STABLE = "stable"
    CANDIDATE = "candidate"


class Missing(StrEnum):
    """What happens to a request that carries no cohort key."""

    STABLE = "stable"
    RANDOM = "random"


class Source(StrEnum):
    """Where a request attribute is read from."""

    HEADER = "header"
    COOKIE = "cookie"
    QUERY = "query"


@dataclass(frozen=True, slots=True)
class Listen:
    """A host and port to bind."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class TlsVersion(StrEnum):
    """The oldest TLS version a listener accepts."""

    TLS_1_2 = "1.2"
    TLS_1_3 = "1.3"


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """TLS on a listener: its certificate chain and private key (PEM files, read again on every
    reload) and the oldest version it accepts."""

    cert_file: str
    key_file: str
    min_version: TlsVersion = TlsVersion.TLS_1_2


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Listeners, trusted proxies, request limits and shutdown timing.

    A request body that stops arriving for `client_body_timeout` is answered 408; a client that
    takes no part of an answer for `send_timeout` is cut off. On SIGTERM the proxy reports
    not-ready, keeps accepting for `shutdown_delay` (so load balancers notice), stops accepting,
    and lets requests in flight finish for `drain_timeout`. `workers` processes serve the same
    ports. With `http2`, a connection that opens with the HTTP/2 preface is served as HTTP/2
    (h2c with prior knowledge), at most `http2_max_streams` streams at once. With `tls` (and
    `admin_tls`), the proxy's (and the admin API's) listener speaks only TLS.
    """

    listen: Listen = Listen("127.0.0.1", 8080)
    admin_listen: Listen = Listen("127.0.0.1", 9901)
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_body_bytes: int = 10 * 1024 * 1024
    max_json_values: int = 100_000  # values a body may hold to be read for its `model`
    max_event_bytes: int = 1024 * 1024  # bytes of one stream event metered (beyond: forwarded)
    request_buffer_bytes: int = 1024 * 1024  # of a request body, read before an upstream is asked
    client_body_timeout: float = 60.0
    send_timeout: float = 60.0
    shutdown_delay: float = 0.0
    drain_timeout: float = 30.0
    workers: int = 1
    http2: bool = False  # HTTP/2 with prior knowledge on `listen`, beside HTTP/1.x
    http2_max_streams: int = 100  # streams open at once on one HTTP/2 connection
    tls: ListenerTls | None = None  # TLS on `listen`
    admin_tls: ListenerTls | None = None  # TLS on `admin_listen`


@dataclass(frozen=True, slots=True)
class Upstream:
    """One inference server: base URL, timeouts (seconds) and connection limits.

    `first_byte_timeout` bounds the wait for the answer's headers, `idle_timeout` the silence
    between two chunks of a streamed answer, `timeout` the whole exchange. At most
    `max_connections` requests are in flight to it; `max_pending` more may wait for a slot, and
    beyond that requests are refused with 503. A connection idle for `keepalive_timeout` is not
    reused (0: never reused). An https upstream's certificate is checked against the system's
    authorities, or those in `ca_file`, for `server_name` (sent as SNI) or else the URL's host;
    the proxy shows it `client_cert_file` with `client_key_file` when it asks for a client
    certificate (mutual TLS). With `model`, the JSON body's `model` is rewritten to it on the way
    to this upstream (a candidate that names its model differently).
    """

    url: str
    connect_timeout: float = 5.0
    first_byte_timeout: float = 60.0
    idle_timeout: float = 60.0
    timeout: float = 300.0
    max_connections: int = 1024  # (Envoy's circuit breaker defaults)
    max_pending: int = 1024
    keepalive_timeout: float = 4.0
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    server_name: str | None = None
    model: str | None = None
    http2: bool = False  # spoken to in HTTP/2 (h2c for http://, ALPN h2 for https://): gRPC


class GrpcStatus(IntEnum):
    """The status codes of gRPC (grpc/doc/statuscodes.md)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# The codes a server's fault gives (those gRPC maps from HTTP 5xx, and DEADLINE_EXCEEDED): a call
# that ends with one counts as an error of the variant that answered it; the others are the
# caller's (INVALID_ARGUMENT, NOT_FOUND...) or a choice (CANCELLED).
GRPC_ERROR_CODES = frozenset(
    {
        GrpcStatus.UNKNOWN,
        GrpcStatus.DEADLINE_EXCEEDED,
        GrpcStatus.UNIMPLEMENTED,
        GrpcStatus.INTERNAL,
        GrpcStatus.UNAVAILABLE,
        GrpcStatus.DATA_LOSS,
    }
)


@dataclass(frozen=True, slots=True)
class KeySource:
    """One place a request attribute can come from, e.g. `header:X-User-Id`."""

    source: Source
    name: str

    def __str__(self) -> str:
        return f"{self.source.value}:{self.name}"


@dataclass(frozen=True, slots=True)
class Cohort:
    """How a request's sticky cohort key is found and hashed."""

    keys: tuple[KeySource, ...]
    salt: str
    missing: Missing = Missing.STABLE


@dataclass(frozen=True, slots=True)
class Ramp:
    """The linear ramp `share(t) = clamp(base + slope * (t - start) / per, 0, max)`.

    `start` is None when the rollout starts the moment the route is first loaded.
    """

    start: float | None = None
    base: float = 0.0
    slope: float = 0.0
    per: float = 86400.0
    max: float = 1.0


@dataclass(frozen=True, slots=True)
class AttributeCondition:
    """Matches when a header, cookie or query parameter equals one of `values`."""

    key: KeySource
    values: frozenset[str]


@dataclass(frozen=True, slots=True)
class PathPrefixCondition:
    """Matches when the request path starts with one of `prefixes`."""

    prefixes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClientIpCondition:
    """Matches when the client address lies in one of `networks`."""

    networks: tuple[IPNetwork, ...]


@dataclass(frozen=True, slots=True)
class UserIdCondition:
    """Matches when the request's cohort key is one of `ids` (allow and deny lists)."""

    ids: frozenset[str]


Condition = AttributeCondition | PathPrefixCondition | ClientIpCondition | UserIdCondition


@dataclass(frozen=True, slots=True)
class Segment:
    """A named group of requests with its own share (`ramp`) or a pinned `variant`.

    It matches when every `when` condition matches and no `unless` condition does.
    Exactly one of `variant` and `ramp` is set.
    """

    name: str
    when: tuple[Condition, ...]
    unless: tuple[Condition, ...] = ()
    variant: Variant | None = None
    ramp: Ramp | None = None


class LatencyMeasure(StrEnum):
    """Which latency the analysis compares."""

    DURATION = "duration"  # request arrival to last byte sent
    TTFB = "ttfb"  # upstream time to the answer body's first byte
    TTFT = "ttft"  # time to first token: the first event with content (first byte if not a stream)


class AnalysisMethod(StrEnum):
    """How the checks' bounds are made."""

    FIXED = "fixed"  # fixed-sample bounds over the sliding window
    SEQUENTIAL = "sequential"  # always-valid bounds over everything since the rollout began


class Inconclusive(StrEnum):
    """What the ramp does while the data is too thin for a verdict."""

    HOLD = "hold"
    CONTINUE = "continue"


class OnError(StrEnum):
    """What follows `max_errors_in_a_row` verdicts that could not be measured."""

    HOLD = "hold"  # keep the ramp held, and say so loudly (status, metrics, a warning a round)
    ROLLBACK = "rollback"


OUTCOME_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # an outcome's name, in configs and reports
MAX_OUTCOME = 1e12  # the largest outcome value either way: a million of its squares sum to 1e30


class OutcomeBasis(StrEnum):
    """What an outcome's mean is taken over."""

    REQUEST = "request"  # the sum of its values over the variant's requests (e.g. clicks)
    OUTCOME = "outcome"  # the reported values themselves (e.g. a rating)


@dataclass(frozen=True, slots=True)
class OutcomeCheck:
    """The candidate's mean of outcome `name` may not fall below stable's by more than
    `max_decrease` (a fraction of stable's mean if `relative`); reports of it lie in `range`."""

    name: str
    max_decrease: float
    relative: bool = False
    per: OutcomeBasis = OutcomeBasis.REQUEST
    range: tuple[float, float] = (0.0, 1.0)  # the lowest and highest value a report may have


class Comparison(StrEnum):
    """How a metric check judges the candidate's value (`c`) against stable's (`s`)."""

    MAX_INCREASE = "max_increase"  # fails when c - s > limit
    MAX_DECREASE = "max_decrease"  # fails when s - c > limit
    MAX_RATIO = "max_ratio"  # fails when c / s > limit (s must be above 0)
    MIN_RATIO = "min_ratio"  # fails when c / s < limit (s must be above 0)
    MAX = "max"  # fails when c > limit
    MIN = "min"  # fails when c < limit


METRIC_PLACEHOLDERS = ("route", "variant", "host", "window")  # {{...}} in a metric's query
METRIC_PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")


@dataclass(frozen=True, slots=True)
class MetricCheck:
    """A PromQL query run once per variant (its `{{route}}`, `{{variant}}`, `{{host}}` and
    `{{window}}` filled in), the candidate's value judged by every limit."""

    name: str
    query: str
    limits: tuple[tuple[Comparison, float], ...]


@dataclass(frozen=True, slots=True)
class PrometheusSource:
    """The Prometheus (or any server of its query API) that metric checks ask; the bearer
    token, if any, is read from environment variable `token_env`."""

    url: str
    timeout: float = 5.0
    token_env: str | None = None
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class AnalysisSpec:
    """How a route's candidate is judged against stable, and when it is rolled back."""

    interval: float = 10.0
    window: float = 60.0
    min_requests: int = 200
    max_error_rate_increase: float = 0.01
    max_latency_ratio: float = 1.5
    latency_quantile: float = 0.95
    latency: LatencyMeasure = LatencyMeasure.DURATION
    confidence: float = 0.95
    failures_before_rollback: int = 3
    on_inconclusive: Inconclusive = Inconclusive.HOLD
    max_errors_in_a_row: int = 4  # verdicts that could not be measured, before `on_error`
    on_error: OnError = OnError.HOLD
    outcomes: tuple[OutcomeCheck, ...] = ()
    method: AnalysisMethod = AnalysisMethod.SEQUENTIAL
    prometheus: PrometheusSource | None = None
    metrics: tuple[MetricCheck, ...] = ()


@dataclass(frozen=True, slots=True)
class Promotion:
    """Promote on its own: once the ramp is at its `max` and the verdicts have passed for
    `after` seconds without a failure."""

    after: float


@dataclass(frozen=True, slots=True)
class RollbackHook:
    """A URL that is POSTed a JSON account of every rollback (`on_rollback`) or automatic
    promotion (`on_promote`)."""

    webhook: str
    timeout: float = 5.0
    attempts: int = 3


class Fallback(StrEnum):
    """When a request meant for the candidate is retried on stable."""

    NEVER = "never"
    ON_CONNECT_ERROR = "on_connect_error"
    ON_CONNECT_ERROR_OR_5XX = "on_connect_error_or_5xx"


@dataclass(frozen=True, slots=True)
class Ejection:
    """Outlier ejection of the candidate: after `consecutive_errors` connect errors or 5xx in a
    row, its traffic goes to stable for `base_time` times the number of ejections so far (at
    most `max_time`)."""

    consecutive_errors: int = 5
    base_time: float = 30.0
    max_time: float = 300.0


@dataclass(frozen=True, slots=True)
class Route:
    """Requests under `path_prefix` (and, if `models` are named, whose JSON body's `model` is
    one of them), split between `stable` and `candidate`."""

    name: str
    path_prefix: str
    stable: Upstream
    candidate: Upstream
    cohort: Cohort
    ramp: Ramp = Ramp()
    segments: tuple[Segment, ...] = ()
    analysis: AnalysisSpec | None = None
    on_rollback: RollbackHook | None = None
    promote: Promotion | None = None
    on_promote: RollbackHook | None = None
    fallback: Fallback = Fallback.ON_CONNECT_ERROR
    ejection: Ejection | None = Ejection()
    models: tuple[str, ...] = ()
    shadow: Shadow | None = None
    websocket: bool = True  # WebSocket upgrades are tunnelled to the chosen variant
    grpc_error_codes: frozenset[GrpcStatus] = GRPC_ERROR_CODES

    @property
    def reads_body(self) -> bool:
        """Whether a request's body is read whole before it is forwarded (to route on its
        `model`, or to rewrite it)."""
        return bool(self.models) or bool(self.stable.model) or bool(self.candidate.model)


@dataclass(frozen=True, slots=True)
class ExactCompare:
    """Answers agree when their status and body bytes are equal."""


@dataclass(frozen=True, slots=True)
class JsonCompare:
    """Answers agree when their status is equal and so are the JSON values at `fields` (dotted
    paths, list items by index: `choices.0.message.content`), numbers within `tolerance`."""

    fields: tuple[str, ...]
    tolerance: float = 0.0


@dataclass(frozen=True, slots=True)
class TextCompare:
    """Answers agree when their status is equal and the text at `field` (for event streams,
    the content of the deltas) is similar: normalised, a similarity ratio of at least
    `min_similarity`."""

    field: str
    min_similarity: float = 0.9


Compare = ExactCompare | JsonCompare | TextCompare


@dataclass(frozen=True, slots=True)
class Shadow:
    """Dark launch: a copy of `share` of the requests stable answers (users chosen with `salt`)
    goes to the candidate after the user's answer, and the two answers are compared. At most
    `max_in_flight` copies at once, holding at most `max_bytes_in_flight` of request bodies and
    stable's answers (more are dropped), each within `timeout`, only for `methods`. With
    `min_agreement`, the ramp waits until that share of at least `min_comparisons` comparisons
    agree."""

    share: float
    salt: str
    compare: Compare = ExactCompare()
    methods: tuple[str, ...] = ("POST",)
    max_in_flight: int = 64
    max_bytes_in_flight: int = 64 * 1024 * 1024
    timeout: float = 30.0
    min_agreement: float | None = None
    min_comparisons: int = 200


class StateBackend(StrEnum):
    """Where rollout state is kept."""

    FILE = "file"
    MEMORY = "memory"
    REDIS = "redis"


@dataclass(frozen=True, slots=True)
class Sentinel:
    """Redis Sentinel: the sentinels to ask (host, port) and the name of the master they
    watch (`service`)."""

    hosts: tuple[Listen, ...]
    service: str


@dataclass(frozen=True, slots=True)
class StateConfig:
    """The rollout state store. `memory` forgets everything on restart; `file` is one host's;
    `redis` (at `url`, or the master that `sentinel` names, or the Redis Cluster that `url` is a
    node of when `cluster`; its keys named `<key_prefix>:…`, the
    password in the environment variable `password_env`, a `rediss://` server's certificate
    checked against the system's authorities or those in `ca_file`) is shared by every
    replica."""

    backend: StateBackend = StateBackend.FILE
    path: str = "grayscale-state.json"
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "grayscale"
    password_env: str | None = None
    ca_file: str | None = None
    sentinel: Sentinel | None = None
    cluster: bool = False  # `url` is a node of a Redis Cluster (the others are found from it)
    max_clock_skew: float = 1.0  # seconds off Redis's clock before a replica stops deciding
    min_replicas_ack: int | None = None  # replicas a rollback, pause or promotion waits for
    # (None: one when the master has any)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """Admin API access: the bearer token's environment variable; whether reads need it too;
    the host names it answers to besides IP addresses and `localhost` (DNS rebinding); and the
    listener's limits: how long a request head (or an idle connection) and a request body may
    take, and how many connections it holds at once."""

    token_env: str = "GRAYSCALE_ADMIN_TOKEN"
    protect_reads: bool = False
    allowed_hosts: tuple[str, ...] = ()
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 64


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """One JSON line per request (or per sampled request) to `path`: "stdout" or a file.

    User keys are written as keyed hashes, the key read from the `hash_secret_env` variable.
    """

    path: str = "stdout"
    sample: float = 1.0
    hash_secret_env: str = "GRAYSCALE_LOG_SECRET"


@dataclass(frozen=True, slots=True)
class OutcomesConfig:
    """Outcomes an application reports (`POST /outcomes`): the variable holding its bearer
    token, the variable holding the key that signs request ids (the same on every replica of a
    fleet), how long after its request an outcome is taken, and bounds."""

    token_env: str = "GRAYSCALE_OUTCOMES_TOKEN"
    secret_env: str = "GRAYSCALE_OUTCOMES_SECRET"
    ttl: float = 3600.0
    max_batch: int = 1000
    max_names: int = 32
    max_tracked: int = 1_000_000  # (request id, name) pairs remembered to count each once


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How a file is read, as the command line says: `${NAME}` replaced from the environment
    (`expand_env`), and listen addresses in place of the file's. Kept with the config, so that
    a reload reads the file the same way."""

    expand_env: bool = False
    listen: Listen | None = None
    admin_listen: Listen | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, valid configuration file; `digest` identifies its text, `options` how it was
    read."""

    routes: tuple[Route, ...]
    server: ServerConfig = ServerConfig()
    state: StateConfig = StateConfig()
    admin: AdminConfig = AdminConfig()
    access_log: AccessLogConfig | None = None
    outcomes: OutcomesConfig = OutcomesConfig()
    source: str = field(default="<memory>", compare=False)
    digest: str = field(default="", compare=False)
    options: LoadOptions = field(default=LoadOptions(), compare=False)
