"""The comparator state as Prometheus families: export, sum over replicas, rebuild, evaluate.

Replicas are real comparators fed pair records; the scrape is the real ``/metrics`` text of
a registry, parsed back with prometheus-client's parser. What Prometheus adds, summing each
family over the replicas at one instant, is done here by :func:`prometheus_sum`; the real
server is exercised in ``tests/scaleout``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats as sps

from shadowproxy.compare import latency, stats
from shadowproxy.compare.binned import (
    BIN_BOUNDS,
    EXACT,
    NEEDS_SNAPSHOTS,
    NORMAL_INTERVAL,
    BinnedEvaluator,
    binned_ks_bounds,
    binned_wasserstein_bounds,
    normal_mean_interval,
)
from shadowproxy.compare.comparator import Comparator, merge_snapshots
from shadowproxy.compare.decide import report_for
from shadowproxy.compare.exported import (
    BY_SAMPLE_NAME,
    LAYOUT,
    Family,
    Sample,
    export_fingerprint,
    rebuild,
)
from shadowproxy.compare.reference import build_reference
from shadowproxy.compare.sketch import QuantileSketch
from shadowproxy.compare.target import SCORE_LAYOUT, TargetState
from shadowproxy.config import config_from_dict
from shadowproxy.config.gates import GATE_METRICS
from shadowproxy.config.model import Config, Gate
from shadowproxy.errors import StateError
from shadowproxy.observability.comparator_state import ComparatorStateCollector
from shadowproxy.pairing.record import Cost, Exchange, PairRecord
from shadowproxy.report.gates import evaluate_gates

NUMERIC = ("f0", "f1", "f2")
FEATURES = (*NUMERIC, "segment")
SEGMENTS = ("a", "b", "c")
EXPORTED = (
    "requests", "compared", "rows", "label_rows", "agree", "flips", "feedback_rows",
    "production_correct", "candidate_correct", "candidate_outcomes", "production_outcomes",
    "production_hist", "candidate_hist", "abs_hist", "inputs", "categorical", "category_layouts",
)  # fmt: skip
MOMENTS = (
    "diff", "abs_diff", "production_cpu_ms", "candidate_cpu_ms", "production_rss_mb",
    "candidate_rss_mb", "production_threads", "candidate_threads", "production_children",
    "candidate_children",
)  # fmt: skip


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    rng = np.random.default_rng(5)
    lines = [",".join(FEATURES)]
    for row, segment in zip(rng.normal(size=(500, 3)), rng.choice(SEGMENTS, 500), strict=True):
        lines.append(",".join([*(f"{v:.4f}" for v in row), segment]))
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    build_reference(tmp_path / "train.csv", FEATURES, bins=5).save(tmp_path / "reference.json")
    return config_from_dict(
        {
            "production": {"name": "prod", "version": "1", "url": "http://127.0.0.1:9"},
            "candidates": [{"name": "cand", "version": "2", "url": "http://127.0.0.1:10"}],
            "baseline": {"url": "http://127.0.0.1:11"},
            "compare": {
                "outputs": {"score": "probabilities", "label": "label"},
                "features": list(FEATURES),
                "reference": str(tmp_path / "reference.json"),
                "seed": 11,
            },
            "promotion": {"min_samples": 50, "gates": [
                {"metric": "label_agreement", "min": 0.5},
                {"metric": "score_p99_abs_diff", "max": 1.0},
                {"metric": "score_wasserstein", "max": 0.5},
            ]},
        }
    )  # fmt: skip


def answer(scores: np.ndarray, labels: list[str]) -> bytes:
    rows = len(scores)
    return orjson.dumps(
        {"outputs": [
            {"name": "label", "shape": [rows], "datatype": "BYTES", "data": labels},
            {"name": "probabilities", "shape": [rows, 2], "datatype": "FP64",
             "data": [v for p in scores.tolist() for v in (1 - p, p)]},
        ]}
    )  # fmt: skip


def records(n: int, seed: int = 0) -> list[PairRecord]:
    """Requests of one or two rows, three label classes, costs, failures and a baseline."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rows = int(rng.integers(1, 3))
        x = rng.normal(size=(rows, len(NUMERIC)))
        # Reference categories, one it never saw, and missing values.
        segments = rng.choice(
            ["a", "b", "c", "unheard-of", None], rows, p=[0.4, 0.3, 0.1, 0.1, 0.1]
        )
        data = [v for r, seg in zip(x.tolist(), segments, strict=True) for v in (*r, seg)]
        p = rng.uniform(0, 1, rows)
        c = np.clip(p + rng.normal(0.05, 0.1, rows), 0, 1)
        c[rng.random(rows) < 0.05] = 1.0  # exactly 1 lands in the upper open bin
        classes = ["low", "mid", "high"]
        body = orjson.dumps(
            {"inputs": [{"name": "x", "shape": [rows, len(FEATURES)], "datatype": "BYTES",
                         "data": data}]}
        )  # fmt: skip
        prod = Exchange(
            "production", "prod", "1", "ok", 200, float(rng.uniform(0.002, 0.02)),
            answer(p, [classes[int(v * 2.99)] for v in p]),
            cost=Cost(cpu_s=float(rng.uniform(0.001, 0.002)), rss_bytes=100e6, threads=4),
        )  # fmt: skip
        outcome = "ok" if rng.random() > 0.1 else str(rng.choice(["error", "timeout"]))
        cand = Exchange(
            "candidate", "cand", "2", outcome, 200, float(rng.uniform(0.002, 0.05)),
            answer(c, [classes[int(v * 2.99)] for v in c]) if outcome == "ok" else b"",
            cost=Cost(cpu_s=float(rng.uniform(0.001, 0.004)), rss_bytes=150e6, threads=2,
                      child_processes=int(rng.integers(0, 2))),
        )  # fmt: skip
        base = Exchange("baseline", "baseline", "1", "ok", 200, 0.01, answer(p, ["low"] * rows))
        out.append(
            PairRecord(
                f"r{seed}-{i}",
                0.0,
                "POST",
                "/v2/models/m/infer",
                body,
                "",
                prod,
                {"cand": cand, "baseline": base},
            )  # fmt: skip
        )
    return out


