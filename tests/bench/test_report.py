"""The report's arithmetic on hand-made rounds: isolation, comparator, memory, capacity."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shadowproxy.observability.gc_pauses import GcPauses
from shadowproxy.observability.metrics import GcPauseCollector

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.counting import compare_figures, gc_figures, mirror_figures  # noqa: E402
from bench.faults import FAULTS, FaultTarget, plan  # noqa: E402
from bench.memory import MAX_WRK_RUN_S, run_duration_s  # noqa: E402
from bench.tables_isolation import isolation_table  # noqa: E402
from bench.tables_resources import capacity_markdown  # noqa: E402
from bench.targets import compare_summary, gc_full_collections  # noqa: E402


def _half(i: int, p99: float, **figures: float) -> dict[str, Any]:
    half = {"rate": 1000.0, "errors": 0, "latency_us": {"p99": p99}}
    return {"round": i, "half_load": half, **figures}


def _baseline(i: int, p99: float) -> dict[str, Any]:
    """A regular target's round: closed-loop figures too, as every real round has."""
    return _half(i, p99, rps=1000.0, cpu_us_per_req=10.0)


def test_isolation_ratios_pair_each_faulty_target_with_its_baseline_per_round() -> None:
    targets = {
        "shadowproxy_off": {"rounds": [_baseline(0, 100), _baseline(1, 200)]},
        "nginx": {"rounds": [_baseline(0, 50), _baseline(1, 50)]},
    }
    isolation = {
        "targets": {
            "shadowproxy_fault_hang": {"rounds": [_half(0, 105), _half(1, 300)]},
            "nginx_mirror_fault_hang": {"rounds": [_half(0, 5000), _half(1, 10_000)]},
            # Measured in round 1 only: round 0 of the baseline has nothing to pair with.
            "shadowproxy_fault_down": {"rounds": [_half(1, 180)]},
        }
    }
    ratios = report.compute_ratios(targets, isolation=isolation)
    hang = ratios["isolation_p99_inflation_hang"]
    assert hang["per_round"] == pytest.approx([1.05, 1.5])
    assert hang["goal"] == "<= 1.1" and hang["met"] is False  # median 1.275
    assert hang["definition"] == "shadowproxy_fault_hang.half_p99_us / shadowproxy_off.iso_p99_us"
    assert ratios["isolation_p99_inflation_down"]["per_round"] == pytest.approx([0.9])
    assert ratios["isolation_p99_inflation_down"]["met"] is True
    nginx = ratios["nginx_isolation_p99_inflation_hang"]
    assert nginx["per_round"] == [100.0, 200.0] and nginx["goal"] is None and nginx["met"] is None
    assert ratios["isolation_p99_inflation_slow"]["value"] is None  # not measured


def test_a_baseline_run_at_the_isolation_rate_is_what_faulty_targets_are_judged_against() -> None:
    def off(i: int) -> dict[str, Any]:
        # Its half-load run shares the local candidate's rate; its isolation-load run, at
        # the rate of the faulty candidates, is its own.
        iso = {"rate": 3000.0, "errors": 0, "latency_us": {"p99": 400.0}}
        return {**_baseline(i, 100), "isolation_load": iso}

    targets = {
        "shadowproxy_off": {"rounds": [off(0), off(1)]},
        "shadowproxy_onnx": {"rounds": [_baseline(0, 90), _baseline(1, 120)]},
    }
    isolation = {"targets": {"shadowproxy_fault_slow": {"rounds": [_half(0, 420), _half(1, 600)]}}}
    ratios = report.compute_ratios(targets, isolation=isolation)
    assert ratios["isolation_p99_inflation_slow"]["per_round"] == pytest.approx([1.05, 1.5])
    assert ratios["onnx_p99_inflation"]["per_round"] == pytest.approx([0.9, 1.2])
    assert report.METRICS["iso_rate"](off(0)) == 3000.0
    assert report.METRICS["iso_rate"](_baseline(0, 100)) == 1000.0  # else the half-load run


