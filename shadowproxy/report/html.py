"""``report.html``: one self-contained page for someone who did not set up the test.

Everything is inline (styles, plots as base64 PNG data URIs), so the file can be attached to
a ticket or opened offline. Every string from the report is escaped: candidate names,
feature bins and examples come from traffic. A Content-Security-Policy forbids scripts and
any load that is not an inline image, so an escaping mistake still cannot run code or call
out.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from shadowproxy.report.plots import PLOTS
from shadowproxy.report.text import (
    DECISION_WORDS,
    describe_outcomes,
    describe_source,
    figure_rows,
    interval,
    metric_label,
    num,
    percent,
)

__all__ = ["MAX_ROWS", "render_html"]

MAX_ROWS = 20
"""Most slices and examples shown per candidate: the worst ones."""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;
background:#fff}
main{max-width:1180px;margin:0 auto;padding:0 24px 48px}
.banner{padding:20px 24px;color:#fff}
.banner h1{margin:0 0 6px;font-size:30px}
.banner p{margin:2px 0;font-size:16px}
.promote{background:#1a7f37}.reject{background:#cf222e}.insufficient_data{background:#9a6700}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-size:14px;
vertical-align:middle}
section.candidate,section.source{border-top:3px solid #d0d7de;margin-top:28px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:14px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.pass td.result{background:#dafbe1;color:#1a7f37;font-weight:600}
tr.fail td.result{background:#ffebe9;color:#cf222e;font-weight:600}
tr.undecided td.result{background:#fff8c5;color:#9a6700;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0}figcaption{font-size:13px;color:#57606a}
img{max-width:100%;border:1px solid #d0d7de}
td.diag{background:#dafbe1}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px;
word-break:break-all}
.note{color:#57606a;font-size:14px}
"""

_RESULT = {True: ("pass", "pass"), False: ("fail", "FAIL"), None: ("undecided", "not yet")}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cut(value: Any, limit: int = 300) -> str:
    s = str(value)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _table(head: Sequence[str], rows: Sequence[str]) -> str:
    ths = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _gates(c: Mapping[str, Any]) -> str:
    if not c["gates"]:
        return '<p class="note">No gates are configured.</p>'
    rows = []
    for g in c["gates"]:
        cls, word = _RESULT[g["passed"]]
        rows.append(
            f'<tr class="{cls}"><td>{_e(metric_label(g["metric"]))}</td>'
            f'<td class="num">{_e(num(g["value"]))}</td>'
            f'<td class="num">{_e(interval(g["ci_low"], g["ci_high"]))}</td>'
            f'<td class="num">{_e(g["op"])} {_e(num(g["threshold"]))}</td>'
            f'<td class="result">{word}</td><td>{_e(g["reason"])}</td></tr>'
        )
    return _table(["gate", "value", "interval", "threshold", "result", "reason"], rows)


def _metrics(ev: Mapping[str, Any]) -> str:
    metrics: Mapping[str, Any] = ev.get("metrics") or {}
    if not metrics:
        return ""
    rows = [
        f'<tr><td>{_e(metric_label(m))}</td><td class="num">{_e(num(v.get("value")))}</td>'
        f'<td class="num">{_e(interval(v.get("ci_low"), v.get("ci_high")))}</td>'
        f'<td class="note">{_e(v.get("unavailable") or v.get("method") or "")}</td></tr>'
        for m, v in metrics.items()
        if isinstance(v, Mapping)
    ]
    return (
        "<details><summary>All measured metrics</summary>"
        + _table(["metric", "value", "interval", "note"], rows)
        + "</details>"
    )


def _plots(ev: Mapping[str, Any]) -> str:
    data: Mapping[str, Any] = ev.get("plots") or {}
    figures = []
    for key, title, render in PLOTS:
        entry = data.get(key)
        png = render(entry) if isinstance(entry, Mapping) else None
        if png is None:
            continue
        b64 = base64.b64encode(png).decode("ascii")
        figures.append(
            f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{_e(title)}</figcaption></figure>"
        )
    if not figures:
        return ""
    return f'<h3>Plots</h3><div class="plots">{"".join(figures)}</div>'