def replica(cfg: Config, recs: list[PairRecord], feedback: int = 0) -> Comparator:
    comparator = Comparator(cfg, _reference(cfg))
    for r in recs:
        comparator.update(r)
    comparator.flush()
    for r in recs[:feedback]:
        comparator.feedback(r.request_id, "mid")
    return comparator


def _reference(cfg: Config) -> Any:
    from shadowproxy.compare.reference import Reference

    assert cfg.compare.reference is not None
    return Reference.load(cfg.compare.reference)


def scrape(comparator: Comparator) -> list[Sample]:
    """The families a replica's /metrics serves, parsed from the exposition text."""
    registry = CollectorRegistry()
    registry.register(ComparatorStateCollector(comparator))
    text = generate_latest(registry).decode()
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in BY_SAMPLE_NAME:
                out.append(Sample(BY_SAMPLE_NAME[s.name], dict(s.labels), s.value))
    return out


def prometheus_sum(replicas: list[list[Sample]]) -> list[Sample]:
    """Each family aggregated over the replicas by its merge rule, as the PromQL does."""
    groups: dict[tuple[Family, tuple[tuple[str, str], ...]], list[float]] = defaultdict(list)
    for samples in replicas:
        for s in samples:
            groups[(s.family, tuple(sorted(s.labels.items())))].append(s.value)
    combine = {"sum": sum, "min": min, "max": max, "count": len}
    return [
        Sample(family, dict(labels), float(combine[family.merge](values)))  # type: ignore[operator]
        for (family, labels), values in groups.items()
    ]


