"""The benchmark harness must keep working: run ``python -m bench run --smoke`` end to end."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.faults import FAMILY_FAULTS, FAULTS, SLOW_FACTOR, target_name  # noqa: E402
from bench.load import BODY, parse_wrk, percentile, wrk_script  # noqa: E402
from bench.runner import MODES  # noqa: E402
from bench.targets import CANDIDATE_TIMEOUT_MS, TARGETS, requests_by_outcome  # noqa: E402

HEADLINE_RATIOS = (
    "cpu_per_req_ratio_vs_nginx",
    "added_p50_ratio_vs_nginx",
    "mirror_throughput_ratio",
    "onnx_proxy_cpu_added_us",
    "onnx_p99_inflation",
    "batching_speedup",
    *(f"isolation_p99_inflation_{fault}" for fault in ("healthy", *FAULTS)),
    *(
        f"nginx_isolation_p99_inflation_{fault}"
        for fault in ("healthy", *FAMILY_FAULTS["nginx_mirror"])
    ),
    "comparator_us_per_pair",
    "rss_growth_mb",
    "both_throughput_ratio_vs_http",
)
# What each faulty candidate must have done to shadowproxy's candidate counters: proof that
# the fault was really exercised.
FAULT_EVIDENCE = {
    "slow": ("ok",),
    "hang": ("timeout",),
    "down": ("error",),
    "crash_http": ("error",),
    "crash_local": ("error", "timeout"),
}

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:40000/v2/models/m/infer
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   310.12us  120.00us   4.78ms   90.00%
    Req/Sec    80.62k     2.11k   82.00k    80.00%
  Latency Distribution
     50%  293.00us
     75%  330.00us
     90%  401.00us
     99%    1.43ms
  80217 requests in 1.00s, 19.28MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  80217.33
Transfer/sec:     19.28MB
"""


def test_parse_wrk() -> None:
    r = parse_wrk(WRK_OUTPUT)
    assert r.requests == 80217
    assert r.rps == pytest.approx(80217.33)
    assert r.latency_us == {"p50": 293.0, "p75": 330.0, "p90": 401.0, "p99": 1430.0}
    assert r.non_2xx == 5
    assert r.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert r.errors == 8


def test_wrk_script_sends_the_body() -> None:
    assert 'wrk.method = "POST"' in wrk_script()
    assert BODY.decode().replace('"', '\\"') in wrk_script()


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0


def test_requests_by_outcome_sums_versions() -> None:
    def line(role: str, model: str, version: str, outcome: str, value: str) -> str:
        labels = f'role="{role}",model="{model}",version="{version}",outcome="{outcome}"'
        return f"shadowproxy_requests_total{{{labels}}} {value}\n"

    text = (
        "# TYPE shadowproxy_requests_total counter\n"
        + line("candidate", "cand", "2", "ok", "7.0")
        + line("candidate", "cand", "3", "ok", "3.0")
        + line("candidate", "cand", "2", "dropped", "1")
        + line("production", "prod", "1", "ok", "11")
    )
    assert requests_by_outcome(text) == {
        ("cand", "ok"): 10.0,
        ("cand", "dropped"): 1.0,
        ("prod", "ok"): 11.0,
    }


def test_ratios_are_paired_per_round() -> None:
    def rnd(i: int, rps: float, cpu: float | None, p50: float) -> dict[str, object]:
        return {
            "round": i,
            "rps": rps,
            "cpu_us_per_req": cpu,
            "errors": 0,
            "latency_us": {"p50": 1.0, "p99": 2.0},
            "single": {"p50_us": p50, "p99_us": 2 * p50},
        }

    targets = {
        "direct": {"rounds": [rnd(0, 100, None, 10), rnd(1, 100, None, 20)]},
        "nginx": {"rounds": [rnd(0, 50, 10, 30), rnd(1, 50, 10, 40)]},
        "shadowproxy_off": {"rounds": [rnd(0, 25, 20, 50), rnd(1, 25, 40, 80)]},
    }
    report.add_latency_deltas(targets)
    ratios = report.compute_ratios(targets)
    assert ratios["cpu_per_req_ratio_vs_nginx"]["per_round"] == [2.0, 4.0]
    assert ratios["cpu_per_req_ratio_vs_nginx"]["value"] == 3.0
    assert ratios["added_p50_ratio_vs_nginx"]["per_round"] == [2.0, 3.0]
    assert ratios["mirror_throughput_ratio"]["value"] is None
    assert ratios["batching_speedup"]["value"] is None  # no executor section


