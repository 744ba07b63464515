"""The comparator's own counters on ``/metrics``: what it processed and what it shed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy.compare.comparator import INBOX_RECORDS, Comparator
from shadowproxy.observability.comparator_state import ComparatorStateCollector
from tests.compare.test_comparator import config, records


def scrape(comparator: Comparator) -> list[tuple[str, dict[str, str], float]]:
    registry = CollectorRegistry()
    registry.register(ComparatorStateCollector(comparator))
    text = generate_latest(registry).decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def records_counter(comparator: Comparator) -> dict[str, float]:
    return {
        labels["outcome"]: value
        for name, labels, value in scrape(comparator)
        if name == "shadowproxy_comparator_records_total"
    }


def backlog(comparator: Comparator) -> float:
    (value,) = [v for n, _, v in scrape(comparator) if n == "shadowproxy_comparator_queued_records"]
    return value


def test_records_shed_on_a_full_inbox_are_counted_apart_from_those_processed() -> None:
    comparator = Comparator(config(), queue_size=10)
    assert records_counter(comparator) == {"processed": 0.0, "dropped": 0.0}
    for r in records(25, seed=3):
        comparator.submit(r)  # no thread yet: 10 wait, 15 are shed
    assert backlog(comparator) == 10
    comparator.start()
    assert comparator.stop(5.0)
    assert records_counter(comparator) == {"processed": 10.0, "dropped": 15.0}
    assert backlog(comparator) == 0


def test_the_inbox_holds_a_small_backlog_by_default() -> None:
    """Queued records are live objects every full garbage collection walks with the event
    loop stopped: the default inbox keeps that walk short, and sheds the rest, counted."""
    comparator = Comparator(config())
    for r in records(INBOX_RECORDS + 5, seed=4):
        comparator.submit(r)
    assert backlog(comparator) == INBOX_RECORDS
    assert records_counter(comparator) == {"processed": 0.0, "dropped": 5.0}
