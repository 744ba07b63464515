"""The report's plots, as PNG bytes made with matplotlib's Agg renderer.

Figures are built with :class:`matplotlib.figure.Figure` and an Agg canvas directly rather
than through pyplot: no global figure registry, no GUI backend chosen from the environment,
and safe to call from any thread. matplotlib is imported on first use so importing the
report package (for the gate logic) stays cheap in the proxy.

Every function takes one entry of the evidence's ``plots`` and returns ``None`` when the data
is missing or malformed: a plot that cannot be drawn is left out, the report still renders.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "PLOTS",
    "abs_diff_hist",
    "input_psi",
    "latency_cdf",
    "resources",
    "score_hist",
]

PROD_COLOUR = "#4c72b0"
CAND_COLOUR = "#dd8452"
MAX_FEATURES = 30
"""Most features shown in the input drift plot: the most drifted ones."""


def _floats(xs: Any) -> list[float] | None:
    if not isinstance(xs, Sequence) or isinstance(xs, (str, bytes)) or not xs:
        return None
    try:
        out = [float(x) for x in xs]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(x) for x in out) else None


def _figure(width: float = 5.4, height: float = 3.0) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No Software metadata: the same data gives the same bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _style(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def score_hist(data: Mapping[str, Any]) -> bytes | None:
    """Production and candidate score distributions over the same bins.

    Parameters
    ----------
    data : mapping
        ``{"edges", "production", "candidate"}``: bin edges and counts per role.

    Returns
    -------
    bytes or None
        A PNG, or ``None`` when the data is missing or inconsistent.
    """
    edges = _floats(data.get("edges"))
    prod, cand = _floats(data.get("production")), _floats(data.get("candidate"))
    if edges is None or prod is None or cand is None:
        return None
    if not len(prod) == len(cand) == len(edges) - 1:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    # Shares, not counts: the roles may have seen different numbers of requests.
    for counts, label, colour in (
        (prod, "production", PROD_COLOUR),
        (cand, "candidate", CAND_COLOUR),
    ):
        total = sum(counts) or 1.0
        ax.stairs([c / total for c in counts], edges, label=label, color=colour, linewidth=2)
    _style(ax, "Score distribution", "score", "share of requests")
    ax.legend()
    return _png(fig)


def abs_diff_hist(data: Mapping[str, Any]) -> bytes | None:
    """Histogram of the absolute score difference between candidate and production.

    Parameters
    ----------
    data : mapping
        ``{"edges", "counts"}``.

    Returns
    -------
    bytes or None
        A PNG, or ``None`` when the data is missing or inconsistent.
    """
    edges, counts = _floats(data.get("edges")), _floats(data.get("counts"))
    if edges is None or counts is None or len(counts) != len(edges) - 1:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, color=CAND_COLOUR, alpha=0.8)
    _style(ax, "Divergence: |candidate − production| score", "absolute difference", "requests")
    return _png(fig)


def latency_cdf(data: Mapping[str, Any]) -> bytes | None:
    """Latency CDFs of both roles, drawn from their quantiles.

    Parameters
    ----------
    data : mapping
        ``{"q", "production_ms", "candidate_ms"}``: quantile levels in [0, 1] and the
        latency at each level per role.

    Returns
    -------
    bytes or None
        A PNG, or ``None`` when the data is missing or inconsistent.
    """
    q = _floats(data.get("q"))
    prod, cand = _floats(data.get("production_ms")), _floats(data.get("candidate_ms"))
    if q is None or prod is None or cand is None or not len(q) == len(prod) == len(cand):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for xs, label, colour in ((prod, "production", PROD_COLOUR), (cand, "candidate", CAND_COLOUR)):
        ax.plot(xs, q, marker="o", markersize=3, label=label, color=colour, linewidth=2)
    positive = [x for x in prod + cand if x > 0]
    # Tails are often orders of magnitude above the median: a log axis keeps both visible.
    if positive and len(positive) == len(prod + cand) and max(positive) / min(positive) > 50:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    _style(ax, "Latency CDF", "latency (ms)", "share of requests at or below")
    ax.legend(loc="lower right")
    return _png(fig)


def input_psi(data: Mapping[str, Any]) -> bytes | None:
    """Input drift per feature (PSI against the reference) as horizontal bars.

    Parameters
    ----------
    data : mapping
        ``{feature: psi}``.

    Returns
    -------
    bytes or None
        A PNG of the most drifted :data:`MAX_FEATURES` features, or ``None``.
    """
    if not isinstance(data, Mapping):
        return None
    items = []
    for feature, psi in data.items():
        value = _floats([psi])
        if value is not None:
            items.append((str(feature), value[0]))
    if not items:
        return None
    items = sorted(items, key=lambda kv: -kv[1])[:MAX_FEATURES]
    fig = _figure(5.4, 1.0 + 0.3 * len(items))
    ax = fig.add_subplot()
    names = [k for k, _ in reversed(items)]
    values = [v for _, v in reversed(items)]
    # The usual PSI reading: below 0.1 stable, 0.1-0.25 moderate, above 0.25 a real shift.
    colours = ["#55a868" if v < 0.1 else "#ccb974" if v < 0.25 else "#c44e52" for v in values]
    ax.barh(range(len(values)), values, color=colours)
    ax.set_yticks(range(len(values)), names)
    for line in (0.1, 0.25):
        ax.axvline(line, color="grey", linestyle="--", linewidth=1)
    _style(ax, "Input drift per feature (PSI vs reference)", "PSI", "")
    return _png(fig)


_RESOURCE_UNITS = {
    "cpu_ms_per_request": "CPU ms / request",
    "rss_mb": "RSS (MB)",
    "threads": "threads",
    "child_processes": "child processes",
}


def resources(data: Mapping[str, Any]) -> bytes | None:
    """Resource use of production next to the candidate, one panel per figure.

    Parameters
    ----------
    data : mapping
        ``{"production": {figure: x}, "candidate": {figure: x}}``.

    Returns
    -------
    bytes or None
        A PNG, or ``None`` when no figure is known for both roles.
    """
    prod, cand = data.get("production"), data.get("candidate")
    if not isinstance(prod, Mapping) or not isinstance(cand, Mapping):
        return None
    panels = []
    for key, label in _RESOURCE_UNITS.items():
        pair = _floats([prod.get(key), cand.get(key)])
        if pair is not None:
            panels.append((label, pair))
    if not panels:
        return None
    fig = _figure(2.2 * len(panels) + 0.6, 2.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, (p, c)) in zip(axes, panels, strict=True):
        ax.bar(["production", "candidate"], [p, c], color=[PROD_COLOUR, CAND_COLOUR])
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


PLOTS: tuple[tuple[str, str, Callable[[Mapping[str, Any]], bytes | None]], ...] = (
    ("score_hist", "Score distributions", score_hist),
    ("latency_quantiles", "Latency", latency_cdf),
    ("abs_diff_hist", "Divergence", abs_diff_hist),
    ("input_psi", "Input drift", input_psi),
    ("resources", "Resources", resources),
)
"""(evidence key, heading, renderer) of every plot, in report order."""