def rebuilt(cfg: Config, *replicas: Comparator) -> dict[str, TargetState]:
    comparator = replicas[0]
    summed = prometheus_sum([scrape(r) for r in replicas])
    return rebuild(summed, comparator.seed, comparator.layouts, comparator.category_layouts)


def test_summed_families_rebuild_the_merged_state_exactly(cfg: Config) -> None:
    recs = records(300)
    left, right = replica(cfg, recs[::2], feedback=40), replica(cfg, recs[1::2], feedback=40)
    merged = merge_snapshots([("l", left.snapshot()), ("r", right.snapshot())])
    from_prometheus = rebuilt(cfg, left, right)
    assert set(from_prometheus) == {"cand", "baseline"}
    for name, expected in merged.items():
        got, want = from_prometheus[name].to_json(), expected.to_json()
        for key in ("role", "name", "version", "seed", "feature_layouts", *EXPORTED):
            assert got[key] == want[key], (name, key)
        for key in MOMENTS:
            a, b = getattr(from_prometheus[name], key), getattr(expected, key)
            assert (a.count, a.nonfinite, a.min, a.max) == (b.count, b.nonfinite, b.min, b.max)
            assert a.mean == pytest.approx(b.mean, rel=1e-12, nan_ok=True), key
            assert a.m2 == pytest.approx(b.m2, rel=1e-6, abs=1e-9), key
        for side in ("production", "candidate"):
            a, b = (
                getattr(from_prometheus[name], f"{side}_latency"),
                getattr(expected, f"{side}_latency"),
            )
            assert a.count == b.count and a.nonfinite == b.nonfinite
            assert (a.min, a.max) == pytest.approx((b.min, b.max), rel=1e-15)
            assert latency.cumulative_buckets(b)[-1][1] == a.count
        # What Prometheus does not hold stays empty instead of being made up.
        assert got["reservoir"]["ids"] == [] and got["examples"] == []
        assert got["slice_rows"] == {} and got["abs_sketch"]["positive"] == {}
    assert from_prometheus["cand"].feedback_rows > 0
    segment = from_prometheus["cand"].categorical["segment"]
    assert segment.unseen > 0 and segment.missing > 0 and segment.counts[:-1].sum() > 0
    assert len(from_prometheus["cand"].flips) > 3  # three classes: flips off the diagonal


def test_the_scrape_names_its_layout_and_rebuild_refuses_what_does_not_fit(cfg: Config) -> None:
    comparator = replica(cfg, records(20))
    samples = scrape(comparator)
    layouts = [s for s in samples if s.family is LAYOUT]
    assert [s.labels["fingerprint"] for s in layouts] == [
        export_fingerprint(comparator.fingerprint())
    ]
    other = Comparator(config_from_dict({**_raw(cfg), "compare": {"seed": 12}}))
    assert export_fingerprint(other.fingerprint()) != layouts[0].labels["fingerprint"]

    def refused(change: dict[str, str], value: float | None = None) -> str:
        bad = list(samples)
        i = next(k for k, s in enumerate(bad) if s.family.name.endswith("_bin"))
        s = bad[i]
        bad[i] = Sample(s.family, {**s.labels, **change}, s.value if value is None else value)
        with pytest.raises(StateError) as info:
            rebuild(bad, comparator.seed, comparator.layouts, comparator.category_layouts)
        return str(info.value)

    assert "outside the 22 bins" in refused({"bin": "22"})
    assert "not one of" in refused({"histogram": "latency"})
    assert "non-negative integer" in refused({}, 2.5)
    assert "different configs" in refused({"version": "3"})
    assert "not a shadow target" in refused({"role": "production", "model": "prod"})


def _raw(cfg: Config) -> dict[str, Any]:
    return {
        "production": {"name": "prod", "version": "1", "url": "http://127.0.0.1:9"},
        "candidates": [{"name": "cand", "version": "2", "url": "http://127.0.0.1:10"}],
        "compare": {"seed": cfg.compare.seed},
    }


