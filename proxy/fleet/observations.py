"""The fleet's pooled observations: every replica adds what it saw to shared counters in Redis,
and the decider judges on their sum.

Invariants
- The data plane never touches Redis: requests are counted in the process's own windows
  (`LocalObservations`), and `flush` sends what they gained since the last flush, at least once
  a second. A flush that fails keeps its counts for the next one (nothing is lost to a short
  outage, nothing is counted twice: a slot's counts are sent as differences from what Redis
  acknowledged, in one transaction per route).
- Counters are kept per route, window length, variant and time slot (the slot number is the time
  divided by the slot's length, the same in every replica), in one hash each, which expires
  once the slot has left every window: memory in Redis is bounded by the number of routes (and
  of outcome names, bounded per route). A hash holds the compared requests (`r`) and errors
  (`e`), the sums of their weights (`w`, `w2`, and over errors `ew`, `ew2`), the latency
  histogram of weights (a field per bucket) with its sum of squared weights (`l2`), and per
  outcome name its count and weighted sums (`o:n:`, `o:w:`, `o:v:`, `o:s:`, `o:t:`, `o:q:`: see
  `Moments`). The keys say `obs3`: a replica that counted otherwise never adds to them.
- Every key names the rollout run its counts belong to (`LocalObservations.generation`: the
  candidate and the run): a new candidate, or a resume after a rollback, is judged on its own
  requests only, never on its predecessor's.
  The sample-ratio counts and the users' design effects are not pooled:
  the decider tests its own traffic (a user's requests spread over replicas would count once
  per replica, and the test needs each user once).
- A route's keys carry the hash tag `{route}`: on a Redis Cluster they stay on one node.
"""

from __future__ import annotations

import math
import operator
from dataclasses import astuple

from proxy.analysis.histogram import SIZE
from proxy.analysis.verdict import Moments, Sample
from proxy.analysis.window import SLOTS, LocalObservations
from proxy.rollout.redis_store import Client

FLUSH_EVERY = 1.0  # seconds between flushes of this process's observations
KEEP_TOTALS = 30 * 86400  # seconds the counts since a rollout began are kept after a flush

# requests, errors, the four weight sums, latency histogram, its w² sum, outcomes' moments by name
_Counts = tuple[int, int, tuple[float, ...], tuple[float, ...], float, dict[str, Moments]]
_NOTHING: _Counts = (0, 0, (0.0,) * 4, (0.0,) * SIZE, 0.0, {})
_Where = tuple[str, str, int, str]  # route, variant, slot, rollout run
_WEIGHTS = ("w", "w2", "ew", "ew2")
_MOMENT_PARTS = ("n", "w", "v", "s", "t", "q")  # Moments' fields, in order


