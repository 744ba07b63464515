"""Every model shadowproxy talks to, with what it costs: for ``/metrics`` and ``/admin/models``.

Local models report the figures of their executor (sampled by the executor itself, so a
scrape does no I/O); remote models report what their ``metrics_url`` last gave, or
nothing. Figures are read at scrape time, never pushed per request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shadowproxy.config.loader import redact_url
from shadowproxy.config.model import Executor
from shadowproxy.executor import LocalExecutor
from shadowproxy.observability.scrape import RemoteResources
from shadowproxy.pairing.record import Cost, Role


@dataclass
class ModelEntry:
    role: Role
    name: str
    version: str
    executor: LocalExecutor | None = None
    settings: Executor | None = None
    url: str | None = None  # shown with credentials removed
    remote: RemoteResources | None = None

    @property
    def labels(self) -> list[str]:
        return [self.role, self.name, self.version]

    def cost(self) -> Cost | None:
        """The model process's footprint for a remote exchange's pair record."""
        if self.remote is None:
            return None
        f = self.remote.figures
        if f.scrapes == 0:
            return None
        return Cost(
            cpu_s=f.cpu_seconds_per_request,
            rss_bytes=f.rss_bytes,
            threads=None if f.threads is None else int(f.threads),
        )

    def describe(self) -> dict[str, Any]:
        """The ``/admin/models`` entry."""
        out: dict[str, Any] = {"role": self.role, "name": self.name, "version": self.version}
        if self.executor is not None:
            model = self.executor.model
            out |= {
                "source": "local",
                "path": str(model.path),
                "sha256": model.sha256,
                "size_bytes": model.size,
                **model.signature.as_metadata(),
                "executor": None if self.settings is None else dataclasses.asdict(self.settings),
                "ready": self.executor.ready,
                "disabled": self.executor.disabled,
                "disabled_reason": self.executor.disabled_reason,
                "resources": self.executor.resources().as_dict(),
            }
        else:
            out |= {
                "source": "remote",
                "url": self.url,
                # The admin listener has no authentication: no credential leaves it.
                "metrics_url": None if self.remote is None else redact_url(self.remote.url),
                "resources": None if self.remote is None else self.remote.figures.as_dict(),
            }
        return out


class ModelCatalog(Collector):
    """The models of one running shadowproxy; a Prometheus collector of their resources."""

    def __init__(self) -> None:
        self.entries: list[ModelEntry] = []

    def add(self, entry: ModelEntry) -> ModelEntry:
        self.entries.append(entry)
        return entry

    def describe_all(self) -> list[dict[str, Any]]:
        return [entry.describe() for entry in self.entries]

    def collect(self) -> Iterator[Metric]:
        labels = ["role", "model", "version"]

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"shadowproxy_model_{name}", doc, labels=labels)

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"shadowproxy_model_{name}", doc, labels=labels)

        cpu = counter("cpu_seconds", "CPU time of the model's processes (user + system).")
        cpu_per = gauge("cpu_seconds_per_request", "Model CPU seconds per request.")
        rss = gauge("resident_memory_bytes", "Resident memory of the model's processes.")
        peak = gauge("peak_resident_memory_bytes", "Highest resident memory seen (VmHWM).")
        threads = gauge("threads", "Threads of the model's processes.")
        children = gauge("child_processes", "Processes the model's workers started.")
        inferences = counter("inferences", "Requests run by a local model.")
        batches = counter("batches", "Micro-batches run by a local model.")
        compute = counter("compute_seconds", "Pure inference time of a local model.")
        queue = counter("queue_seconds", "Time requests waited for a batch or a worker.")
        ipc = counter("ipc_seconds", "Time requests spent in transfer to and from workers.")
        crashes = counter("crashes", "Worker crashes (including kills on hang or memory).")
        restarts = counter("restarts", "Workers started again after a crash.")
        timeouts = counter("timeouts", "Local model calls past their deadline.")
        cpu_wait = counter(
            "cpu_wait_seconds", "Time a local model's workers were runnable but had no CPU."
        )
        disabled = gauge("disabled", "1 when a local model was disabled after crashes.")
        alive = gauge("workers_alive", "Worker processes running.")
        for entry in self.entries:
            lv = entry.labels
            if entry.executor is not None:
                f = entry.executor.resources()
                cpu.add_metric(lv, f.cpu_seconds)
                cpu_per.add_metric(lv, f.cpu_seconds_per_request)
                rss.add_metric(lv, f.rss_bytes)
                peak.add_metric(lv, f.peak_rss_bytes)
                threads.add_metric(lv, f.threads)
                children.add_metric(lv, f.child_processes)
                inferences.add_metric(lv, f.requests)
                batches.add_metric(lv, f.batches)
                compute.add_metric(lv, f.compute_seconds)
                queue.add_metric(lv, f.queue_seconds)
                ipc.add_metric(lv, f.ipc_seconds)
                crashes.add_metric(lv, f.crashes)
                restarts.add_metric(lv, f.restarts)
                timeouts.add_metric(lv, f.timeouts)
                cpu_wait.add_metric(lv, f.cpu_wait_seconds)
                disabled.add_metric(lv, 1 if f.disabled else 0)
                alive.add_metric(lv, f.workers_alive)
            elif entry.remote is not None and entry.remote.figures.scrapes:
                r = entry.remote.figures
                if r.cpu_seconds is not None:
                    cpu.add_metric(lv, r.cpu_seconds)
                if r.cpu_seconds_per_request is not None:
                    cpu_per.add_metric(lv, r.cpu_seconds_per_request)
                if r.rss_bytes is not None:
                    rss.add_metric(lv, r.rss_bytes)
                if r.threads is not None:
                    threads.add_metric(lv, r.threads)
        yield from (
            cpu, cpu_per, rss, peak, threads, children, inferences, batches, compute, queue,
            ipc, crashes, restarts, timeouts, cpu_wait, disabled, alive,
        )  # fmt: skip
