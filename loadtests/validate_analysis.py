"""The analysis's error rates and delays in the regimes production lives in, measured by seeded
simulated rollouts (`proxy.tools.trials`) and printed as a table.

    .venv/bin/python loadtests/validate_analysis.py [--runs 200] [--workers 2] [--only TEXT]

For each equal (or in-limit) candidate: how many runs rolled it back, with a 95 % Wilson
interval, against the stated rate (1 - confidence). For each worse candidate: how many were
rolled back, and the median and 90th percentile of the time it took. Exits with 1 when a rate
is shown to be above the stated one (its whole interval above it) or a worse candidate was not
always rolled back.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.analysis.intervals import wilson
from proxy.tools.trials import EQUAL, WORSE, Regime, run


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="", help="regimes whose name contains this")
    args = parser.parse_args()
    logging.getLogger("grayscale.ejection").setLevel(logging.ERROR)  # (an ejection each run)
    chosen: list[tuple[str, Regime]] = [
        (kind, r)
        for kind, group in (("equal", EQUAL), ("worse", WORSE))
        for r in group
        if args.only in r.name
    ]
    began = time.monotonic()
    broken: list[str] = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {
            (kind, regime.name): [pool.submit(run, regime, seed) for seed in range(args.runs)]
            for kind, regime in chosen
        }
        print(f"| regime | rolled back of {args.runs} | 95 % interval | stated | median, p90 |")
        print("|---|---|---|---|---|")
        for kind, regime in chosen:
            found = [f.result() for f in futures[(kind, regime.name)]]
            caught = sorted(t - regime.onset for t in found if t is not None)
            low, high = wilson(len(caught), args.runs, 1.96)
            stated = f"≤ {1 - regime.spec.confidence:.0%}" if kind == "equal" else "all, soon"
            if kind == "equal" and low > 1 - regime.spec.confidence:
                broken.append(regime.name)
            if kind == "worse" and len(caught) < args.runs:
                broken.append(regime.name)
            delays = "—"
            if caught:
                p90 = caught[min(len(caught) - 1, math.ceil(0.9 * len(caught)) - 1)]
                delays = f"{_minutes(statistics.median(caught))}, {_minutes(p90)}"
            print(
                f"| {regime.name} | {len(caught)} ({len(caught) / args.runs:.1%}) | "
                f"{low:.1%} to {high:.1%} | {stated} | {delays} |",
                flush=True,
            )
    print(f"({time.monotonic() - began:.0f} s, {args.workers} processes)")
    if broken:
        sys.exit("not as stated: " + "; ".join(broken))


if __name__ == "__main__":
    main()