class PooledObservations:
    """Adds this process's observations to the fleet's, and reads the fleet's sum."""

    def __init__(self, local: LocalObservations, redis: Client, key_prefix: str):
        self._local = local
        self._redis = redis
        self._prefix = key_prefix
        self._sent: dict[_Where, _Counts] = {}  # what Redis acknowledged

    def key(self, route: str, span: float, variant: str, slot: int) -> str:
        """The hash of one variant's counts in one slot of `route`'s window of `span` seconds
        (`total` for a window without end: the counts since the run began), in the rollout run
        that the local windows count toward."""
        span_name = "total" if math.isinf(span) else f"{span:g}"
        run = self._local.generation(route)
        return f"{self._prefix}:obs3:{{{route}}}:{run}:{span_name}:{variant}:{slot}"

    async def flush(self, now: float) -> int:
        """Send what the local windows gained since the last flush; the number of slots sent.
        Each route's counts go in one transaction (all counted, or none; one slot of a Redis
        Cluster). Raises Redis's errors (what was not sent is sent next time)."""
        live: set[_Where] = set()
        sent = 0
        for route in list(self._local.windows):
            sent += await self._flush_route(route, now, live)
        self._sent = {where: counts for where, counts in self._sent.items() if where in live}
        return sent

    async def _flush_route(self, route: str, now: float, live: set[_Where]) -> int:
        pipe = self._redis.pipeline(transaction=True)
        sending: dict[_Where, _Counts] = {}
        generation = self._local.generation(route)
        for variant, window in self._local.windows[route].items():
            # seconds: past every replica's window (counts since a rollout began: 30 days)
            keep = KEEP_TOTALS if math.isinf(window.span) else math.ceil(window.span * 2) + 10
            for slot in window.slots(now):
                where = (route, variant, slot.number, generation)
                live.add(where)
                counts: _Counts = (
                    slot.requests,
                    slot.errors,
                    slot.weights,
                    tuple(slot.latency),
                    slot.latency_weight2,
                    dict(slot.outcomes),
                )
                sent = self._sent.get(where, _NOTHING)
                if counts == sent:
                    continue
                key = self.key(route, window.span, variant, slot.number)
                for field, count in (
                    ("r", slot.requests - sent[0]),
                    ("e", slot.errors - sent[1]),
                ):
                    if count:
                        pipe.hincrby(key, field, count)
                floats = [
                    *zip(_WEIGHTS, map(operator.sub, slot.weights, sent[2]), strict=True),
                    *((str(b), n - sent[3][b]) for b, n in enumerate(slot.latency)),
                    ("l2", slot.latency_weight2 - sent[4]),
                ]
                for name, moments in slot.outcomes.items():
                    change = astuple(moments - sent[5].get(name, Moments()))
                    pipe.hincrby(key, f"o:n:{name}", change[0])
                    floats += zip(
                        (f"o:{part}:{name}" for part in _MOMENT_PARTS[1:]),
                        change[1:],
                        strict=True,
                    )
                for field, amount in floats:
                    if amount:
                        pipe.hincrbyfloat(key, field, amount)
                pipe.expire(key, keep)
                sending[where] = counts
        if sending:
            await pipe.execute()
            self._sent.update(sending)
        return len(sending)

    async def samples(self, route: str, now: float) -> tuple[Sample, Sample]:
        """(stable, candidate) over `route`'s window ending at `now`, summed over the fleet."""
        span = self._local.windows[route]["stable"].span
        length = span / SLOTS
        newest = int(now // length)
        slots = range(newest - SLOTS + 1, newest + 1)
        pipe = self._redis.pipeline(transaction=False)
        for variant in ("stable", "candidate"):
            for slot in slots:
                pipe.hgetall(self.key(route, span, variant, slot))
        hashes = await pipe.execute()
        return _sum(hashes[:SLOTS]), _sum(hashes[SLOTS:])


def _sum(hashes: list[dict[bytes, bytes]]) -> Sample:
    requests = errors = 0
    weights = dict.fromkeys((name.encode() for name in _WEIGHTS), 0.0)
    latency = [0.0] * SIZE
    latency_weight2 = 0.0
    parts: dict[str, list[float]] = {}  # name -> Moments' fields
    for fields in hashes:
        for field, value in fields.items():
            if field == b"r":
                requests += int(value)
            elif field == b"e":
                errors += int(value)
            elif field in weights:
                weights[field] += float(value)
            elif field == b"l2":
                latency_weight2 += float(value)
            elif field.startswith(b"o:"):
                part, name = _PARTS.get(field[2:4], 0), field[4:].decode()
                parts.setdefault(name, [0.0] * len(_MOMENT_PARTS))[part] += float(value)
            elif field.isdigit() and (bucket := int(field)) < SIZE:
                latency[bucket] += float(value)
    outcomes = {name: Moments(int(values[0]), *values[1:]) for name, values in parts.items()}
    w, w2, ew, ew2 = weights.values()
    return Sample(
        requests,
        errors,
        w,
        w2,
        ew,
        ew2,
        tuple(latency),
        latency_weight2,
        outcomes,
    )


_PARTS = {f"{part}:".encode(): index for index, part in enumerate(_MOMENT_PARTS)}