def test_differences_and_executor_ratios_are_paired_per_round() -> None:
    def rnd(i: int, proxy_cpu: float, p99: float) -> dict[str, object]:
        return {
            "round": i,
            # At saturation (wrk): not what the local candidate's CPU figures are taken from.
            "cpu_us_per_req": 1000.0,
            "proxy_cpu_us_per_req": 1000.0,
            "half_load": {
                "rate": 100.0,
                "latency_us": {"p50": 1.0, "p99": p99, "max": p99},
                "cpu_us_per_req": proxy_cpu + 5 + i,
                "proxy_cpu_us_per_req": proxy_cpu,
            },
        }

    targets = {
        "shadowproxy_off": {"rounds": [rnd(0, 30, 100), rnd(1, 40, 200)]},
        "shadowproxy_onnx": {"rounds": [rnd(0, 45, 110), rnd(1, 60, 260)]},
    }

    def executor_round(i: int, one: float, many: float) -> dict[str, object]:
        return {
            "round": i,
            "throughput": {"1": {"rows_per_s": one}, "32": {"rows_per_s": many}},
        }

    executor = {"rounds": [executor_round(0, 100, 700), executor_round(1, 200, 800)]}
    ratios = report.compute_ratios(targets, executor)
    added = ratios["onnx_proxy_cpu_added_us"]
    assert added["per_round"] == [15.0, 20.0] and added["met"] is True
    assert added["definition"] == (
        "shadowproxy_onnx.half_proxy_cpu_us_per_req - shadowproxy_off.half_proxy_cpu_us_per_req"
    )
    assert ratios["onnx_tree_cpu_added_us"]["per_round"] == [15.0, 20.0]
    inflation = ratios["onnx_p99_inflation"]
    assert inflation["per_round"] == pytest.approx([1.1, 1.3])
    assert inflation["met"] is False  # median 1.2 > 1.1
    speedup = ratios["batching_speedup"]
    assert speedup["per_round"] == [7.0, 4.0] and speedup["value"] == 5.5
    assert speedup["met"] is True


def test_tables_of_an_earlier_run_leave_out_the_new_sections() -> None:
    old = json.loads((REPO / "bench" / "results" / "full-20261122-135335.json").read_text())
    md = report.markdown(old)
    assert "| `cpu_per_req_ratio_vs_nginx` |" in md
    assert "candidate outcomes: ok 403,521" in md  # one candidate, in the schema of the time
    for section in ("Open loop", "Executor", "Isolation", "Memory", "Comparator", "Capacity"):
        assert section not in md


def _run_smoke(tmp_path: Path, *options: str) -> tuple[dict, subprocess.CompletedProcess[str], str]:
    missing = [b for b in ("nginx", "wrk", "taskset") if shutil.which(b) is None]
    if missing:
        pytest.fail(
            f"benchmark binaries missing: {', '.join(missing)} "
            "(install with: apt-get install -y nginx wrk util-linux)"
        )
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--smoke", "--out", str(out), *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    log = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert out.exists(), f"no JSON written (exit {proc.returncode})\n{log}"
    return json.loads(out.read_text()), proc, log


def _outcomes(summary_totals: dict, candidate: str) -> dict[str, float]:
    return summary_totals["by_candidate"][candidate]


