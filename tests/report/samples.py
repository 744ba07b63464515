"""Synthetic comparator evidence for the report tests."""

from __future__ import annotations

from typing import Any

from shadowproxy.config.model import Gate, Promotion

PRODUCTION = {"name": "churn", "version": "1.4.0"}

PROMOTION = Promotion(
    min_samples=1000,
    confidence=0.95,
    gates=(
        Gate(metric="label_agreement", min=0.98),
        Gate(metric="score_psi", max=0.1),
        Gate(metric="latency_p99_ratio", max=1.2),
        Gate(metric="threads", max=8),
    ),
)


def metric(value: float | None, lo: float | None = None, hi: float | None = None) -> dict:
    return {"value": value, "ci_low": lo, "ci_high": hi}


def evidence(name: str, *, good: bool, samples: int = 12000) -> dict[str, Any]:
    """A full evidence dict: ``good`` passes every gate of PROMOTION, else fails two."""
    if good:
        metrics = {
            "label_agreement": metric(0.993, 0.991, 0.995),
            "score_psi": metric(0.01, 0.005, 0.02),
            "latency_p99_ratio": metric(1.05, 1.0, 1.1),
            "threads": metric(2),
        }
    else:
        metrics = {
            "label_agreement": metric(0.95, 0.94, 0.96),
            "score_psi": metric(0.3, 0.25, 0.35),
            "latency_p99_ratio": metric(1.1, 1.0, 1.3),
            "threads": metric(4),
        }
    metrics["score_mae"] = metric(0.02, 0.018, 0.022)
    shift = 0 if good else 3
    return {
        "name": name,
        "version": "2.0.0" if good else "2.1.0",
        "samples": samples,
        "metrics": metrics,
        "plots": {
            "score_hist": {
                "edges": [i / 10 for i in range(11)],
                "production": [5, 9, 14, 20, 25, 20, 14, 9, 5, 2],
                "candidate": [5 + shift, 10, 13, 21, 24, 19, 15, 8, 6, 2 + shift],
            },
            "abs_diff_hist": {"edges": [0, 0.01, 0.05, 0.1, 0.5, 1], "counts": [900, 80, 15, 4, 1]},
            "latency_quantiles": {
                "q": [0.1, 0.5, 0.9, 0.99, 0.999],
                "production_ms": [1.0, 2.0, 4.0, 9.0, 20.0],
                "candidate_ms": [1.2, 2.5, 5.0, 10.0, 25.0],
            },
            "input_psi": {"age": 0.02, "balance": 0.15, "tenure": 0.4},
            "resources": {
                "production": {
                    "cpu_ms_per_request": 1.5,
                    "rss_mb": 300,
                    "threads": 4,
                    "child_processes": 0,
                },
                "candidate": {
                    "cpu_ms_per_request": 2.0,
                    "rss_mb": 420,
                    "threads": 2,
                    "child_processes": 1,
                },
            },
        },
        "flip_matrix": {"labels": ["stay", "churn"], "counts": [[9000, 40], [30, 2930]]},
        "slices": [
            {"feature": "age", "bin": "[60, 70)", "samples": 800, "flip_rate": 0.03},
            {"feature": "balance", "bin": "[0, 100)", "samples": 1500, "flip_rate": 0.01},
        ],
        "examples": [
            {
                "request_id": "req-1",
                "abs_diff": 0.4,
                "production": '{"label": "stay"}',
                "candidate": '{"label": "churn"}',
            },
        ],
    }
