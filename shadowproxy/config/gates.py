"""The metric names a ``promotion.gates`` entry may test.

One list, read by the config loader (to reject unknown names with a hint) and by whatever
computes the values, so a gate can never name a metric nobody produces. Deltas and ratios
are candidate minus / over production, measured on the same requests.
"""

from __future__ import annotations

from types import MappingProxyType

GATE_METRIC_DOCS = MappingProxyType(
    {
        "samples": "paired requests observed",
        "label_agreement": "share of pairs whose labels are equal",
        "label_flip_rate": "share of pairs whose labels differ (1 - label_agreement)",
        "noise_adjusted_flip_rate": "flip rate minus the baseline's flip rate (the noise floor)",
        "score_mae": "mean absolute difference of scores",
        "score_p99_abs_diff": "99th percentile of the absolute score difference",
        "score_bias": "mean signed score difference (candidate minus production)",
        "score_psi": "population stability index between the two score distributions",
        "score_js": "Jensen-Shannon divergence between the two score distributions",
        "score_wasserstein": "earth mover's distance between the two score distributions",
        "score_ks": "Kolmogorov-Smirnov statistic between the two score distributions",
        "score_ks_pvalue": "p-value of the Kolmogorov-Smirnov test",
        "score_nonfinite_rate": "share of compared rows with a NaN or infinite score on a side",
        "input_psi_max": "largest per-feature PSI of live inputs against the reference",
        "latency_p50_ms": "median candidate latency",
        "latency_p99_ms": "99th percentile candidate latency",
        "latency_p99_ratio": "candidate p99 latency over production p99 latency",
        "cpu_ms_per_request": "candidate CPU time per request",
        "cpu_ratio": "candidate CPU per request over production CPU per request",
        "rss_mb": "candidate resident memory",
        "rss_delta_mb": "candidate resident memory minus production's",
        "threads": "threads of the candidate's executor",
        "child_processes": "child processes the candidate started",
        "error_rate": "share of candidate requests that failed",
        "timeout_rate": "share of candidate requests that timed out",
        "error_rate_delta": "candidate error rate minus production error rate",
        "accuracy_delta": "candidate accuracy minus production accuracy (needs feedback)",
    }
)
"""Every gate metric name with a one-line meaning, in the contract's order."""

GATE_METRICS: tuple[str, ...] = tuple(GATE_METRIC_DOCS)
"""The names usable as ``promotion.gates[i].metric``."""
