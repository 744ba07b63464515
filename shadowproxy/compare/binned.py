"""Gate metrics from the exported state alone: what a Prometheus source can decide (pure).

Prometheus holds counts, fixed-bin histograms, sums and sketch buckets summed over the
replicas (:mod:`shadowproxy.compare.exported`), not the seeded sample of rows, the
absolute-difference sketch or the examples. From that state:

* counts, rates and their Wilson intervals, PSI and Jensen-Shannon on the score bins, input
  drift, costs and feedback are the same as from snapshots (means to floating-point
  rounding);
* the mean absolute and signed score differences get a normal-approximation interval from
  count, sum and sum of squares instead of the bootstrap over the sample;
* the Wasserstein distance and the KS statistic of the scores come from the bins, with the
  range every data set with those bin counts could give as their interval (gates then
  decide on the whole range), and the latency quantiles from the exported latency buckets
  (about 8 % wide), with the bucket that holds the quantile as their interval;
* the quantiles of the absolute difference, the KS p-value, the Spearman correlation, the
  slices and the examples need the sample, sketch or cells and are marked unavailable: a
  gate on them stays undecided and says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from shadowproxy.compare import stats
from shadowproxy.compare.evidence import Evaluator
from shadowproxy.compare.latency import quantile_bounds
from shadowproxy.compare.target import TargetState

NORMAL_METHOD = "normal approximation from count, sum and sum of squares"
BINS_METHOD = "from the fixed score bins; the interval is every value data in those bins allows"
LATENCY_METHOD = "from the exported latency buckets; the interval is the quantile's bucket"

FROM_SNAPSHOTS = "needs snapshot or admin sources"
NEEDS_SNAPSHOTS: Mapping[str, str] = {
    "score_p50_abs_diff": "the absolute-difference sketch is not exported",
    "score_p95_abs_diff": "the absolute-difference sketch is not exported",
    "score_p99_abs_diff": "the absolute-difference sketch is not exported",
    "score_ks_pvalue": "the p-value needs the sample of raw scores",
    "score_spearman": "the rank correlation needs the sample of paired scores",
}
"""Metrics a Prometheus source cannot give, with the reason."""

EVIDENCE_NEEDS_SNAPSHOTS: Mapping[str, str] = {
    "slices": "the flip counts per feature bin are not exported",
    "examples": "the most divergent pairs are not exported",
}
"""Report sections a Prometheus source cannot fill, with the reason."""

NORMAL_INTERVAL = ("score_mae", "score_bias", "noise_adjusted_score_mae")
BIN_BOUNDS = (
    "score_wasserstein", "score_ks", "latency_p50_ms", "latency_p99_ms", "latency_p99_ratio",
)  # fmt: skip
EXACT = (
    "samples", "label_agreement", "label_flip_rate", "noise_adjusted_flip_rate", "score_psi",
    "score_js", "score_max_abs_diff", "input_psi_max", "cpu_ms_per_request", "cpu_ratio",
    "rss_mb", "rss_delta_mb", "threads", "child_processes", "error_rate", "timeout_rate",
    "invalid_rate", "error_rate_delta", "accuracy_delta", "score_nonfinite_rate",
)  # fmt: skip


def figures() -> dict[str, Any]:
    """Which figures of a Prometheus report are exact, approximated, or need snapshots."""
    return {
        "exact": list(EXACT),
        "normal_interval": list(NORMAL_INTERVAL),
        "bin_bounds": list(BIN_BOUNDS),
        "needs_snapshots": {**NEEDS_SNAPSHOTS, **EVIDENCE_NEEDS_SNAPSHOTS},
    }


def normal_mean_interval(mean: float, m2: float, n: int, confidence: float) -> tuple[float, float]:
    """Normal-approximation confidence interval of a mean from its summary statistics.

    Parameters
    ----------
    mean : float
        Sample mean.
    m2 : float
        Sum of squared deviations from the mean, ``>= 0``.
    n : int
        Number of observations.
    confidence : float
        Confidence level in (0, 1).

    Returns
    -------
    tuple of float
        ``mean -/+ z * s / sqrt(n)`` with ``s**2 = m2 / (n - 1)`` and ``z`` the
        ``(1 + confidence) / 2`` normal quantile; ``(nan, nan)`` when ``n < 2``.

    Notes
    -----
    The central limit theorem makes this the large-sample interval of a mean; unlike a
    bootstrap it needs only count, sum and sum of squares, which add up across replicas.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if m2 < 0:
        raise ValueError(f"m2 must be >= 0, got {m2!r}")
    if n < 2:
        return stats.NAN_PAIR
    z = float(sps.norm.ppf(0.5 + confidence / 2.0))
    half = z * math.sqrt(m2 / (n - 1) / n)
    return mean - half, mean + half