def test_a_healthy_candidate_at_the_isolation_rate_is_the_reference_row_of_the_table() -> None:
    def at_iso(i: int, p99: float, **mirror: Any) -> dict[str, Any]:
        iso = {"rate": 3000.0, "errors": i, "latency_us": {"p99": p99}, "mirror": mirror}
        wrk = {"rps": 9000.0, "latency_us": {"p50": 1.0, "p99": 2.0}, "errors": 0}
        single = {"p50_us": 50.0, "p99_us": 90.0}
        return {"round": i, **wrk, "single": single, "cpu_us_per_req": 30.0,
                "isolation_load": iso}  # fmt: skip

    cand = {"candidates": {"cand": {"outcomes": {"ok": 2900.0, "timeout": 1.0}}}}
    targets = {
        "shadowproxy_off": {"rounds": [at_iso(0, 400), at_iso(1, 500)]},
        "shadowproxy_http": {"rounds": [at_iso(0, 600, **cand), at_iso(1, 1000, **cand)]},
        "nginx": {"rounds": [at_iso(0, 200), at_iso(1, 200)]},
        "nginx_mirror": {
            "rounds": [at_iso(i, 300, candidate_backend_received=3000) for i in (0, 1)]
        },
    }
    isolation = {
        "faults": {"hang": FAULTS["hang"]},
        "targets": {"shadowproxy_fault_hang": {"rounds": [_half(0, 800), _half(1, 900)]}},
    }
    report.summarize(targets)
    report.summarize(isolation["targets"], report.HALF_METRICS)
    ratios = report.compute_ratios(targets, isolation=isolation)
    doc = {"targets": targets, "isolation": isolation, "ratios": ratios}
    healthy = doc["ratios"]["isolation_p99_inflation_healthy"]
    assert healthy["per_round"] == pytest.approx([1.5, 2.0])
    assert healthy["goal"] is None and healthy["met"] is None  # a reference, not a goal
    assert doc["ratios"]["nginx_isolation_p99_inflation_healthy"]["per_round"] == [1.5, 1.5]
    # Its open-loop runs are at the isolation rate only: kept out of the half-load figures.
    assert doc["targets"]["shadowproxy_http"]["summary"]["half_p99_us"] is None
    rows = {line.split(" | ")[0]: line for line in isolation_table(doc) if line.startswith("| `")}
    assert list(rows) == ["| `healthy`", "| `hang`"]
    assert rows["| `healthy`"] == (
        "| `healthy` | 800 (600 … 1,000) | 1.75 (1.50 … 2.00) | ok 5,800, timeout 2 | 1 "
        "| 300 | 1.50 | received 6,000 | 1 |"
    )


def test_single_figures_of_the_comparator_and_memory_sections_are_summarised_per_round() -> None:
    comparator = {
        "rounds": [
            {"round": r, "us_per_pair": v, "handoff_us_per_pair": 0.5, "fold_us_per_pair": v - 0.5}
            for r, v in enumerate([40.0, 44.0, 42.0])
        ]
    }
    memory = {"rounds": [{"round": 0, "rss_growth_mb": 12.5, "tree_rss_growth_mb": 30.0}]}
    ratios = report.compute_ratios({}, comparator=comparator, memory=memory)
    cost = ratios["comparator_us_per_pair"]
    assert cost["per_round"] == [40.0, 44.0, 42.0] and cost["value"] == 42.0
    assert (cost["min"], cost["max"]) == (40.0, 44.0)
    assert cost["met"] is False and cost["definition"] == "comparator.us_per_pair"
    assert ratios["rss_growth_mb"]["value"] == 12.5 and ratios["rss_growth_mb"]["met"] is True
    assert ratios["rss_growth_tree_mb"]["value"] == 30.0
    assert ratios["rss_growth_tree_mb"]["met"] is None  # for information


