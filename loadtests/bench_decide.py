"""Cost of one routing decision in the pure core, side by side with the bare bucket hash.

    .venv/bin/python loadtests/bench_decide.py [--rounds 5] [--n 200000]

Each scenario runs `n` decisions per round; rounds alternate between scenarios so machine noise
hits all of them alike. Prints the best round's nanoseconds per decision and its ratio to the
floor (the bucket hash alone, which every decision has to pay).
"""

from __future__ import annotations

import argparse
import ipaddress
import time
from collections.abc import Callable

from proxy.config.model import (
    AttributeCondition,
    ClientIpCondition,
    Cohort,
    KeySource,
    Ramp,
    Route,
    Segment,
    Source,
    Upstream,
    Variant,
)
from proxy.routing import ActiveRoute, RolloutTerms, bucket, decide


class Facts:
    """A request with a user id, a region header and a client address."""

    __slots__ = ("client_ip", "headers", "path")

    def __init__(self, uid: str | None, region: str = "us-east-1"):
        self.path = "/v1/models/sentiment:predict"
        self.client_ip = "192.0.2.10"
        self.headers = {"x-user-id": uid, "x-region": region} if uid else {"x-region": region}

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def cookie(self, name: str) -> str | None:
        return None

    def query(self, name: str) -> str | None:
        return None


def route(segments: tuple[Segment, ...]) -> Route:
    return Route(
        name="sentiment",
        path_prefix="/v1/models/sentiment",
        stable=Upstream("http://127.0.0.1:9001"),
        candidate=Upstream("http://127.0.0.1:9002"),
        cohort=Cohort(
            (KeySource(Source.HEADER, "X-User-Id"), KeySource(Source.COOKIE, "uid")), "s"
        ),
        ramp=Ramp(base=0.1, slope=0.05, per=86400.0),
        segments=segments,
    )


SEGMENTS = (
    Segment(
        "staff",
        when=(AttributeCondition(KeySource(Source.HEADER, "X-User-Group"), frozenset({"staff"})),),
        variant=Variant.CANDIDATE,
    ),
    Segment(
        "office",
        when=(ClientIpCondition((ipaddress.ip_network("10.0.0.0/8"),)),),
        variant=Variant.CANDIDATE,
    ),
    Segment(
        "eu",
        when=(AttributeCondition(KeySource(Source.HEADER, "X-Region"), frozenset({"eu-west-1"})),),
        ramp=Ramp(base=0.02),
    ),
)


def scenarios(n: int) -> dict[str, Callable[[], None]]:
    users = [Facts(f"user-{i}") for i in range(n)]
    anonymous = [Facts(None) for _ in range(n)]
    now = 1_796_083_200.0
    plain = ActiveRoute.of(route(()))
    segmented = ActiveRoute.of(route(SEGMENTS))
    control = RolloutTerms(now, now)

    def floor() -> None:
        for f in users:
            bucket("s", f.headers["x-user-id"])

    def no_segments() -> None:
        for f in users:
            decide(plain, f, control)

    def three_segments() -> None:
        for f in users:
            decide(segmented, f, control)

    def no_key() -> None:
        for f in anonymous:
            decide(plain, f, control)

    return {
        "bucket hash alone (floor)": floor,
        "decide, no segments": no_segments,
        "decide, 3 segments, none match": three_segments,
        "decide, no cohort key": no_key,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    runs = scenarios(args.n)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    floor = best["bucket hash alone (floor)"]
    print(f"{'scenario':<34}{'ns/decision':>12}{'x floor':>9}{'decisions/s':>14}")
    for name, seconds in best.items():
        per = seconds / args.n
        print(f"{name:<34}{per * 1e9:>12.0f}{seconds / floor:>9.2f}{1 / per:>14,.0f}")


if __name__ == "__main__":
    main()