@pytest.mark.timeout(240)
def test_smoke_run_end_to_end(tmp_path: Path) -> None:
    doc, proc, log = _run_smoke(tmp_path)
    assert doc["settings"]["profile"] == "nginx"

    assert set(doc["targets"]) == set(TARGETS), log
    for name, t in doc["targets"].items():
        assert t["error"] is None, f"{name}: {t['error']}\n{log}"
        assert t["rounds"], f"{name} has no rounds\n{log}"
        for r in t["rounds"]:
            assert r["rps"] > 0, f"{name}: no throughput\n{log}"
            assert r["errors"] == 0, f"{name}: {r['errors']} failed requests\n{log}"
            assert r["single"]["n"] > 0
            if name.startswith("shadowproxy"):  # read off its /metrics around the wrk run
                gc_full = r["gc_full"]
                assert gc_full["collections"] >= 0 and gc_full["pause_ms"] >= 0, gc_full
                assert (gc_full["longest_ms_at_most"] > 0) == (gc_full["collections"] > 0)
            if name != "direct":
                assert r["cpu_us_per_req"] > 0, f"{name}: no CPU time measured"
                assert r["memory"]["rss_mb"] > 0 and r["memory"]["tree_rss_mb"] > 0
        # shadowproxy_both's figure is the lower of its two candidates, and at saturation
        # its local one may answer nothing at all: its HTTP candidate is checked below.
        if name in ("nginx_mirror", "shadowproxy_http"):
            fraction = t["summary"]["mirrored_fraction"]["median"]
            assert fraction > 0, f"{name}: nothing reached the candidate\n{log}"
        if name.startswith("shadowproxy"):
            assert t["summary"]["proxy_cpu_us_per_req"]["median"] > 0, name
        if name in ("shadowproxy_off", "shadowproxy_onnx", "nginx"):
            for r in t["rounds"]:  # the open-loop run at half load
                half = r["half_load"]
                assert half["completed"] > 0 and half["errors"] == 0, f"{name}: {half}\n{log}"
                assert half["latency_us"]["p99"] > 0

    # The local candidate's worker runs under SCHED_IDLE on the proxy's core: below
    # saturation it answers, and its CPU per request is measured there.
    onnx = doc["targets"]["shadowproxy_onnx"]
    assert _outcomes(onnx["summary"]["half_load_mirror_totals"], "onnx").get("ok", 0) > 0, log
    for r in onnx["rounds"]:
        assert r["half_load"]["mirror"]["mirrored_fraction"] > 0.9, log
        assert r["half_load"]["proxy_cpu_us_per_req"] > 0
    # At saturation (wrk) it gets next to no CPU: whatever it did not answer is counted
    # (timeout, or dropped by its breaker or budget), never lost.
    for target in ("shadowproxy_onnx", "shadowproxy_both"):
        totals = doc["targets"][target]["summary"]["mirror_totals"]
        assert sum(_outcomes(totals, "onnx").values()) >= totals["production_served"], log

    # The HTTP candidate answered, and the comparator compared its pairs.
    both = doc["targets"]["shadowproxy_both"]["summary"]
    assert _outcomes(both["mirror_totals"], "cand").get("ok", 0) > 0, log
    assert both["mirror_totals"]["compare"]["compared"]["cand"] > 0, log
    assert 0 <= both["compared_fraction"]["median"] <= 1  # the lower of the two: see above
    for r in doc["targets"]["shadowproxy_both"]["rounds"]:
        cand = r["mirror"]["compare"]["candidates"]["cand"]
        assert cand["compared"] > 0 and 0 < cand["compared_fraction"] <= 1, log
    assert both["compare_thread_us_per_pair"]["median"] > 0

    _check_isolation(doc, log)

    executor = doc["executor"]
    assert executor["error"] is None, executor["error"]
    for r in executor["rounds"]:
        for batch, res in r["throughput"].items():
            assert res["rows_per_s"] > 0 and res["failures"] == 0, f"max_batch {batch}: {res}"
        assert r["round_trip"]["p50_us"] > 0

    comparator = doc["comparator"]
    assert comparator["error"] is None and comparator["rounds"], comparator
    for r in comparator["rounds"]:
        assert r["us_per_pair"] == pytest.approx(r["handoff_us_per_pair"] + r["fold_us_per_pair"])

    small, large = MODES["smoke"].memory_requests or (0, 0)
    memory = doc["memory"]
    assert memory["error"] is None and memory["target"] == "shadowproxy_http", memory
    points = memory["checkpoints"]
    assert points["small"]["requests"] == small  # sent one by one: exactly
    assert points["large"]["requests"] >= large
    assert all(p["rss_mb"] > 0 and p["tree_rss_mb"] >= p["rss_mb"] for p in points.values())

    for name in ("shadowproxy_http", "shadowproxy_both"):
        capacity = doc["capacity"][name]
        assert capacity["rps"] > 0 and capacity["cores_per_1k_rps"] > 0 and capacity["rss_mb"] > 0

    for name in HEADLINE_RATIOS:
        value = doc["ratios"][name]["value"]
        assert isinstance(value, float) and math.isfinite(value), f"{name} = {value!r}\n{log}"
    for key in ("nproc", "cpu_model", "kernel"):
        assert doc["machine"][key]
    assert doc["versions"]["nginx"] and doc["versions"]["wrk"]
    assert proc.returncode == 0, log
    for heading in (
        "| ratio |",
        "### Open loop at half load",
        "### Isolation: production with a faulty candidate",
        "### Executor batching",
        "### Comparator cost",
        "### Memory growth",
        "### Capacity per replica",
    ):
        assert heading in proc.stdout, heading


