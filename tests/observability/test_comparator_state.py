"""The comparator's own counters on ``/metrics``: what it processed and what it shed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy.compare.comparator import Comparator
from shadowproxy.observability.comparator_state import ComparatorStateCollector
from tests.compare.test_comparator import config, records


def records_counter(comparator: Comparator) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(ComparatorStateCollector(comparator))
    text = generate_latest(registry).decode()
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "shadowproxy_comparator_records"
        for sample in family.samples
        if sample.name == "shadowproxy_comparator_records_total"
    }


def test_records_shed_on_a_full_inbox_are_counted_apart_from_those_processed() -> None:
    comparator = Comparator(config(), queue_size=10)
    assert records_counter(comparator) == {"processed": 0.0, "dropped": 0.0}
    for r in records(25, seed=3):
        comparator.submit(r)  # no thread yet: 10 wait, 15 are shed
    comparator.start()
    assert comparator.stop(5.0)
    assert records_counter(comparator) == {"processed": 10.0, "dropped": 15.0}