def test_a_prometheus_report_agrees_where_it_can_and_says_where_it_cannot(cfg: Config) -> None:
    recs = records(400, seed=3)
    left, right = replica(cfg, recs[:150], 30), replica(cfg, recs[150:], 30)
    reference = _reference(cfg)
    full = report_for(cfg, merge_snapshots([("l", left.snapshot()), ("r", right.snapshot())]),
                      reference)  # fmt: skip
    binned = report_for(cfg, rebuilt(cfg, left, right), reference,
                        evaluator=BinnedEvaluator(cfg.promotion, cfg.compare.seed))  # fmt: skip
    (a,), (b,) = full["candidates"], binned["candidates"]
    for name in EXACT:
        if name in a["evidence"]["metrics"]:
            assert b["evidence"]["metrics"][name] == a["evidence"]["metrics"][name], name
    for key in ("flip_matrix", "input_drift"):
        assert b["evidence"][key] == a["evidence"][key]
    plots = [k for k in a["evidence"]["plots"] if k != "latency_quantiles"]  # coarser buckets
    assert {k: b["evidence"]["plots"][k] for k in plots} == {
        k: a["evidence"]["plots"][k] for k in plots
    }
    for name in NORMAL_INTERVAL:
        got, want = b["evidence"]["metrics"][name], a["evidence"]["metrics"][name]
        assert got["value"] == pytest.approx(want["value"], rel=1e-9)
        assert got["ci_low"] < got["value"] < got["ci_high"]
    # The sample holds every row here, so its figures are the raw data's: the bin bounds
    # must contain them.
    for name in BIN_BOUNDS:
        got, raw = b["evidence"]["metrics"][name], a["metrics"][name]
        high = np.inf if got["ci_high"] is None else got["ci_high"]  # None: open above
        assert got["ci_low"] * (1 - 1e-12) <= raw <= high * (1 + 1e-12), (name, got)
        assert "from the" in got["method"] and got["ci_low"] < high
    for name in NEEDS_SNAPSHOTS:
        assert b["metrics"][name] is None
        assert "needs snapshot or admin sources" in b["unavailable"][name]
    gates = {g["metric"]: g for g in b["gates"]}
    assert gates["score_p99_abs_diff"]["passed"] is None
    assert "needs snapshot or admin sources" in gates["score_p99_abs_diff"]["reason"]
    assert a["gates"][1]["passed"] is True  # decided from snapshots
    assert gates["label_agreement"] == a["gates"][0]
    assert "(bounds " in gates["score_wasserstein"]["reason"]
    assert (
        a["gates"][2]["metric"] == "score_wasserstein" and "bounds" not in a["gates"][2]["reason"]
    )
    assert b["decision"] == "insufficient_data" and a["decision"] == "promote"
    assert b["evidence"].get("examples", []) == [] and a["evidence"]["examples"]


def test_every_gate_metric_is_classified_for_prometheus_once() -> None:
    classes = [set(EXACT), set(NORMAL_INTERVAL), set(BIN_BOUNDS), set(NEEDS_SNAPSHOTS)]
    for gate in GATE_METRICS:
        assert sum(gate in c for c in classes) == 1, gate


def test_normal_interval_matches_the_textbook_formula() -> None:
    x = np.random.default_rng(1).normal(0.3, 0.2, size=500)
    m2 = float(np.sum((x - x.mean()) ** 2))
    low, high = normal_mean_interval(float(x.mean()), m2, x.size, 0.9)
    expected = sps.norm.interval(0.9, loc=x.mean(), scale=x.std(ddof=1) / np.sqrt(x.size))
    assert (low, high) == pytest.approx(expected, rel=1e-12)
    assert all(np.isnan(normal_mean_interval(1.0, 0.0, 1, 0.9)))
    with pytest.raises(ValueError, match="confidence"):
        normal_mean_interval(1.0, 0.0, 5, 1.0)


