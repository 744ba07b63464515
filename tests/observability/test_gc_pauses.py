"""The garbage collector's pauses on ``/metrics``, by generation."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy.observability.gc_pauses import GC_PAUSE_BUCKETS, GcPauses
from shadowproxy.observability.metrics import GcPauseCollector, Metrics

Samples = dict[tuple[str, str, str], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """``(sample name, generation, le)`` → value of the GC pause histogram."""
    text = generate_latest(registry).decode()
    return {
        (s.name, s.labels["generation"], s.labels.get("le", "")): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "shadowproxy_gc_pause_seconds"
        for s in family.samples
    }


def count(samples: Samples, generation: int) -> float:
    return samples[("shadowproxy_gc_pause_seconds_count", str(generation), "")]


def test_every_registry_exports_the_process_collections_by_generation() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    before = scrape(registry)
    assert {g for _, g, _ in before} == {"0", "1", "2"}
    gc.collect()  # a full collection
    gc.collect(0)
    after = scrape(registry)
    assert count(after, 2) >= count(before, 2) + 1
    assert count(after, 0) >= count(before, 0) + 1
    summed = ("shadowproxy_gc_pause_seconds_sum", "2", "")
    assert after[summed] > before[summed]


def test_each_pause_lands_in_its_bucket_and_buckets_are_cumulative() -> None:
    ticks = iter([])
    pauses = GcPauses(clock=lambda: next(ticks))  # not installed: only these pauses
    registry = CollectorRegistry()
    registry.register(GcPauseCollector(pauses))
    # One generation-1 pause on each bound (le is inclusive) and one past the last.
    durations = (*GC_PAUSE_BUCKETS, 1.0)
    ticks = iter([t for d in durations for t in (0.0, d)])
    for _ in durations:
        pauses._callback("start", {"generation": 1})
        pauses._callback("stop", {"generation": 1})
    samples = scrape(registry)
    les = [repr(b) for b in GC_PAUSE_BUCKETS] + ["+Inf"]
    values = [samples[("shadowproxy_gc_pause_seconds_bucket", "1", le)] for le in les]
    assert values == list(range(1, len(les) + 1))
    assert count(samples, 1) == len(les)
    assert samples[("shadowproxy_gc_pause_seconds_sum", "1", "")] == sum(durations)
    assert count(samples, 0) == 0 and count(samples, 2) == 0


def test_the_callback_is_installed_once_and_times_each_collection() -> None:
    pauses = GcPauses()
    try:
        for _ in range(3):
            pauses.install()  # once per registry, one callback per process
        assert gc.callbacks.count(pauses._callback) == 1
        gc.collect()
        assert sum(pauses.buckets[2]) == 1
        assert 0 < pauses.sums[2] < 10
    finally:
        gc.callbacks.remove(pauses._callback)
