"""One exposition from several workers' (`serve --workers N`): every sample of each worker,
labelled `worker` with its index (0 to N-1, kept across a worker's restarts, so the series stay
bounded and a restarted worker's counters read as a counter reset, which Prometheus handles).

Chosen over prometheus_client's multiprocess mode, which cannot serve the callback gauges
(`Gauge.set_function`) and needs a shared directory of memory-mapped files."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

WORKER_LABEL = "worker"
WORKER_UP = "typegpt_gateway_worker_up"


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge(expositions: Sequence[tuple[str, str | None]]) -> bytes:
    """(worker label, its exposition text, or None when it could not be read) → one
    exposition in the text format, with typegpt_gateway_worker_up saying which were read."""
    families: dict[str, Metric] = {}
    up = Metric(WORKER_UP, "1 when the worker's metrics could be read for this scrape.", "gauge")
    for worker, text in expositions:
        up.add_sample(WORKER_UP, {WORKER_LABEL: worker}, 0.0 if text is None else 1.0)
        for family in text_string_to_metric_families(text or ""):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            merged.samples.extend(
                sample._replace(labels={**sample.labels, WORKER_LABEL: worker})
                for sample in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([up, *families.values()]))
    return generate_latest(registry)