scores = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(scores, scores)
def test_bin_bounds_contain_the_raw_distance_and_statistic(u: list[float], v: list[float]) -> None:
    hu, hv = (np.bincount(SCORE_LAYOUT.index(np.asarray(x)), minlength=22) for x in (u, v))
    value, low, high = binned_ks_bounds(hu, hv)
    raw, _ = stats.ks_test(u, v)
    assert low <= raw + 1e-12 and raw <= high + 1e-12 and value == low
    bounds = binned_wasserstein_bounds(SCORE_LAYOUT.edges, hu, hv)
    assert bounds is not None
    w_value, w_low, w_high = bounds
    raw_w = sps.wasserstein_distance(u, v)
    assert w_low - 1e-12 <= raw_w <= w_high + 1e-12
    assert w_low - 1e-12 <= w_value <= w_high + 1e-12
    if hu[-1] or hv[-1]:  # a score of 1 sits in the upper outer bin: no upper bound
        assert w_high == np.inf
    else:
        assert w_high - w_low <= 2 * 0.05 + 1e-12  # never wider than two bins


def test_scores_beyond_the_last_edge_leave_the_distance_unbounded_above() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 1000)
    c = p + 3.0  # all in the upper outer bin: 3.0 apart, though the bins cannot tell
    hp, hc = (np.bincount(SCORE_LAYOUT.index(x), minlength=22) for x in (p, c))
    value, low, high = binned_wasserstein_bounds(SCORE_LAYOUT.edges, hp, hc)
    assert low <= sps.wasserstein_distance(p, c) and high == np.inf
    # A gate's maximum cannot pass on an open bound, whatever the midpoint value says.
    results = evaluate_gates(
        [Gate(metric="score_wasserstein", max=1.0)],
        {
            "score_wasserstein": {
                "value": value,
                "ci_low": low,
                "ci_high": None,
                "interval": "bounds",
            }
        },  # fmt: skip
        samples=1000,
        min_samples=10,
    )
    assert value < 1.0 and results[0].passed is None
    assert "bounds" in results[0].reason and "∞" in results[0].reason


def test_wasserstein_is_unbounded_below_the_first_edge() -> None:
    counts = np.zeros(SCORE_LAYOUT.bins)
    counts[5] = 3
    below = counts.copy()
    below[0] = 1
    assert binned_wasserstein_bounds(SCORE_LAYOUT.edges, below, counts) is None
    # Equal histograms: the raw data may still differ anywhere inside the one filled bin.
    assert binned_wasserstein_bounds(SCORE_LAYOUT.edges, counts, counts) == pytest.approx(
        (0.0, 0.0, 0.05)
    )


latencies = st.lists(
    st.floats(1e-4, 1e6, allow_nan=False) | st.sampled_from([0.0, 0.05, 60_000.0]),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(latencies, st.sampled_from([0.01, 0.25, 0.5, 0.9, 0.99]))
def test_latency_buckets_bound_the_quantile_of_the_raw_data_and_of_the_sketch(
    values: list[float], q: float
) -> None:
    fine = QuantileSketch()
    fine.add(np.asarray(values))
    buckets = dict(latency.cumulative_buckets(fine))
    assert list(buckets) == list(latency.LE) and buckets["+Inf"] == len(values)
    coarse = latency.sketch_from_buckets(buckets, fine.min, fine.max, 0)
    value, low, high = latency.quantile_bounds(coarse, q)
    exact = float(np.quantile(values, q, method="lower"))
    assert low <= exact <= high and low <= value <= high
    assert low <= float(fine.quantile(q)) <= high
    assert high <= low * latency.GAMMA * (1 + 1e-12) or low == fine.min or high == fine.max


def test_latency_buckets_that_do_not_fit_are_refused() -> None:
    with pytest.raises(StateError, match="not the exported bounds"):
        latency.sketch_from_buckets({"0.5": 1, "+Inf": 1}, 1.0, 1.0, 0)
    with pytest.raises(StateError, match="not cumulative"):
        latency.sketch_from_buckets({latency.LE[3]: 5, "+Inf": 2}, 1.0, 1.0, 0)
