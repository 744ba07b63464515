"""Gate metrics and report evidence from comparator state (pure, no I/O).

Every metric comes with an interval where one is meaningful: Wilson intervals for rates
(or anytime-valid confidence sequences with ``promotion.anytime_valid``), seeded bootstrap
intervals over the reservoir sample for score divergences. Deltas and ratios are candidate
minus, or over, production on the same requests. A metric that cannot be measured yet is
``None``, which the gates read as "not decided".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shadowproxy.compare import stats
from shadowproxy.compare.reference import Reference
from shadowproxy.compare.target import ABS_DIFF, C_SCORE, DIFF, OTHER, P_SCORE, TargetState
from shadowproxy.config.model import Promotion
from shadowproxy.pairing.redact import redact_body

Interval = tuple[float | None, float | None]
LATENCY_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
BOOTSTRAP_RESAMPLES = 1000
SLICE_MIN_ROWS = 20
TOP_SLICES = 10


def _metric(value: float | None, interval: Interval = (None, None)) -> dict[str, float | None]:
    def clean(x: float | None) -> float | None:
        return None if x is None or not math.isfinite(x) else float(x)

    return {"value": clean(value), "ci_low": clean(interval[0]), "ci_high": clean(interval[1])}


# Estimated from the sample: without an interval, not decided.
SAMPLED_INTERVALS = (
    "score_mae", "score_bias", "score_p50_abs_diff", "score_p95_abs_diff", "score_p99_abs_diff",
)  # fmt: skip


class Evaluator:
    """Computes a target's metrics with the configured confidence and seed."""

    def __init__(self, promotion: Promotion, seed: int) -> None:
        self.confidence = promotion.confidence
        self.anytime = promotion.anytime_valid
        self.seed = seed

    def rate(self, successes: int, n: int) -> dict[str, float | None]:
        if n <= 0:
            return _metric(None)
        if self.anytime:
            interval = stats.proportion_confidence_sequence(successes, n, self.confidence)
        else:
            interval = stats.wilson_interval(successes, n, self.confidence)
        return _metric(successes / n, interval)

    def bootstrap(self, values: np.ndarray, statistic: Any, stream: int) -> Interval:
        if values.size < 2:
            return (None, None)
        # One child seed per statistic, so each interval is reproducible on its own.
        seed = np.random.SeedSequence([self.seed, stream])
        low, high = stats.bootstrap_ci(
            values, statistic, self.confidence, seed, resamples=BOOTSTRAP_RESAMPLES
        )
        return (low, high)

    def metrics(self, st: TargetState, baseline: TargetState | None = None) -> dict[str, Any]:
        m: dict[str, Any] = {"samples": _metric(float(st.compared))}
        agreement = self.rate(st.agree, st.label_rows)
        m["label_agreement"] = agreement
        m["label_flip_rate"] = _complement(agreement)
        if baseline is not None and baseline.label_rows:
            noise = _complement(self.rate(baseline.agree, baseline.label_rows))
            m["noise_adjusted_flip_rate"] = _difference(m["label_flip_rate"], noise)
        else:
            m["noise_adjusted_flip_rate"] = m["label_flip_rate"]
        m.update(self._scores(st))
        scored = st.abs_diff.count + st.abs_diff.nonfinite
        if scored:
            # A NaN or infinite score on either side is a broken answer, not a small one.
            m["score_nonfinite_rate"] = self.rate(st.abs_diff.nonfinite, scored)
        if "score_mae" in m:
            # Diffy's idea: what production disagrees with itself is noise, not the candidate.
            noise_mae = _metric(0.0, (0.0, 0.0))
            if baseline is not None and baseline.abs_diff.count:
                noise_mae = _metric(baseline.abs_diff.mean, (baseline.abs_diff.mean,) * 2)
            m["noise_adjusted_score_mae"] = _difference(m["score_mae"], noise_mae)
        m.update(self._resources(st))
        m.update(self._errors(st))
        if st.feedback_rows:
            prod = self.rate(st.production_correct, st.feedback_rows)
            cand = self.rate(st.candidate_correct, st.feedback_rows)
            m["accuracy_delta"] = _difference(cand, prod)
        return m

    def _scores(self, st: TargetState) -> dict[str, Any]:
        out: dict[str, Any] = {}
        sample = st.reservoir.rows() if st.reservoir is not None else np.empty((0, 4))
        # The moments and sketches leave non-finite scores out (score_nonfinite_rate counts
        # them); the intervals and tests over the sample must leave out the same rows.
        sample = sample[np.isfinite(sample).all(axis=1)]
        if st.abs_diff.count:
            out["score_mae"] = _metric(
                st.abs_diff.mean,
                self.bootstrap(sample[:, ABS_DIFF], lambda x: x.mean(axis=-1), 1),
            )
            out["score_bias"] = _metric(
                st.diff.mean, self.bootstrap(sample[:, DIFF], lambda x: x.mean(axis=-1), 2)
            )
            for stream, (q, name) in enumerate(
                ((0.5, "score_p50_abs_diff"), (0.95, "score_p95_abs_diff")), start=4
            ):
                out[name] = _metric(
                    float(st.abs_sketch.quantile(q)),
                    self.bootstrap(
                        sample[:, ABS_DIFF], lambda x, q=q: np.quantile(x, q, axis=-1), stream
                    ),
                )
            # Not estimated from a sample: the largest difference over every compared row,
            # exact (also across merged replicas), so its interval is the value itself.
            out["score_max_abs_diff"] = _metric(st.abs_diff.max, (st.abs_diff.max,) * 2)
            out["score_p99_abs_diff"] = _metric(
                float(st.abs_sketch.quantile(0.99)),
                self.bootstrap(sample[:, ABS_DIFF], lambda x: np.quantile(x, 0.99, axis=-1), 3),
            )
            out["score_psi"] = _metric(
                stats.psi(st.production_hist.counts, st.candidate_hist.counts)
            )
            out["score_js"] = _metric(
                stats.js_distance(st.production_hist.counts, st.candidate_hist.counts)
            )
            if len(sample) < 2:
                # An estimate whose interval cannot be computed must not pass on its point
                # value alone: the gate stays undecided.
                why = f"{len(sample)} finite sampled rows, too few for an interval"
                for name in SAMPLED_INTERVALS:
                    out[name]["unavailable"] = why
        if len(sample) >= 2:
            p, c = sample[:, P_SCORE], sample[:, C_SCORE]
            out["score_wasserstein"] = _metric(stats.wasserstein1(p, c))
            ks, pvalue = stats.ks_test(p, c)
            out["score_ks"] = _metric(ks)
            out["score_ks_pvalue"] = _metric(pvalue)
            out["score_spearman"] = _metric(stats.spearman(p, c))
        return out

    def _resources(self, st: TargetState) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if st.candidate_latency.count:
            p50 = float(st.candidate_latency.quantile(0.5))
            p99 = float(st.candidate_latency.quantile(0.99))
            out["latency_p50_ms"] = _metric(p50)
            out["latency_p99_ms"] = _metric(p99)
            prod99 = float(st.production_latency.quantile(0.99))
            if prod99 > 0:
                out["latency_p99_ratio"] = _metric(p99 / prod99)
        if st.candidate_cpu_ms.count:
            out["cpu_ms_per_request"] = _metric(st.candidate_cpu_ms.mean)
            if st.production_cpu_ms.count and st.production_cpu_ms.mean > 0:
                out["cpu_ratio"] = _metric(st.candidate_cpu_ms.mean / st.production_cpu_ms.mean)
        if st.candidate_rss_mb.count:
            out["rss_mb"] = _metric(st.candidate_rss_mb.mean)
            if st.production_rss_mb.count:
                out["rss_delta_mb"] = _metric(st.candidate_rss_mb.mean - st.production_rss_mb.mean)
        if st.candidate_threads.count:
            out["threads"] = _metric(st.candidate_threads.max)
        if st.candidate_children.count:
            out["child_processes"] = _metric(st.candidate_children.max)
        return out

    def _errors(self, st: TargetState) -> dict[str, Any]:
        sent = st.requests - st.candidate_outcomes.get("dropped", 0)
        if sent <= 0:
            return {}
        c = st.candidate_outcomes
        failed = c.get("error", 0) + c.get("timeout", 0) + c.get("invalid", 0)
        error_rate = self.rate(failed, sent)
        # Production's outcomes are counted on the requests sent to the target (snapshots
        # written before that counted every request: their totals are then larger).
        p = st.production_outcomes
        prod_failed = p.get("error", 0) + p.get("timeout", 0) + p.get("invalid", 0)
        prod_rate = self.rate(prod_failed, max(1, sum(p.values()) - p.get("dropped", 0)))
        return {
            "error_rate": error_rate,
            "timeout_rate": self.rate(c.get("timeout", 0), sent),
            "invalid_rate": self.rate(c.get("invalid", 0), sent),
            "error_rate_delta": _difference(error_rate, prod_rate),
        }