def _flip_matrix(ev: Mapping[str, Any]) -> str:
    fm = ev.get("flip_matrix")
    if not isinstance(fm, Mapping):
        return ""
    if fm.get("too_many_pairs"):
        return (
            '<h3>Label flips</h3><p class="note">Too many distinct label pairs for a flip '
            "matrix; label agreement above counts every row.</p>"
        )
    labels, counts = fm.get("labels") or [], fm.get("counts") or []
    if not labels or len(counts) != len(labels) or any(len(r) != len(labels) for r in counts):
        return ""
    head = "".join(f"<th>{_e(lab)}</th>" for lab in labels)
    rows = []
    for i, (lab, row) in enumerate(zip(labels, counts, strict=True)):
        cells = "".join(
            f'<td class="num{" diag" if i == j else ""}">{_e(num(n))}</td>'
            for j, n in enumerate(row)
        )
        rows.append(f"<tr><th>{_e(lab)}</th>{cells}</tr>")
    return (
        "<h3>Label flips</h3>"
        '<p class="note">Rows: production label; columns: candidate label. '
        "The diagonal is agreement.</p>"
        f"<table><thead><tr><th>production \\ candidate</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _slices(ev: Mapping[str, Any]) -> str:
    slices = sorted(ev.get("slices") or [], key=lambda s: -float(s.get("flip_rate") or 0))
    if not slices:
        return ""
    rows = [
        f'<tr><td>{_e(s.get("feature"))}</td><td class="mono">{_e(_cut(s.get("bin")))}</td>'
        f'<td class="num">{_e(num(s.get("samples")))}</td>'
        f'<td class="num">{_e(num(s.get("flip_rate")))}</td></tr>'
        for s in slices[:MAX_ROWS]
    ]
    return "<h3>Slices that disagree most</h3>" + _table(
        ["feature", "bin", "samples", "flip rate"], rows
    )


def _examples(ev: Mapping[str, Any]) -> str:
    examples = sorted(ev.get("examples") or [], key=lambda x: -float(x.get("abs_diff") or 0))
    if not examples:
        return ""
    rows = [
        f'<tr><td class="mono">{_e(_cut(x.get("request_id"), 80))}</td>'
        f'<td class="num">{_e(num(x.get("abs_diff")))}</td>'
        f'<td class="mono">{_e(_cut(x.get("production")))}</td>'
        f'<td class="mono">{_e(_cut(x.get("candidate")))}</td></tr>'
        for x in examples[:MAX_ROWS]
    ]
    return "<h3>Examples that disagree most</h3>" + _table(
        ["request id", "abs diff", "production answer", "candidate answer"], rows
    )


def _figures(source: Mapping[str, Any]) -> str:
    rows = [
        f"<tr><td>{_e(how)}</td><td>{_e(which)}</td></tr>" for how, which in figure_rows(source)
    ]
    if not rows:
        return ""
    return (
        '<section class="source"><h2>Figures from Prometheus</h2>'
        + _table(["figures", "metrics"], rows)
        + "</section>"
    )


def _outcomes(ev: Mapping[str, Any]) -> str:
    line = describe_outcomes(ev.get("outcomes") or {})
    return f'<p class="note">{_e(line)}</p>' if line else ""


def _candidate(c: Mapping[str, Any], min_samples: int) -> str:
    ev: Mapping[str, Any] = c.get("evidence") or {}
    decision = c["decision"]
    return (
        '<section class="candidate">'
        f'<h2>{_e(c["name"])} <span class="note">{_e(c["version"])}</span> '
        f'<span class="badge {_e(decision)}">{_e(DECISION_WORDS[decision])}</span></h2>'
        f"<p>{_e(num(c['samples']))} paired samples (minimum {_e(num(min_samples))}).</p>"
        + _outcomes(ev)
        + _gates(c)
        + _metrics(ev)
        + _plots(ev)
        + _flip_matrix(ev)
        + _slices(ev)
        + _examples(ev)
        + "</section>"
    )


def render_html(report: Mapping[str, Any]) -> str:
    """Render a report built by :func:`shadowproxy.report.document.build_report`.

    Parameters
    ----------
    report : mapping
        The report dict.

    Returns
    -------
    str
        A complete HTML document with no external resource: a decision banner (colour and
        words), then per candidate its gates (value, interval, threshold, result, reason),
        plots, flip matrix, most disagreeing slices and examples; where the state came from
        and, for a Prometheus source, which figures are exact and which need snapshots.
    """
    prod = report["production"]
    promotion: Mapping[str, Any] = report.get("promotion") or {}
    min_samples = int(promotion.get("min_samples", 0))
    decision = report["decision"]
    source = report.get("source") if isinstance(report.get("source"), Mapping) else None
    title = f"Promotion report: {prod['name']} {prod['version']}"
    recommended = ""
    if report.get("recommended"):
        recommended = f"<p>Recommended candidate: <b>{_e(report['recommended'])}</b></p>"
    how = (
        f"Each gate is judged on the {percent(float(promotion['confidence']))} confidence "
        "interval of its metric: it passes when the whole interval is on the right side of "
        "the threshold, fails when the whole interval is on the wrong side, and is not yet "
        "decided while the interval straddles the threshold. Below "
        f"{num(min_samples)} paired samples no gate is decided."
        if "confidence" in promotion
        else ""
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<div class="banner {_e(decision)}">'
        f"<h1>Decision: {_e(DECISION_WORDS[decision])}</h1>"
        f"<p>{_e(report.get('summary', ''))}</p>{recommended}"
        f"<p>Production: {_e(prod['name'])} {_e(prod['version'])}</p></div>"
        f'<main><p class="note">{_e(how)}</p>'
        + (f'<p class="note">{_e(describe_source(source))}</p>' if source else "")
        + "".join(_candidate(c, min_samples) for c in report["candidates"])
        + (_figures(source) if source else "")
        + "</main></body></html>\n"
    )