def test_mirror_figures_count_each_candidate_of_a_target() -> None:
    counts = {
        ("cand", "ok"): 100.0,
        ("onnx", "ok"): 60.0,
        ("onnx", "dropped"): 40.0,
        ("prod", "ok"): 100.0,
    }
    figures = mirror_figures(100, 101, counts, ("cand", "onnx"))
    assert figures["candidates"]["cand"]["mirrored_fraction"] == 1.0
    assert figures["candidates"]["onnx"]["dropped_fraction"] == 0.4
    assert figures["mirrored_fraction"] == 0.6  # the lower of the two
    assert figures["dropped_fraction"] == 0.4
    assert figures["candidate_backend_received"] == 101
    nginx = mirror_figures(200, 150, None, ())
    assert nginx == {"candidate_backend_received": 150, "mirrored_fraction": 0.75}


def test_compare_figures_are_the_comparators_work_between_two_snapshots() -> None:
    def snapshot(processed: int, busy_s: float, compared: dict[str, int]) -> dict[str, Any]:
        targets = {
            name: {"requests": processed, "compared": n, "role": "candidate"}
            for name, n in compared.items()
        }
        return {
            "comparator": {"processed": processed, "dropped": 3, "busy_s": busy_s},
            "targets": targets,
        }

    before = compare_summary(snapshot(10, 1.0, {"cand": 10}))
    after = compare_summary(snapshot(110, 1.005, {"cand": 108, "onnx": 50}))
    figures = compare_figures(before, after, 100.0, ("cand", "onnx", "never_seen"))
    assert figures["processed"] == 100 and figures["dropped"] == 0
    assert figures["thread_us_per_pair"] == pytest.approx(50.0)
    assert figures["candidates"]["cand"] == {"compared": 98, "compared_fraction": 0.98}
    assert figures["candidates"]["onnx"]["compared_fraction"] == 0.5
    assert figures["candidates"]["never_seen"]["compared"] == 0
    assert figures["compared_fraction"] == 0.0


def test_capacity_per_replica_comes_from_the_saturated_runs() -> None:
    def sm(median: float) -> dict[str, float]:
        return {"median": median, "min": median, "max": median}

    targets = {
        "shadowproxy_http": {
            "summary": {
                "rps": sm(15_000),
                "cpu_us_per_req": sm(64.0),
                "rss_mb": sm(80.0),
                "tree_rss_mb": sm(80.0),
            }
        },
        "shadowproxy_off": {"summary": {"rps": sm(30_000), "cpu_us_per_req": sm(30.0)}},
        # At saturation its local candidate is shed: its capacity mirroring every request
        # is the open-loop calibration's, not wrk's.
        "shadowproxy_onnx": {
            "summary": {
                "rps": sm(22_000),
                "cpu_us_per_req": sm(45.0),
                "mirrored_capacity_rps": sm(6_500),
                "mirrored_cpu_us_per_req": sm(150.0),
                "rss_mb": sm(90.0),
                "tree_rss_mb": sm(180.0),
            }
        },
    }
    cap = report.capacity(targets)
    assert set(cap) == {"shadowproxy_http", "shadowproxy_onnx"}
    assert cap["shadowproxy_onnx"]["rps"] == 6_500
    assert cap["shadowproxy_onnx"]["cores_per_1k_rps"] == pytest.approx(0.150)
    round_ = {
        "mirrored_capacity": {
            "rps": 6_500.0,
            "calibration": [{"cpu_us_per_req": 160.0}, {"cpu_us_per_req": 150.0}],
        }
    }
    assert report.METRICS["mirrored_cpu_us_per_req"](round_) == 150.0  # the refined run
    assert cap["shadowproxy_http"]["cores_per_1k_rps"] == pytest.approx(0.064)
    assert cap["shadowproxy_http"]["rps"] == 15_000
    doc = {
        "capacity": cap,
        "settings": {"mode": "quick", "profile": "nginx", "connections": 32},
        "versions": {"shadowproxy": "0.1.0", "git_commit": "abc1234", "git_dirty": True},
        "machine": {"cpu_model": "Test CPU"},
        "started_at": "2026-11-22T12:00:00+00:00",
    }
    md = capacity_markdown(doc)
    assert "| `shadowproxy_http` | 15,000 | 0.064 | 80 / 80 |" in md
    assert "abc1234+dirty" in md and "`shadowproxy_both`" not in md  # only what was measured
    assert not md.startswith("###")  # the scale-out guide has its own heading


