"""The comparator's mergeable state on ``/metrics``, built when Prometheus scrapes.

Nothing is counted per request: at scrape time the collector takes the comparator's lock,
reads the state into samples (:mod:`shadowproxy.compare.exported` says which parts and
under which names) and releases it before building the metric families. Summed over the
replicas in Prometheus, the families are exactly the merged state's counts and bins, which
``shadowproxy report --source prometheus+http://...`` reads back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from shadowproxy.compare.comparator import Comparator
from shadowproxy.compare.exported import (
    FAMILIES,
    Family,
    Sample,
    export_fingerprint,
    layout_sample,
    target_samples,
)


class ComparatorStateCollector(Collector):
    """Exports one comparator's state as the families of :mod:`~shadowproxy.compare.exported`."""

    def __init__(self, comparator: Comparator) -> None:
        self.comparator = comparator
        # The layout does not change while the process runs.
        self.fingerprint = export_fingerprint(comparator.fingerprint())

    def samples(self) -> list[Sample]:
        """A consistent reading of the state: every sample taken under one hold of the lock."""
        comparator = self.comparator
        with comparator.lock:
            comparator.flush()
            found = [layout_sample(self.fingerprint)]
            for state in comparator.targets.values():
                found.extend(target_samples(state))
        return found

    def collect(self) -> Iterator[Metric]:
        families = {family.name: _metric_family(family) for family in FAMILIES}
        # A histogram's buckets are added together, per label set.
        buckets: dict[tuple[str, tuple[str, ...]], list[tuple[str, float]]] = {}
        for sample in self.samples():
            family = sample.family
            labels = tuple(sample.labels[name] for name in family.labels if name != "le")
            if family.kind == "histogram":
                buckets.setdefault((family.name, labels), []).append(
                    (sample.labels["le"], sample.value)
                )
            else:
                families[family.name].add_metric(list(labels), sample.value)
        for (name, labels), values in buckets.items():
            # No _sum: the sketch keeps no sum of latencies; +Inf is the count.
            families[name].add_metric(list(labels), values, None)
        yield from families.values()
        yield self._records()
        queued = GaugeMetricFamily(
            "shadowproxy_comparator_queued_records",
            "Pair records waiting in the comparator's inbox (a backlog grows while the proxy "
            "is too busy to leave it CPU)",
        )
        queued.add_metric([], self.comparator.queue.qsize())
        yield queued

    def _records(self) -> CounterMetricFamily:
        # The comparator runs on the CPU production leaves: under saturation its inbox fills
        # and sheds records. This is where that shows.
        records = CounterMetricFamily(
            "shadowproxy_comparator_records",
            "Pair records offered to the comparator: processed, or dropped on a full inbox",
            labels=["outcome"],
        )
        records.add_metric(["processed"], self.comparator.processed)
        records.add_metric(["dropped"], self.comparator.dropped)
        return records


def _metric_family(family: Family) -> Any:
    labels = [name for name in family.labels if name != "le"]
    if family.kind == "histogram":
        return HistogramMetricFamily(family.name, family.help, labels=labels)
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    return kind(family.name, family.help, labels=labels)