def _edge_cdfs(p_counts: ArrayLike, q_counts: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Share of each sample below every bin's lower edge, plus 1 at the end (``bins + 1``)."""
    p = np.asarray(p_counts, dtype=float)
    q = np.asarray(q_counts, dtype=float)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"counts must be 1-D of one length, got shapes {p.shape} and {q.shape}")
    if np.any(p < 0) or np.any(q < 0):
        raise ValueError("counts must be non-negative")
    return (np.concatenate([[0.0], np.cumsum(p) / p.sum()]),
            np.concatenate([[0.0], np.cumsum(q) / q.sum()]))  # fmt: skip


def binned_ks_bounds(p_counts: ArrayLike, q_counts: ArrayLike) -> tuple[float, float, float]:
    """Two-sample KS statistic from histograms, with the range the raw data could give.

    Parameters
    ----------
    p_counts, q_counts : array_like
        Counts of the two samples over the same bins (any layout, open outer bins
        included); neither may be empty.

    Returns
    -------
    tuple of float
        ``(value, low, high)``. ``value == low`` is the largest CDF gap at the bin edges
        (:func:`shadowproxy.compare.stats.binned_ks`), a lower bound of the statistic of the
        raw data; ``high`` is the largest gap the raw data could reach inside a bin, where
        each CDF may rise anywhere between its values at the bin's edges.
    """
    p, q = _edge_cdfs(p_counts, q_counts)
    low = float(np.max(np.abs(p - q)))
    inside = np.maximum(p[1:] - q[:-1], q[1:] - p[:-1])
    return low, low, float(max(low, np.max(inside)))


def binned_wasserstein_bounds(
    edges: tuple[float, ...], p_counts: ArrayLike, q_counts: ArrayLike
) -> tuple[float, float, float] | None:
    """First Wasserstein distance from histograms of values in ``[edges[0], edges[-1]]``.

    Parameters
    ----------
    edges : tuple of float
        The layout's edges; bins are ``(-inf, e0)``, ``[e0, e1)``, ..., ``[e_last, inf)``.
    p_counts, q_counts : array_like
        Counts of the two samples, ``len(edges) + 1`` each; neither may be empty.

    Returns
    -------
    tuple of float or None
        ``(value, low, high)``: ``value`` is the distance between the two histograms with
        each bin's mass at its midpoint (and the last bin's at ``e_last``); ``low`` and
        ``high`` bound the distance of any raw data with these bin counts, from the range
        each CDF can take inside a bin. ``high`` is ``inf`` when the upper outer bin holds
        values (they may lie anywhere above ``e_last``), and the result is ``None`` when
        the lower outer bin does, since below ``e0`` not even the value has a bound.

    Notes
    -----
    ``W1 = integral |F_p - F_q| dx``. On a bin ``[a, b)`` each CDF lies between its values
    at ``a`` and ``b``, which bounds the integrand by the largest and smallest gap between
    those two ranges. Past ``e_last`` the integrand is not negative, so ``low`` holds
    whatever lies there; ``high`` only when nothing does.
    """
    p_arr, q_arr = np.asarray(p_counts, dtype=float), np.asarray(q_counts, dtype=float)
    if len(p_arr) != len(edges) + 1:
        raise ValueError(f"counts must have len(edges) + 1 = {len(edges) + 1} bins")
    if p_arr[0] or q_arr[0]:
        return None
    p, q = _edge_cdfs(p_arr, q_arr)
    widths = np.diff(np.asarray(edges, dtype=float))
    # Interior bins are 1 .. len(edges) - 1; bin i spans CDF entries i and i + 1.
    p_lo, p_hi, q_lo, q_hi = p[1:-2], p[2:-1], q[1:-2], q[2:-1]
    high = float(np.sum(widths * np.maximum(p_hi - q_lo, q_hi - p_lo)))
    low = float(np.sum(widths * np.maximum(0.0, np.maximum(q_lo - p_hi, p_lo - q_hi))))
    points = np.concatenate([[edges[0]], (np.asarray(edges[:-1]) + edges[1:]) / 2, [edges[-1]]])
    value = float(sps.wasserstein_distance(points, points, p_arr, q_arr))
    if p_arr[-1] or q_arr[-1]:
        high = math.inf  # a score of 1 and one of 3 share the upper outer bin
    return value, low, high


