"""Cells of the Markdown tables: figures summarised over rounds as median (min … max)."""

from __future__ import annotations

from typing import Any

Summary = dict[str, float] | None


def num(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def cell(s: Summary, digits: int = 0, scale: float = 1.0) -> str:
    if s is None:
        return "–"
    med, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if lo == hi:
        return num(med, digits)
    return f"{num(med, digits)} ({num(lo, digits)} … {num(hi, digits)})"


def median(s: Summary, digits: int = 0, scale: float = 1.0) -> str:
    return num(s["median"] * scale, digits) if s else "–"


def pair(a: Summary, b: Summary, digits: int = 0, scale: float = 1.0) -> str:
    return f"{median(a, digits, scale)} / {median(b, digits, scale)}"


def percent(s: Summary) -> str:
    return cell(s, 1, 100.0) + " %" if s else "–"


def short(text: str | None, n: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if text else ""
    line = line.replace("|", "\\|")
    return line if len(line) <= n else line[: n - 1] + "…"


def measured(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: t for n, t in doc["targets"].items() if t["rounds"]}


def without_figures(title: str, section: dict[str, Any] | None) -> list[str]:
    """The lines of a section that has no figures: none when the run left it out, its
    heading and why when it failed."""
    if not section:
        return []
    what = f"`{section['target']}` not measured" if section.get("target") else "Not measured"
    return [f"### {title}", "", f"{what}: {short(section.get('error'))}"]


def commit_label(versions: dict[str, Any]) -> str:
    """The git commit a run measured, marked when the tree had uncommitted changes."""
    commit = versions["git_commit"] or "uncommitted"
    return commit + "+dirty" if versions["git_commit"] and versions["git_dirty"] else commit