def _complement(m: dict[str, float | None]) -> dict[str, float | None]:
    value, low, high = m["value"], m["ci_low"], m["ci_high"]
    return _metric(
        None if value is None else 1 - value,
        (None if high is None else 1 - high, None if low is None else 1 - low),
    )


def _difference(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, Any]:
    """a − b, with the conservative interval [a_low − b_high, a_high − b_low]."""
    if a["value"] is None or b["value"] is None:
        return _metric(None)
    low = None if a["ci_low"] is None or b["ci_high"] is None else a["ci_low"] - b["ci_high"]
    high = None if a["ci_high"] is None or b["ci_low"] is None else a["ci_high"] - b["ci_low"]
    return _metric(a["value"] - b["value"], (low, high))


def input_drift(st: TargetState, reference: Reference | None) -> list[dict[str, Any]]:
    """Per feature, live traffic against the reference, and missing-value rates.

    Numeric features get PSI and the binned KS test over the reference's bins; categorical
    ones get PSI and the chi-square goodness-of-fit test over the reference's categories
    (values the reference never saw pooled into one cell, see :func:`stats.chi_square`).
    """
    if reference is None:
        return []
    out = []
    for feature in reference.features:
        hist = st.inputs.get(feature.name)
        counts = st.categorical.get(feature.name)
        if feature.layout is not None and hist is not None and hist.total:
            expected = np.asarray(feature.counts)
            ks, pvalue = stats.binned_ks(expected, hist.counts)
            seen = hist.total  # NaN values included
            out.append(
                {
                    "feature": feature.name,
                    "kind": "numeric",
                    "psi": float(stats.psi(expected, hist.counts)),
                    "ks": ks,
                    "ks_pvalue": pvalue,
                    "nan_rate": hist.nan / seen,
                    "reference_nan_rate": feature.nan_rate,
                }
            )
        elif feature.kind == "categorical" and counts is not None and counts.total:
            # The reference's counts in the live layout's order, 0 for the unseen cell.
            expected = np.asarray([feature.categories.get(c, 0) for c in counts.categories] + [0])
            chi2, pvalue = stats.chi_square(expected, counts.counts)
            out.append(
                {
                    "feature": feature.name,
                    "kind": "categorical",
                    "psi": float(stats.psi(expected, counts.counts)),
                    "chi2": chi2,
                    "chi2_pvalue": pvalue,
                    "unseen_rate": counts.unseen / counts.total,
                    "nan_rate": counts.missing / counts.total,
                    "reference_nan_rate": feature.nan_rate,
                }
            )
    return out


