"""What Grayscale's features cost: features off against every feature on, alternating.

    .venv/bin/python loadtests/bench_features.py [--rounds 10] [--duration 3]

Two `grayscale serve` processes of the same build, one with analysis windows and a 10 % sampled
access log, one without (metrics are always on), loaded in turn round after round with
`bench_proxy.py`'s load (wrk, or `loadgen.py` without it). The figure is CPU time per request
(user + system, from /proc), which the scheduling noise of a small machine disturbs less than
throughput does; throughput is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from pathlib import Path

from bench_proxy import (
    OFF,
    ON,
    WRK_SCRIPT,
    free_port,
    grayscale_conf,
    measure,
    serve,
    upstream_peers,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="grayscale-features-"))
    script = folder / "post.lua"
    script.write_text(WRK_SCRIPT)
    upstreams = (free_port(), free_port())
    peers, _ = upstream_peers(folder, upstreams, free_port())
    with contextlib.ExitStack() as stack:
        for peer in peers:
            stack.enter_context(peer)
        ports = {OFF: free_port(), ON: free_port()}
        pids = {
            name: stack.enter_context(
                serve(grayscale_conf(folder, upstreams, port, name == ON), port)
            ).pid
            for name, port in ports.items()
        }
        cost: dict[str, list[float]] = {OFF: [], ON: []}
        rate: dict[str, list[float]] = {OFF: [], ON: []}
        for round_no in range(args.rounds + 1):  # the first round warms up
            for name, port in ports.items():
                run = measure(
                    port,
                    name,
                    seconds=args.duration,
                    connections=args.connections,
                    script=script,
                    pid=pids[name],
                )
                if round_no and run.cpu_percent is not None:
                    cost[name].append(run.cpu_percent / 100 / run.requests_per_second * 1e6)
                    rate[name].append(run.requests_per_second)
    for name in (OFF, ON):
        rounds = " ".join(f"{c:.0f}" for c in cost[name])
        print(
            f"{name:<26} CPU {statistics.median(cost[name]):6.0f} us/request "
            f"({rounds}), {statistics.median(rate[name]):7.0f} req/s"
        )
    extra = statistics.median(cost[ON]) / statistics.median(cost[OFF]) - 1
    slower = 1 - statistics.median(rate[ON]) / statistics.median(rate[OFF])
    print(f"features cost: {extra:+.1%} CPU per request, {slower:.1%} of throughput")


if __name__ == "__main__":
    main()
