"""The promotion report as one JSON-able dict: the contract's ``report.json``.

:func:`build_report` is pure: the same evidence and config give the same report, byte for
byte once serialised, so reports can be diffed and tested. Besides the contract's keys it
carries ``summary`` (one sentence for the banner), ``promotion`` (the settings the gates were
judged with) and, per candidate, ``evidence`` (the mirrored requests by outcome, plots, flip
matrix, slices, examples and the metric intervals) for the Markdown and HTML renderers.
``shadowproxy report`` adds ``source``: the kind of source the state came from (snapshots or
Prometheus), the sources, the replicas merged and, for Prometheus, which figures are exact
and which need snapshots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from shadowproxy.config.model import Promotion
from shadowproxy.report.gates import (
    Decision,
    GateResult,
    candidate_decision,
    evaluate_gates,
    overall_decision,
    recommend,
)
from shadowproxy.report.text import metric_label

__all__ = ["EXIT_CODES", "SCHEMA", "build_report", "exit_code"]

SCHEMA = "shadowproxy.report/v1"
"""The ``schema`` value of every report this module builds."""

EXIT_CODES: Mapping[str, int] = {"promote": 0, "reject": 1, "insufficient_data": 3}
"""Exit code of ``shadowproxy report`` per top-level decision."""

_EVIDENCE_KEYS = ("outcomes", "plots", "flip_matrix", "slices", "examples", "input_drift")
_CI_KEYS = ("value", "ci_low", "ci_high")
# How a figure was computed when not the usual way, and why one could not be.
_NOTE_KEYS = ("method", "unavailable", "interval")


def exit_code(decision: str) -> int:
    """Return the process exit code for a top-level decision.

    Parameters
    ----------
    decision : str
        ``promote``, ``reject`` or ``insufficient_data``.

    Returns
    -------
    int
        0, 1 or 3.

    Raises
    ------
    ValueError
        For any other decision.
    """
    try:
        return EXIT_CODES[decision]
    except KeyError:
        raise ValueError(f"unknown decision {decision!r}") from None


def _value(entry: Any) -> float | None:
    value = entry.get("value") if isinstance(entry, Mapping) else entry
    if value is None or isinstance(value, bool):
        return None
    f = float(value)
    # NaN is "not measurable" and not valid JSON.
    return None if math.isnan(f) else f


def _entry(e: Any) -> dict[str, Any]:
    if not isinstance(e, Mapping):
        return dict.fromkeys(_CI_KEYS)
    entry: dict[str, Any] = {k: _value(e.get(k)) for k in _CI_KEYS}
    entry.update({k: str(e[k]) for k in _NOTE_KEYS if e.get(k)})
    return entry


def _summary(candidates: Sequence[Mapping[str, Any]], decision: str, best: str | None) -> str:
    if not candidates:
        return "No candidate was measured."
    if decision == "promote":
        return f"Promote {best}: it passes every gate."
    parts = []
    for c in candidates:
        failed = [metric_label(g["metric"]) for g in c["gates"] if g["passed"] is False]
        open_ = [metric_label(g["metric"]) for g in c["gates"] if g["passed"] is None]
        if failed:
            parts.append(f"{c['name']} fails {', '.join(failed)}")
        elif open_:
            parts.append(f"{c['name']} is not yet decided on {', '.join(open_)}")
        else:
            parts.append(f"{c['name']} has too few samples")
    head = "No candidate passes every gate" if decision == "reject" else "Not enough evidence yet"
    return f"{head}: {'; '.join(parts)}."


def build_report(
    production: Mapping[str, Any],
    evidences: Sequence[Mapping[str, Any]],
    promotion: Promotion,
) -> dict[str, Any]:
    """Judge every candidate and assemble the report.

    Parameters
    ----------
    production : mapping
        ``{"name", "version"}`` of the production model.
    evidences : sequence of mapping
        One evidence dict per considered candidate (name, version, samples, metrics,
        plots, flip_matrix, slices, examples), in config order.
    promotion : Promotion
        The ``promotion:`` section of the config.

    Returns
    -------
    dict
        The contract's report: ``schema``, ``decision``, ``recommended`` (the promoted
        candidate furthest from its tightest threshold, ``None`` when none is promoted),
        ``production`` and ``candidates``, plus ``summary``, ``promotion`` and per-candidate
        ``evidence`` (each metric's interval, with a ``method`` when it was computed another
        way than usual and ``"interval": "bounds"`` when the interval is a range the binned
        data allows) and ``unavailable`` (metric to the reason its source cannot give it,
        only when there is one).
    """
    candidates: list[dict[str, Any]] = []
    judged: list[tuple[str, int, Decision, Sequence[GateResult]]] = []
    for ev in evidences:
        name = str(ev["name"])
        samples = int(ev.get("samples") or 0)
        metrics: Mapping[str, Any] = ev.get("metrics") or {}
        results = evaluate_gates(
            promotion.gates, metrics, samples, promotion.min_samples, promotion.confidence
        )
        decision = candidate_decision(results, samples, promotion.min_samples)
        judged.append((name, samples, decision, results))
        evidence: dict[str, Any] = {k: ev[k] for k in _EVIDENCE_KEYS if ev.get(k) is not None}
        evidence["metrics"] = {m: _entry(e) for m, e in metrics.items()}
        candidate = {
            "name": name,
            "version": str(ev.get("version", "")),
            "samples": samples,
            "decision": decision,
            "metrics": {m: _value(e) for m, e in metrics.items()},
            "gates": [r.to_dict() for r in results],
            "evidence": evidence,
        }
        unavailable = {
            m: str(e["unavailable"])
            for m, e in metrics.items()
            if isinstance(e, Mapping) and e.get("unavailable")
        }
        if unavailable:
            candidate["unavailable"] = unavailable
        candidates.append(candidate)
    decision = overall_decision([c["decision"] for c in candidates])
    best = recommend(judged)
    return {
        "schema": SCHEMA,
        "decision": decision,
        "recommended": best,
        "production": {
            "name": str(production.get("name", "")),
            "version": str(production.get("version", "")),
        },
        "candidates": candidates,
        "summary": _summary(candidates, decision, best),
        "promotion": {
            "min_samples": promotion.min_samples,
            "confidence": promotion.confidence,
            "gates": [
                {"metric": g.metric, "op": op, "threshold": float(t)}
                for g in promotion.gates
                for op, t in (("min", g.min), ("max", g.max))
                if t is not None
            ],
        },
    }