def evidence(
    st: TargetState,
    evaluator: Evaluator,
    *,
    baseline: TargetState | None = None,
    reference: Reference | None = None,
    redact: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The report's evidence for one candidate (see :mod:`shadowproxy.report`)."""
    metrics = evaluator.metrics(st, baseline)
    drift = input_drift(st, reference)
    psis = [d["psi"] for d in drift if not math.isnan(d["psi"])]
    if psis:
        metrics["input_psi_max"] = _metric(max(psis))
    plots: dict[str, Any] = {
        "score_hist": {
            "edges": plot_edges(st.production_hist.layout.edges),
            "production": st.production_hist.counts.tolist(),
            "candidate": st.candidate_hist.counts.tolist(),
        },
        "abs_diff_hist": {
            "edges": plot_edges(st.abs_hist.layout.edges),
            "counts": st.abs_hist.counts.tolist(),
        },
        "input_psi": {d["feature"]: d["psi"] for d in drift if not math.isnan(d["psi"])},
        "resources": {
            "production": _resource_bars(st, "production"),
            "candidate": _resource_bars(st, "candidate"),
        },
    }
    if st.candidate_latency.count and st.production_latency.count:
        q = np.array(LATENCY_QUANTILES)
        plots["latency_quantiles"] = {
            "q": list(LATENCY_QUANTILES),
            "production_ms": np.asarray(st.production_latency.quantile(q)).tolist(),
            "candidate_ms": np.asarray(st.candidate_latency.quantile(q)).tolist(),
        }
    return {
        "name": st.name,
        "version": st.version,
        "samples": st.compared,
        # Every request mirrored to it, by outcome: "dropped" ones (shed by the proxy: its
        # budget, breaker or a starved worker) are left out of the rates.
        "outcomes": {"requests": st.requests, **st.candidate_outcomes},
        "metrics": metrics,
        "plots": plots,
        "input_drift": drift,
        "flip_matrix": _flip_matrix(st),
        "slices": _slices(st, reference),
        "examples": [
            {
                "request_id": e.request_id,
                "abs_diff": e.abs_diff,
                "production": redact_body(e.production.encode(), redact)[0].decode(
                    "utf-8", "replace"
                ),
                "candidate": redact_body(e.candidate.encode(), redact)[0].decode(
                    "utf-8", "replace"
                ),
            }
            for e in st.examples
        ],
    }


def plot_edges(edges: tuple[float, ...]) -> list[float]:
    """Finite edges for all ``len(edges) + 1`` bins, the open outer ones closed for a plot.

    The lower outer bin starts at 0 for non-negative layouts (scores, differences), else one
    bin width below; the upper one ends one bin width above the last edge.
    """
    width_low = edges[1] - edges[0] if len(edges) > 1 else 1.0
    width_high = edges[-1] - edges[-2] if len(edges) > 1 else 1.0
    low = 0.0 if edges[0] > 0 else edges[0] - width_low
    return [low, *edges, edges[-1] + width_high]


def _resource_bars(st: TargetState, side: str) -> dict[str, float | None]:
    def mean(moments: Any) -> float | None:
        return float(moments.mean) if moments.count else None

    return {
        "cpu_ms_per_request": mean(getattr(st, f"{side}_cpu_ms")),
        "rss_mb": mean(getattr(st, f"{side}_rss_mb")),
        "threads": mean(getattr(st, f"{side}_threads")),
        "child_processes": mean(getattr(st, f"{side}_children")),
    }


def _flip_matrix(st: TargetState) -> dict[str, Any]:
    """Production label × candidate label counts; ``too_many_pairs`` (and no matrix) when
    more distinct pairs were seen than the state keeps (``target.MAX_FLIP_PAIRS``)."""
    if OTHER in st.flips:
        return {"labels": [], "counts": [], "too_many_pairs": True}
    labels = sorted({part for key in st.flips for part in key.split("\x1f")})
    index = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for key, n in st.flips.items():
        p, c = key.split("\x1f")
        counts[index[p]][index[c]] += n
    return {"labels": labels, "counts": counts, "too_many_pairs": False}


def _slices(st: TargetState, reference: Reference | None) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    for key, (rows, flips) in st.slice_rows.items():
        if rows < SLICE_MIN_ROWS:
            continue
        feature, _, index = key.partition("|")
        cells.append(
            {
                "feature": feature,
                "bin": _bin_label(st, feature, int(index)),
                "samples": rows,
                "flip_rate": flips / rows,
            }
        )
    cells.sort(key=lambda c: (-float(c["flip_rate"]), str(c["feature"]), str(c["bin"])))
    return cells[:TOP_SLICES]


def _bin_label(st: TargetState, feature: str, index: int) -> str:
    layout = st.feature_layouts.get(feature)
    if layout is None:
        return str(index)
    edges = layout.edges
    low = "-inf" if index == 0 else f"{edges[index - 1]:g}"
    high = "+inf" if index >= len(edges) else f"{edges[index]:g}"
    return f"[{low}, {high})"