def _check_isolation(doc: dict, log: str) -> None:
    """Every faulty candidate was started, measured and really misbehaved."""
    iso = doc["isolation"]
    expected = {
        target_name(family, fault) for family, faults in FAMILY_FAULTS.items() for fault in faults
    }
    assert set(iso["targets"]) == expected, log
    cal = iso["calibration"]
    assert cal["slow_delay_us"] == pytest.approx(SLOW_FACTOR * cal["production_p50_us"])
    assert cal["slow_p50_us"] >= cal["slow_delay_us"]
    timeout_us = CANDIDATE_TIMEOUT_MS * 1000
    for name, t in iso["targets"].items():
        assert t["error"] is None and t["rounds"], f"{name}: {t['error']}\n{log}"
        half = t["rounds"][0]["half_load"]
        assert half["completed"] > 0, f"{name}: {half}\n{log}"
        if t["family"] == "shadowproxy":
            # Production is never failed, nor made to wait for the candidate's deadline.
            assert half["errors"] == 0, f"{name}: {half}\n{log}"
            assert half["latency_us"]["p50"] < timeout_us, f"{name}: {half}\n{log}"
            outcomes = _outcomes(
                t["summary"]["half_load_mirror_totals"],
                "cand" if t["fault"] != "crash_local" else "onnx",
            )
            seen = sum(outcomes.get(o, 0) for o in FAULT_EVIDENCE[t["fault"]])
            assert seen > 0, f"{name}: the fault did not show: {outcomes}\n{log}"
    # The healthy references, at the same rate: every mirror answered, nothing failed.
    healthy = doc["targets"]["shadowproxy_http"]
    totals = healthy["summary"]["isolation_load_mirror_totals"]
    assert _outcomes(totals, "cand").get("ok", 0) >= totals["production_served"] > 0, log
    iso_rate = iso["targets"][target_name("shadowproxy", "hang")]["rounds"][0]["half_load"]["rate"]
    for name in ("shadowproxy_http", "nginx_mirror"):
        run = doc["targets"][name]["rounds"][0]["isolation_load"]
        assert run["errors"] == 0 and run["completed"] > 0, f"{name}: {run}\n{log}"
        assert run["rate"] == iso_rate, f"{name}: {run}"
    # nginx's mirror holds the client connection until the candidate answers or times out.
    hang = iso["targets"][target_name("nginx_mirror", "hang")]["rounds"][0]["half_load"]
    assert hang["latency_us"]["p50"] >= timeout_us, hang
    assert hang["mirror"]["candidate_backend_received"] > 0


@pytest.mark.timeout(120)
def test_smoke_run_with_python_model_servers(tmp_path: Path) -> None:
    """The python2ms profile: 2 ms backends, and a slow candidate 10× slower than that."""
    doc, proc, log = _run_smoke(
        tmp_path,
        "--profile=python2ms",
        "--targets=direct,shadowproxy_off",
        "--faults=slow",
        "--skip-executor",
        "--skip-comparator",
        "--skip-memory",
    )
    assert proc.returncode == 0, log
    assert doc["settings"]["profile"] == "python2ms"
    assert "with the `python2ms` backend profile" in proc.stdout
    direct = doc["targets"]["direct"]["rounds"][0]
    assert direct["single"]["p50_us"] >= 2000  # the model server's 2 ms, never less
    cal = doc["isolation"]["calibration"]
    assert cal["production_p50_us"] >= 2000
    assert cal["slow_p50_us"] >= SLOW_FACTOR * 2000
    slow = doc["isolation"]["targets"]["shadowproxy_fault_slow"]
    half = slow["rounds"][0]["half_load"]
    assert half["errors"] == 0 and half["completed"] > 0, half
    # Production answers in its own 2-3 ms, not in the slow candidate's 20 ms.
    assert half["latency_us"]["p50"] < cal["slow_delay_us"], half
    assert _outcomes(slow["summary"]["half_load_mirror_totals"], "cand").get("ok", 0) > 0
    assert doc["comparator"] is None and doc["memory"] is None and doc["executor"] is None
    assert math.isfinite(doc["ratios"]["isolation_p99_inflation_slow"]["value"])
