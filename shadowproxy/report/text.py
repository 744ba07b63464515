"""Plain-language formatting shared by the gate reasons and the renderers.

Numbers in a report are read by people deciding a rollout, so they are shown with a few
significant digits, counts without decimals, and intervals with an en dash.
"""

from __future__ import annotations

import math

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
