"""From comparator state to a report: metrics, evidence, gates and the decision (pure)."""

from __future__ import annotations

from typing import Any

from shadowproxy.compare.evidence import Evaluator, evidence
from shadowproxy.compare.reference import Reference
from shadowproxy.compare.target import TargetState
from shadowproxy.config.model import Config
from shadowproxy.report.document import build_report


def report_for(
    config: Config,
    targets: dict[str, TargetState],
    reference: Reference | None = None,
    only: str | None = None,
    evaluator: Evaluator | None = None,
) -> dict[str, Any]:
    """The report document for every candidate in ``targets`` (or only ``only``).

    ``evaluator`` computes the metrics; by default the one for full (snapshot) state.
    """
    evaluator = evaluator or Evaluator(config.promotion, config.compare.seed)
    baseline = next((t for t in targets.values() if t.role == "baseline"), None)
    evidences = [
        evidence(
            state, evaluator, baseline=baseline, reference=reference,
            redact=config.pair_log.redact,
        )
        for name, state in sorted(targets.items())
        if state.role == "candidate" and (only is None or name == only)
    ]  # fmt: skip
    production = {"name": config.production.name, "version": config.production.version}
    return build_report(production, evidences, config.promotion)
