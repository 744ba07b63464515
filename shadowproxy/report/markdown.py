"""``report.md``: the report as Markdown, for pull requests, chat and terminals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shadowproxy.report.text import (
    DECISION_WORDS,
    describe_outcomes,
    describe_source,
    figure_rows,
    interval,
    metric_label,
    num,
)

__all__ = ["MAX_ROWS", "cell", "render_markdown"]

MAX_ROWS = 20
"""Most slices and examples listed per candidate: the worst ones."""

_RESULT = {True: "pass", False: "FAIL", None: "undecided"}


def cell(text: Any, limit: int = 200) -> str:
    """Make text safe for one Markdown table cell.

    Names and examples come from traffic, so markup characters are neutralised: a pipe
    would break the table and raw HTML would be rendered by most viewers.

    Parameters
    ----------
    text : Any
        The value; converted with ``str``.
    limit : int, optional
        Longer text is cut and ends with an ellipsis.

    Returns
    -------
    str
        The escaped, single-line text.
    """
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    for raw, safe in (("\\", "\\\\"), ("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        s = s.replace(raw, safe)
    for ch in "|`*_[]":
        s = s.replace(ch, "\\" + ch)
    return s


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _candidate(c: Mapping[str, Any], min_samples: int) -> list[str]:
    ev: Mapping[str, Any] = c.get("evidence") or {}
    out = [
        f"## {cell(c['name'])} {cell(c['version'])}: {DECISION_WORDS[c['decision']]}",
        "",
        f"{c['samples']} paired samples (minimum {min_samples}).",
        "",
    ]
    if mirrored := describe_outcomes(ev.get("outcomes") or {}):
        out += [cell(mirrored, 400), ""]
    gate_rows = [
        [
            cell(metric_label(g["metric"])),
            num(g["value"]),
            interval(g["ci_low"], g["ci_high"]),
            f"{g['op']} {num(g['threshold'])}",
            _RESULT[g["passed"]],
            cell(g["reason"], 400),
        ]
        for g in c["gates"]
    ]
    if gate_rows:
        out += _table(["gate", "value", "interval", "threshold", "result", "reason"], gate_rows)
    else:
        out.append("No gates are configured.")
    slices = sorted(ev.get("slices") or [], key=lambda s: -float(s.get("flip_rate") or 0))
    if slices:
        out += ["", "### Slices that disagree most", ""]
        out += _table(
            ["feature", "bin", "samples", "flip rate"],
            [
                [
                    cell(s.get("feature")),
                    cell(s.get("bin")),
                    num(s.get("samples")),
                    num(s.get("flip_rate")),
                ]
                for s in slices[:MAX_ROWS]
            ],
        )
    examples = sorted(ev.get("examples") or [], key=lambda e: -float(e.get("abs_diff") or 0))
    if examples:
        out += ["", "### Examples that disagree most", ""]
        out += _table(
            ["request id", "abs diff", "production", "candidate"],
            [
                [
                    cell(e.get("request_id")),
                    num(e.get("abs_diff")),
                    cell(e.get("production")),
                    cell(e.get("candidate")),
                ]
                for e in examples[:MAX_ROWS]
            ],
        )
    return out


def render_markdown(report: Mapping[str, Any]) -> str:
    """Render a report built by :func:`shadowproxy.report.document.build_report`.

    Parameters
    ----------
    report : mapping
        The report dict.

    Returns
    -------
    str
        The Markdown text: a decision banner line and where the state came from, then per
        candidate a gate table (gate, value, interval, threshold, result, reason), its most
        disagreeing slices and examples, and for a Prometheus source which figures are
        exact and which need snapshots.
    """
    prod = report["production"]
    promotion: Mapping[str, Any] = report.get("promotion") or {}
    min_samples = int(promotion.get("min_samples", 0))
    banner = f"**Decision: {DECISION_WORDS[report['decision']]}**"
    if report.get("recommended"):
        banner += f" (recommended: {cell(report['recommended'])})"
    out = [
        f"# Promotion report for {cell(prod['name'])} {cell(prod['version'])}",
        "",
        banner,
        "",
    ]
    if report.get("summary"):
        out += [cell(report["summary"], 2000), ""]
    if "confidence" in promotion:
        out += [f"Intervals are {num(promotion['confidence'] * 100)}% confidence intervals.", ""]
    source = report.get("source")
    if isinstance(source, Mapping):
        out += [cell(describe_source(source), 2000), ""]
    for c in report["candidates"]:
        out += _candidate(c, min_samples) + [""]
    rows = figure_rows(source) if isinstance(source, Mapping) else []
    if rows:
        out += ["## Figures from Prometheus", ""]
        out += _table(["figures", "metrics"], [[cell(a), cell(b, 2000)] for a, b in rows])
    return "\n".join(out).rstrip("\n") + "\n"
