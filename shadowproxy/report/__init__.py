"""The promotion report: gates judged on confidence intervals, rendered as JSON, Markdown
and a self-contained HTML page."""

from __future__ import annotations

from shadowproxy.report.document import SCHEMA, build_report, exit_code
from shadowproxy.report.gates import (
    GateResult,
    candidate_decision,
    evaluate_gates,
    overall_decision,
    recommend,
)
from shadowproxy.report.writer import write_report

__all__ = [
    "SCHEMA",
    "GateResult",
    "build_report",
    "candidate_decision",
    "evaluate_gates",
    "exit_code",
    "overall_decision",
    "recommend",
    "write_report",
]
