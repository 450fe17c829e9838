"""The fleet's pooled observations: every replica adds what it saw to shared counters in Redis,
and the decider judges on their sum.

Invariants
- The data plane never touches Redis: requests are counted in the process's own windows
  (`LocalObservations`), and `flush` sends what they gained since the last flush, at least once
  a second. A flush that fails keeps its counts for the next one (nothing is lost to a short
  outage, nothing is counted twice: a slot's counts are sent as differences from what Redis
  acknowledged, in one transaction per route).
- Counters are kept per route, window length, variant and time slot (the slot number is the time
  divided by the slot's length, the same in every replica), and expire once the slot has left
  every window: memory in Redis is bounded by the number of routes (and of outcome names,
  bounded per route). A slot's counts are one string of signed 64-bit integers, added to by one
  `BITFIELD` a flush however many of them changed (Redis parses one command, not one per
  field): the compared requests and errors, then the sums of weights in billionths (`w`, `w²`,
  over errors `w` and `w²`, the latency histogram's `w²`, then the histogram of weights, a
  bucket each). A replica sends the differences of its cumulative sums rounded to billionths,
  so rounding never accumulates over flushes. Each sum is two words, its low `LOW_BITS` bits
  and the rest: what one process adds to a low word stays below 2^40, so no word overflows
  before 8 million processes have added to one key. Beside it, a hash holds per outcome name
  its count and weighted sums (`n:`, `w:`, `v:`, `s:`, `t:`, `q:`, see `Moments`; floats, as
  the reported values are arbitrary).
- The keys say `obs4`: a replica of a build that counted otherwise (`obs3`: floats in one hash)
  never adds to them, nor they to its.
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
import struct
from dataclasses import astuple
from itertools import chain

from proxy.analysis.histogram import SIZE
from proxy.analysis.verdict import Moments, Sample
from proxy.analysis.window import SLOTS, LocalObservations, Slot
from proxy.rollout.redis_store import Client

FLUSH_EVERY = 1.0  # seconds between flushes of this process's observations
KEEP_TOTALS = 30 * 86400  # seconds the counts since a rollout began are kept after a flush
NANOS = 10**9  # billionths in a unit of weight: the resolution of the pooled weight sums
LOW_BITS = 40  # bits of a sum's low word (1,099 units of weight): its high word rarely changes

# requests, errors, the four weight sums, latency histogram, its w² sum, outcomes' moments by name
_Counts = tuple[int, int, tuple[float, ...], tuple[float, ...], float, dict[str, Moments]]
_NOTHING: _Counts = (0, 0, (0.0,) * 4, (0.0,) * SIZE, 0.0, {})
_Where = tuple[str, str, int, str]  # route, variant, slot, rollout run
_WEIGHTED = 5 + SIZE  # w, w², w and w² over errors, the histogram's w², the histogram
_INTEGERS = 2 + 2 * _WEIGHTED  # requests, errors, then each weighted sum's low and high words
_LOW = (1 << LOW_BITS) - 1
_MOMENT_PARTS = ("n", "w", "v", "s", "t", "q")  # Moments' fields, in order
_PARTS = {f"{part}:".encode(): index for index, part in enumerate(_MOMENT_PARTS)}


class PooledObservations:
    """Adds this process's observations to the fleet's, and reads the fleet's sum."""

    def __init__(self, local: LocalObservations, redis: Client, key_prefix: str):
        self._local = local
        self._redis = redis
        self._prefix = key_prefix
        self._sent: dict[_Where, _Counts] = {}  # what Redis acknowledged

    def key(self, route: str, span: float, variant: str, slot: int) -> str:
        """The counts of one variant in one slot of `route`'s window of `span` seconds (`total`
        for a window without end: the counts since the run began), in the rollout run that the
        local windows count toward; its outcomes are in the hash named this and `:outcomes`."""
        span_name = "total" if math.isinf(span) else f"{span:g}"
        run = self._local.generation(route)
        return f"{self._prefix}:obs4:{{{route}}}:{run}:{span_name}:{variant}:{slot}"

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
                if increments := _increments(slot, sent):
                    pipe.execute_command("BITFIELD", key, *increments)
                    pipe.expire(key, keep)
                if slot.outcomes != sent[5]:
                    outcomes = f"{key}:outcomes"
                    for name, moments in slot.outcomes.items():
                        change = astuple(moments - sent[5].get(name, Moments()))
                        if change[0]:
                            pipe.hincrby(outcomes, f"n:{name}", change[0])
                        for part, amount in zip(_MOMENT_PARTS[1:], change[1:], strict=True):
                            if amount:
                                pipe.hincrbyfloat(outcomes, f"{part}:{name}", amount)
                    pipe.expire(outcomes, keep)
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
                key = self.key(route, span, variant, slot)
                pipe.get(key)
                pipe.hgetall(f"{key}:outcomes")
        replies = await pipe.execute()
        strings, hashes = replies[::2], replies[1::2]
        return _sum(strings[:SLOTS], hashes[:SLOTS]), _sum(strings[SLOTS:], hashes[SLOTS:])


def _increments(slot: Slot, sent: _Counts) -> list[str | int]:
    """The `BITFIELD` operations that add what `slot` gained since `sent` to its counts."""
    operations: list[str | int] = []
    for index, count in enumerate((slot.requests - sent[0], slot.errors - sent[1])):
        if count:
            operations += ("INCRBY", "i64", f"#{index}", count)
    weighted = chain(slot.weights, (slot.latency_weight2,), slot.latency)
    was = chain(sent[2], (sent[4],), sent[3])
    for field, (now, before) in enumerate(zip(weighted, was, strict=True)):
        if now == before:
            continue
        billionths, billionths_before = round(now * NANOS), round(before * NANOS)
        for index, change in (
            (2 + 2 * field, (billionths & _LOW) - (billionths_before & _LOW)),
            (3 + 2 * field, (billionths >> LOW_BITS) - (billionths_before >> LOW_BITS)),
        ):
            if change:
                operations += ("INCRBY", "i64", f"#{index}", change)
    return operations


def _sum(strings: list[bytes | None], hashes: list[dict[bytes, bytes]]) -> Sample:
    """The sum of slots' counts (`BITFIELD` strings) and outcomes (hashes)."""
    integers = [0] * _INTEGERS
    for counts in strings:
        if counts:
            values = struct.unpack(f">{len(counts) // 8}q", counts)  # i64s, big-endian
            integers[: len(values)] = map(operator.add, integers, values)
    weighted = [
        ((high << LOW_BITS) + low) / NANOS
        for low, high in zip(integers[2::2], integers[3::2], strict=True)
    ]
    parts: dict[str, list[float]] = {}  # name -> Moments' fields
    for fields in hashes:
        for field, value in fields.items():
            if (part := _PARTS.get(field[:2])) is not None:
                name = field[2:].decode()
                parts.setdefault(name, [0.0] * len(_MOMENT_PARTS))[part] += float(value)
    w, w2, ew, ew2, latency_weight2 = weighted[:5]
    return Sample(
        integers[0],
        integers[1],
        w,
        w2,
        ew,
        ew2,
        tuple(weighted[5:]),
        latency_weight2,
        {name: Moments(int(values[0]), *values[1:]) for name, values in parts.items()},
    )