def test_capacity_is_written_between_the_markers_only(tmp_path: Path) -> None:
    page = tmp_path / "scale-out.md"
    assert "does not exist" in (report.write_capacity_docs("new\n", page) or "")
    assert not page.exists()

    page.write_text("# Scale-out\n\nHand-written.\n")
    assert "lacks the" in (report.write_capacity_docs("new\n", page) or "")
    assert page.read_text() == "# Scale-out\n\nHand-written.\n"  # left alone

    page.write_text(
        f"# Scale-out\n\nBefore.\n\n{report.CAPACITY_BEGIN}\nold figures\n"
        f"{report.CAPACITY_END}\n\nAfter.\n"
    )
    assert report.write_capacity_docs("| new | figures |\n", page) is None
    assert page.read_text() == (
        f"# Scale-out\n\nBefore.\n\n{report.CAPACITY_BEGIN}\n\n| new | figures |\n\n"
        f"{report.CAPACITY_END}\n\nAfter.\n"
    )


def test_fault_targets_follow_their_baselines_and_nginx_has_no_local_candidate() -> None:
    everything = plan(list(FAULTS), ["shadowproxy_off", "nginx"])
    names = [t.name for t in everything]
    assert "shadowproxy_fault_crash_local" in names
    assert "nginx_mirror_fault_crash_local" not in names
    assert len(names) == len(FAULTS) + len(FAULTS) - 1
    only_shadowproxy = plan(["hang"], ["shadowproxy_off", "nginx_mirror"])
    assert only_shadowproxy == [FaultTarget("shadowproxy", "hang")]
    assert only_shadowproxy[0].baseline == "shadowproxy_off"
    assert plan(list(FAULTS), ["direct"]) == []
    with pytest.raises(ValueError, match="unknown fault"):
        plan(["flaky"], ["shadowproxy_off"])


def test_wrk_runs_of_the_memory_measurement_are_sized_from_the_rate() -> None:
    assert run_duration_s(1_000_000, None) == 1  # first learn the rate
    assert run_duration_s(100_000, 30_000.0) == 4
    assert run_duration_s(10, 30_000.0) == 1
    assert run_duration_s(10_000_000, 1_000.0) == MAX_WRK_RUN_S


def _gc_reading(pauses_s: list[float]) -> dict[str, Any]:
    """What the benchmark reads off a real /metrics page after these full collections."""
    ticks = iter([t for p in pauses_s for t in (0.0, p)])
    pauses = GcPauses(clock=lambda: next(ticks))  # not installed: these pauses only
    for _ in pauses_s:
        pauses._callback("start", {"generation": 2})
        pauses._callback("stop", {"generation": 2})
    ticks = iter([0.0, 0.5])
    pauses._callback("start", {"generation": 0})  # young ones are not counted as full
    pauses._callback("stop", {"generation": 0})
    registry = CollectorRegistry()
    registry.register(GcPauseCollector(pauses))
    return gc_full_collections(generate_latest(registry).decode())


def test_full_collections_are_read_off_the_metrics_and_bracketed() -> None:
    before = _gc_reading([0.0003, 0.002])
    assert before["count"] == 2 and before["sum_s"] == pytest.approx(0.0023)
    after = _gc_reading([0.0003, 0.002, 0.0004, 0.008, 0.0009])
    figures = gc_figures(before, after, duration_s=2.0)
    assert figures["collections"] == 3
    assert figures["per_s"] == 1.5
    assert figures["pause_ms"] == pytest.approx(0.4 + 8 + 0.9)
    assert figures["longest_ms_at_most"] == pytest.approx(10.0)  # 8 ms: the 10 ms bucket
    assert gc_figures(after, after, 2.0) == {
        "collections": 0, "per_s": 0.0, "pause_ms": 0.0, "longest_ms_at_most": 0.0,
    }  # fmt: skip
    beyond = gc_figures(before, _gc_reading([0.0003, 0.002, 0.5]), 1.0)
    assert beyond["longest_ms_at_most"] == float("inf")  # past the last bound (0.1 s)
