"""Plain-language formatting shared by the gate reasons and the renderers.

Numbers in a report are read by people deciding a rollout, so they are shown with a few
significant digits, counts without decimals, and intervals with an en dash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shadowproxy.pairing.record import OUTCOMES

DECISION_WORDS = {
    "promote": "PROMOTE",
    "reject": "REJECT",
    "insufficient_data": "NOT YET (insufficient data)",
}
"""How each decision is shown in a banner."""


def metric_label(metric: str) -> str:
    """Return a gate metric name as words.

    Parameters
    ----------
    metric : str
        A gate metric name such as ``label_agreement``.

    Returns
    -------
    str
        The name with underscores as spaces, e.g. ``label agreement``.
    """
    return metric.replace("_", " ")


def num(value: float | int | None) -> str:
    """Format a number for people: counts as integers, the rest with 4 significant digits.

    Parameters
    ----------
    value : float or int or None
        The number; ``None`` is shown as an em dash.

    Returns
    -------
    str
        The formatted number.
    """
    if value is None:
        return "—"
    x = float(value)
    if math.isnan(x):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    # Counts and round thresholds (1000, 200) read better without an exponent.
    if x.is_integer() and abs(x) < 1e12:
        return f"{int(x):d}"
    if 1e-4 <= abs(x) < 1e6:
        return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.1f}"
    return f"{x:.3g}"


def interval(ci_low: float | None, ci_high: float | None) -> str:
    """Format a confidence interval, or an em dash when there is none.

    Parameters
    ----------
    ci_low, ci_high : float or None
        The interval's ends.

    Returns
    -------
    str
        ``"lo–hi"``, or ``"—"`` when both ends are missing.
    """
    if ci_low is None and ci_high is None:
        return "—"
    return f"{num(ci_low)}–{num(ci_high)}"


def percent(confidence: float) -> str:
    """Format a confidence level (``0.95``) as a percentage (``95%``).

    Parameters
    ----------
    confidence : float
        A level strictly between 0 and 1.

    Returns
    -------
    str
        The level as a percentage with no needless decimals.
    """
    return f"{confidence * 100:.6g}%"


FIGURE_CLASSES = (
    ("exact", "exact, as from snapshots"),
    ("normal_interval", "value exact; interval from the normal approximation"),
    ("bin_bounds", "from the score bins; the interval bounds the binning error"),
)
"""How each class of figure of a Prometheus source is described, in report order."""


def describe_outcomes(outcomes: Mapping[str, int]) -> str:
    """One line on what happened to the requests mirrored to a candidate; empty without
    figures (a report from an older snapshot)."""
    requests = outcomes.get("requests")
    if not requests:
        return ""
    answered = ", ".join(f"{num(outcomes.get(o, 0))} {o}" for o in OUTCOMES if o != "dropped")
    line = f"{num(requests)} requests mirrored: {answered}"
    dropped = outcomes.get("dropped", 0)
    if dropped:
        line += (
            f"; {num(dropped)} dropped by the proxy ({dropped / requests:.1%}), left out of "
            "the rates"
        )
    return line + "."


def describe_source(source: Mapping[str, Any]) -> str:
    """One sentence saying where a report's comparator state came from.

    Parameters
    ----------
    source : mapping
        The report's ``source``: ``kind`` (``snapshot`` or ``prometheus``), ``sources``,
        ``replicas`` (how many states were merged) and ``origins`` (which).

    Returns
    -------
    str
        For example "Comparator state merged exactly from 2 snapshots: a.json, b.json."
    """
    origins = ", ".join(str(o) for o in source.get("origins") or ())
    n = int(source.get("replicas") or 0)
    if source.get("kind") == "prometheus":
        where = ", ".join(str(s) for s in source.get("sources") or ())
        text = f"Comparator state from Prometheus ({where}), summed over {n} replica"
        text += "s" if n != 1 else ""
        return f"{text}: {origins}." if origins else f"{text}."
    text = f"Comparator state merged exactly from {n} snapshot{'s' if n != 1 else ''}"
    return f"{text}: {origins}." if origins else f"{text}."


def figure_rows(source: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(how, which metrics)`` rows of a Prometheus source's figures; none for snapshots.

    Parameters
    ----------
    source : mapping
        The report's ``source``; its ``figures`` lists the metrics per class and, under
        ``needs_snapshots``, the reason each missing figure needs snapshots.

    Returns
    -------
    list of tuple of str
        One row per class of figure, the last ones for what needs snapshot or admin sources.
    """
    figures: Mapping[str, Any] = source.get("figures") or {}
    rows = [
        (words, ", ".join(metric_label(m) for m in figures[key]))
        for key, words in FIGURE_CLASSES
        if figures.get(key)
    ]
    rows += [
        (f"needs snapshot or admin sources: {metric_label(name)}", str(reason))
        for name, reason in (figures.get("needs_snapshots") or {}).items()
    ]
    return rows
