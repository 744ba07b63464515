"""report.md and report.html: content, self-containment and escaping."""

from __future__ import annotations

import base64
import html
import re

from shadowproxy.report import build_report
from shadowproxy.report.html import render_html
from shadowproxy.report.markdown import cell, render_markdown
from tests.report.samples import PRODUCTION, PROMOTION, evidence

INJECTED = '<script>alert("x")</script>'


def report(name: str = "churn-rc") -> dict:
    return build_report(
        PRODUCTION, [evidence(name, good=True), evidence("churn-bad", good=False)], PROMOTION
    )


def test_markdown_has_banner_tables_and_every_reason() -> None:
    r = report()
    md = render_markdown(r)
    assert md.splitlines()[2] == "**Decision: PROMOTE** (recommended: churn-rc)"
    for c in r["candidates"]:
        assert f"## {c['name']} {c['version']}" in md
        for g in c["gates"]:
            assert g["reason"] in md
    assert "| gate | value | interval | threshold | result | reason |" in md
    assert "| label agreement | 0.993 | 0.991–0.995 | min 0.98 | pass |" in md
    assert "| FAIL |" in md and "| undecided |" in md
    assert "[60, 70)".replace("[", "\\[") in md  # slices
    assert "req-1" in md  # examples


def test_markdown_neutralises_traffic_text() -> None:
    assert cell("a|b\nc") == "a\\|b c"
    md = render_markdown(report(INJECTED))
    assert "<script>" not in md
    assert "&lt;script&gt;" in md


def test_html_has_banner_and_every_reason() -> None:
    r = report()
    page = render_html(r)
    assert page.startswith("<!DOCTYPE html>")
    assert '<div class="banner promote">' in page
    assert "Decision: PROMOTE" in page
    for c in r["candidates"]:
        for g in c["gates"]:
            assert html.escape(g["reason"]) in page
    assert page.count('<tr class="fail">') == 2
    assert "Label flips" in page and "Slices that disagree most" in page
    assert "Examples that disagree most" in page


def test_html_banner_colour_follows_the_decision() -> None:
    r = build_report(PRODUCTION, [evidence("x", good=False)], PROMOTION)
    assert '<div class="banner reject">' in render_html(r)
    r = build_report(PRODUCTION, [evidence("x", good=True, samples=5)], PROMOTION)
    assert '<div class="banner insufficient_data">' in render_html(r)


def test_html_is_self_contained() -> None:
    page = render_html(report())
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page and "@import" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 2 * 5  # five plots per candidate
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        png = base64.b64decode(s.split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_html_escapes_traffic_text() -> None:
    ev = evidence(INJECTED, good=True)
    ev["examples"][0]["candidate"] = INJECTED
    ev["slices"][0]["bin"] = '"><img src=x onerror=alert(1)>'
    ev["flip_matrix"]["labels"] = ["<b>a</b>", "b"]
    page = render_html(build_report(PRODUCTION, [ev], PROMOTION))
    assert "<script" not in page
    assert "<img src=x" not in page and "<b>a</b>" not in page
    assert html.escape(INJECTED) in page
    assert "content=\"default-src 'none'" in page  # the CSP guards any future slip


def test_missing_plot_data_is_left_out() -> None:
    ev = evidence("x", good=True)
    ev["plots"] = {"score_hist": {"edges": [0, 1], "production": [1, 2], "candidate": [3]}}
    del ev["flip_matrix"], ev["slices"], ev["examples"]
    page = render_html(build_report(PRODUCTION, [ev], PROMOTION))
    assert "<img" not in page and "<h3>Plots</h3>" not in page
    assert "Label flips" not in page and "Examples that disagree most" not in page
    md = render_markdown(build_report(PRODUCTION, [ev], PROMOTION))
    assert "Slices" not in md


def test_what_happened_to_the_mirrored_requests_is_stated_and_absent_figures_are_left_out() -> None:
    ev = evidence("churn-rc", good=True)
    ev["outcomes"] = {"requests": 1000, "ok": 570, "error": 30, "timeout": 0, "invalid": 0,
                      "dropped": 400}  # fmt: skip
    report = build_report(PRODUCTION, [ev], PROMOTION)
    line = (
        "1000 requests mirrored: 570 ok, 30 error, 0 timeout, 0 invalid; 400 dropped by the "
        "proxy (40.0%), left out of the rates."
    )
    assert line in render_markdown(report)
    assert html.escape(line) in render_html(report)
    # A report from a snapshot without these figures says nothing of them.
    older = build_report(PRODUCTION, [evidence("churn-rc", good=True)], PROMOTION)
    assert "requests mirrored" not in render_markdown(older) + render_html(older)