def _entry(value: float | None, low: float | None, high: float | None, method: str) -> dict:
    def clean(x: float | None) -> float | None:
        return None if x is None or not math.isfinite(x) else float(x)

    entry = {"value": clean(value), "ci_low": clean(low), "ci_high": clean(high), "method": method}
    if method != NORMAL_METHOD:
        entry["interval"] = "bounds"  # what the bins allow, not a confidence interval
    return entry


def unavailable(reason: str) -> dict[str, Any]:
    """A metric entry the gates read as "not decided", with why."""
    return {"value": None, "ci_low": None, "ci_high": None,
            "unavailable": f"{FROM_SNAPSHOTS}: {reason}"}  # fmt: skip


class BinnedEvaluator(Evaluator):
    """:class:`~shadowproxy.compare.evidence.Evaluator` for state rebuilt from Prometheus.

    Everything but the score divergences is computed as from snapshots; those are
    replaced as the module notes describe.
    """

    def _scores(self, st: TargetState) -> dict[str, Any]:
        # The parent computes PSI, JS and the maximum from the exported state; the sample
        # and the difference sketch are empty here, so its sample figures are replaced.
        out = super()._scores(st)
        if not st.production_hist.total:
            return out  # no score compared: nothing is missing that snapshots would have
        out.update({name: unavailable(reason) for name, reason in NEEDS_SNAPSHOTS.items()})
        for name, moments in (("score_mae", st.abs_diff), ("score_bias", st.diff)):
            if moments.count:
                interval = normal_mean_interval(
                    moments.mean, moments.m2, moments.count, self.confidence
                )
                out[name] = _entry(moments.mean, *interval, NORMAL_METHOD)
        p, c = st.production_hist, st.candidate_hist
        if p.counts.sum() and c.counts.sum():
            out["score_ks"] = _entry(*binned_ks_bounds(p.counts, c.counts), BINS_METHOD)
            bounds = binned_wasserstein_bounds(p.layout.edges, p.counts, c.counts)
            out["score_wasserstein"] = (
                unavailable("scores below the score bins' lower edge leave it unbounded")
                if bounds is None
                else _entry(*bounds, BINS_METHOD)
            )
        return out

    def _resources(self, st: TargetState) -> dict[str, Any]:
        out = super()._resources(st)
        if not st.candidate_latency.count:
            return out
        p50 = quantile_bounds(st.candidate_latency, 0.5)
        p99 = quantile_bounds(st.candidate_latency, 0.99)
        out["latency_p50_ms"] = _entry(*p50, LATENCY_METHOD)
        out["latency_p99_ms"] = _entry(*p99, LATENCY_METHOD)
        if not st.production_latency.count:
            return out
        value, low, high = quantile_bounds(st.production_latency, 0.99)
        if value > 0:
            # A production bucket reaching down to 0 leaves the ratio's top open: that end
            # is left out, and the gate reads the value there, as from snapshots.
            top = p99[2] / low if low > 0 else None
            out["latency_p99_ratio"] = _entry(p99[0] / value, p99[1] / high, top, LATENCY_METHOD)
        return out
