"""The metrics of every worker on a host, as one.

Invariants
- `/metrics` and `/status` counts, from whichever worker answers, count every request once:
  each worker writes its figures to its own file in the supervisor's folder every `SHARE_EVERY`
  (and the one answering, at once), and the answer sums the files. A dead worker's counters stay
  in the sum (the supervisor renames its file `dead-<pid>`), so totals never go down; its gauges
  leave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from proxy.runtime.tasks import cancel_and_wait
from proxy.telemetry.metrics import CODE_CLASSES, VARIANTS

log = logging.getLogger("grayscale.workers")

SHARE_EVERY = 0.5  # seconds between writes of a worker's figures
SUMMED_GAUGES = frozenset({"grayscale_in_flight_requests"})
LOWEST_GAUGES = frozenset({"grayscale_state_store_healthy"})  # healthy only if all are


class HostMetrics:
    """The figures of every worker on the host, summed; this worker's own shared with them."""

    def __init__(self, registry: CollectorRegistry, folder: str, index: int, count: int):
        self.index, self.count = index, count  # this worker's number, and how many there are
        self._registry = registry
        self._folder = Path(folder)
        self._own = self._folder / f"worker-{os.getpid()}.json"
        self._task: asyncio.Task[None] | None = None

    def share(self) -> None:
        """Write this worker's figures for the others (atomically: write, then rename)."""
        document = [
            {
                "name": family.name,
                "type": family.type,
                "help": family.documentation,
                "samples": [[s.name, s.labels, s.value] for s in family.samples],
            }
            for family in self._registry.collect()
        ]
        temp = self._own.with_suffix(".tmp")
        temp.write_text(json.dumps(document))
        os.replace(temp, self._own)

    def families(self) -> list[Metric]:
        """Every worker's figures, merged (this worker's as of now)."""
        self.share()
        live: list[list[dict[str, Any]]] = []
        dead: list[list[dict[str, Any]]] = []
        for path in self._folder.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                (live if path.name.startswith("worker-") else dead).append(
                    json.loads(path.read_text())
                )
        return merge(live, dead)

    def exposition(self) -> bytes:
        """The Prometheus text of the whole host."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(self.families()))
        return generate_latest(registry)

    def counts(self, families: Iterable[Metric], route: str) -> dict[str, dict[str, int]]:
        """Requests per variant and code class on the whole host, for `/status`."""
        counts = {variant: dict.fromkeys(CODE_CLASSES, 0) for variant in VARIANTS}
        for family in families:
            if family.name != "grayscale_requests":
                continue
            for sample in family.samples:
                if sample.labels.get("route") == route and sample.name.endswith("_total"):
                    by_class = counts.get(sample.labels["variant"])
                    if by_class is not None and sample.labels["code_class"] in by_class:
                        by_class[sample.labels["code_class"]] = int(sample.value)
        return counts

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._share_often())

    async def stop(self) -> None:
        """Stop sharing, after a last write (the supervisor keeps it when this worker ends)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        with contextlib.suppress(OSError):
            self.share()

    async def _share_often(self) -> None:
        while True:
            await asyncio.sleep(SHARE_EVERY)
            try:
                self.share()
            except OSError as exc:
                log.warning("cannot share this worker's metrics: %s", exc)


def merge(live: list[list[dict[str, Any]]], dead: list[list[dict[str, Any]]]) -> list[Metric]:
    """Sum the figures of workers: counters and histograms of every worker, dead or alive;
    gauges of the live ones (summed for requests in flight, the lowest for health, else the
    highest: the share, the state and the like are the same in every worker)."""
    families: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for documents, alive in ((live, True), (dead, False)):
        for document in documents:
            for family in document:
                name, kind = family["name"], family["type"]
                if kind == "gauge" and not alive:
                    continue
                families.setdefault(name, (kind, family["help"]))
                merged = values.setdefault(name, {})
                for sample_name, labels, value in family["samples"]:
                    key = (sample_name, tuple(sorted(labels.items())))
                    if key not in merged:
                        merged[key] = value
                    elif sample_name.endswith("_created"):
                        merged[key] = min(merged[key], value)
                    elif kind != "gauge" or name in SUMMED_GAUGES:
                        merged[key] += value
                    elif name in LOWEST_GAUGES:
                        merged[key] = min(merged[key], value)
                    else:
                        merged[key] = max(merged[key], value)
    result = []
    for name, (kind, documentation) in families.items():
        metric = Metric(name, documentation, kind)
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
        result.append(metric)
    return result


class _Fixed(Collector):
    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
