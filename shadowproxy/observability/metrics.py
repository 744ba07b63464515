"""Prometheus metrics, all on one registry that the caller owns (a fresh one per test).

Label values are bounded: model names and versions come from config, roles, outcomes and
reasons from fixed sets. Nothing a client sends (paths, headers, ids) becomes a label.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from shadowproxy.observability.gc_pauses import GC_PAUSE_BUCKETS, GENERATIONS, PAUSES, GcPauses

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# Reasons a client request is refused before anything is forwarded.
CLIENT_ERROR_REASONS = (
    "malformed",
    "body_too_large",
    "headers_too_large",
    "header_timeout",
    "body_timeout",
    "unsupported",
)
SHADOW_DROP_REASONS = (
    "budget", "breaker_open", "body_too_large", "disabled", "shutdown", "starting", "starved",
)  # fmt: skip
OUTCOMES = ("ok", "error", "timeout", "invalid", "dropped")


class ExchangeStats:
    """Counters of one upstream (role, model, version), updated on the event loop.

    Plain integers instead of prometheus-client children: the per-request path then
    costs a dict increment and a bisect, with no lock. :class:`HotPathCollector` turns
    them into Prometheus families at scrape time, in the scrape's worker thread: reading
    plain integers needs no lock, and a scrape at worst sees an exchange in its outcome a
    moment before its latency bucket.
    """

    __slots__ = ("role", "model", "version", "outcomes", "buckets", "latency_sum", "drops",
                 "pairs")  # fmt: skip

    def __init__(self, role: str, model: str, version: str) -> None:
        self.role = role
        self.model = model
        self.version = version
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.latency_sum = 0.0
        self.drops = dict.fromkeys(SHADOW_DROP_REASONS, 0)
        self.pairs = 0

    def record(self, outcome: str, latency_s: float | None) -> None:
        """One finished exchange; ``latency_s`` is None for one never sent."""
        self.outcomes[outcome] += 1
        if latency_s is not None:
            self.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1
            self.latency_sum += latency_s

    def dropped(self, reason: str) -> None:
        self.drops[reason] += 1
        self.outcomes["dropped"] += 1


class HotPathCollector(Collector):
    """Exports every :class:`ExchangeStats` under the contract's metric names."""

    def __init__(self) -> None:
        self.stats: list[ExchangeStats] = []

    def add(self, role: str, model: str, version: str) -> ExchangeStats:
        stats = ExchangeStats(role, model, version)
        self.stats.append(stats)
        return stats

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "shadowproxy_requests",
            "Upstream exchanges by role, model, version and outcome.",
            labels=["role", "model", "version", "outcome"],
        )
        duration = HistogramMetricFamily(
            "shadowproxy_request_duration_seconds",
            "Upstream exchange latency, from sending the request to the last response byte.",
            labels=["role", "model", "version"],
        )
        dropped = CounterMetricFamily(
            "shadowproxy_shadow_dropped",
            "Shadow requests not sent, by reason.",
            labels=["model", "version", "reason"],
        )
        pairs = CounterMetricFamily(
            "shadowproxy_pairs",
            "Production/shadow pairs with an answer or a failure on both sides (shadows "
            "dropped before they were sent are not pairs).",
            labels=["model", "version"],
        )
        for st in self.stats:
            for outcome, count in st.outcomes.items():
                requests.add_metric([st.role, st.model, st.version, outcome], count)
            duration.add_metric(
                [st.role, st.model, st.version],
                cumulative(LATENCY_BUCKETS, st.buckets),
                st.latency_sum,
            )
            if st.role != "production":
                for reason, count in st.drops.items():
                    dropped.add_metric([st.model, st.version, reason], count)
                pairs.add_metric([st.model, st.version], st.pairs)
        yield from (requests, duration, dropped, pairs)


class GcPauseCollector(Collector):
    """Exports the process's collector pauses (:mod:`.gc_pauses`) as
    ``shadowproxy_gc_pause_seconds{generation}``."""

    def __init__(self, pauses: GcPauses = PAUSES) -> None:
        self.pauses = pauses

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "shadowproxy_gc_pause_seconds",
            "Garbage-collector pauses by generation (2: full collections); the event loop "
            "stands still throughout.",
            labels=["generation"],
        )
        for generation in range(GENERATIONS):
            counts = list(self.pauses.buckets[generation])  # a copy: collections go on
            family.add_metric(
                [str(generation)],
                cumulative(GC_PAUSE_BUCKETS, counts),
                self.pauses.sums[generation],
            )
        yield family


def cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    """Per-bucket counts (the last one past every bound) as Prometheus's cumulative
    ``(le, count)`` buckets."""
    out, running = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return out


class Metrics:
    """Every metric shadowproxy exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # The standard process figures, under the project's prefix like every other
        # series here (shadowproxy_process_cpu_seconds_total, ...).
        ProcessCollector(namespace="shadowproxy", registry=r)
        self.hot = HotPathCollector()
        r.register(self.hot)
        PAUSES.install()
        r.register(GcPauseCollector(PAUSES))
        self.in_flight = Gauge(
            "shadowproxy_in_flight",
            "Upstream exchanges outstanding.",
            ["role", "model"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "shadowproxy_breaker_open",
            "1 while a shadow target's circuit breaker is open or half-open.",
            ["model", "version"],
            registry=r,
        )
        self.client_errors = Counter(
            "shadowproxy_client_errors",
            "Client requests refused by the proxy before forwarding, by reason.",
            ["reason"],
            registry=r,
        )
        self.connections = Gauge(
            "shadowproxy_client_connections", "Open client connections.", registry=r
        )
        self.loop_lag = Histogram(
            "shadowproxy_event_loop_lag_seconds",
            "How late a periodic timer fires: time the event loop was busy elsewhere.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.ready = Gauge("shadowproxy_ready", "1 when /healthz/ready answers 200.", registry=r)
        self.pair_log = Counter(
            "shadowproxy_pair_log_records",
            "Pair-log records by result (written, dropped reasons).",
            ["result"],
            registry=r,
        )
        self.input_invalid = Counter(
            "shadowproxy_input_invalid",
            "Requests a local model could not take (payload decoding), by reason code.",
            ["model", "version", "reason"],
            registry=r,
        )
        for reason in CLIENT_ERROR_REASONS:
            self.client_errors.labels(reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)
