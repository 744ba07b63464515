"""Prometheus gauges of the promotion decision, for Flagger, Argo Rollouts or Kayenta.

The report is evaluated on the snapshot timer, off the event loop; a scrape reads the last
evaluation and does no statistics of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shadowproxy.config.gates import GATE_METRICS

DECISION_VALUE = {"promote": 1.0, "insufficient_data": 0.0, "reject": -1.0}


class DecisionGauges(Collector):
    """``shadowproxy_gate_passed``, ``shadowproxy_candidate_decision`` and key metrics."""

    def __init__(self) -> None:
        self.report: dict[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        passed = GaugeMetricFamily(
            "shadowproxy_gate_passed",
            "1 when a candidate's gate passed, 0 when it failed or is not decided yet.",
            labels=["candidate", "gate"],
        )
        decided = GaugeMetricFamily(
            "shadowproxy_gate_decided",
            "1 when a candidate's gate is decided (passed or failed), 0 while its interval "
            "still straddles the threshold.",
            labels=["candidate", "gate"],
        )
        decision = GaugeMetricFamily(
            "shadowproxy_candidate_decision",
            "1 promote, 0 insufficient data, -1 reject.",
            labels=["candidate"],
        )
        metric = GaugeMetricFamily(
            "shadowproxy_compare_metric",
            "The latest value of each gate metric per candidate.",
            labels=["candidate", "metric"],
        )
        report = self.report
        if report is not None:
            for candidate in report.get("candidates", []):
                name = candidate["name"]
                decision.add_metric([name], DECISION_VALUE.get(candidate["decision"], 0.0))
                for gate in candidate.get("gates", []):
                    label = f"{gate['metric']}_{gate['op']}"
                    passed.add_metric([name, label], 1.0 if gate["passed"] is True else 0.0)
                    decided.add_metric([name, label], 0.0 if gate["passed"] is None else 1.0)
                for key, value in candidate.get("metrics", {}).items():
                    if key in GATE_METRICS and isinstance(value, (int, float)):
                        metric.add_metric([name, key], float(value))
        yield from (passed, decided, decision, metric)
