"""Turn raw rounds into summaries, ratios, JSON and the docs section (tables: bench.tables)."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tables import markdown as markdown  # the tables of a document, re-exported here
from .targets import REPO

DOCS = REPO / "docs" / "benchmarks.md"
RESULTS_BEGIN = "<!-- results:begin -->"
RESULTS_END = "<!-- results:end -->"


@dataclass(frozen=True)
class Ratio:
    """A per-round comparison of two figures: their quotient, or for ``difference`` a − b.

    Each side is (source, per-round metric), the source being a target or ``executor``.
    """

    name: str
    numerator: tuple[str, str]
    denominator: tuple[str, str]
    goal: str | None = None  # e.g. "<= 3"
    meaning: str = ""
    difference: bool = False

    def of(self, a: float | None, b: float | None) -> float | None:
        if a is None or b is None:
            return None
        if self.difference:
            return a - b
        return a / b if b > 0 else None

    def met(self, value: float | None) -> bool | None:
        if self.goal is None or value is None:
            return None
        op, bound = self.goal.split()
        return value <= float(bound) if op == "<=" else value >= float(bound)


RATIOS = (
    Ratio(
        "cpu_per_req_ratio_vs_nginx",
        ("shadowproxy_off", "cpu_us_per_req"),
        ("nginx", "cpu_us_per_req"),
        "<= 3",
        "proxy CPU time per request, shadowproxy (no candidates) vs nginx",
    ),
    Ratio(
        "added_p50_ratio_vs_nginx",
        ("shadowproxy_off", "added_p50_us"),
        ("nginx", "added_p50_us"),
        "<= 1.5",
        "single-connection p50 latency added over direct, shadowproxy vs nginx",
    ),
    Ratio(
        "mirror_throughput_ratio",
        ("shadowproxy_http", "rps"),
        ("nginx_mirror", "rps"),
        ">= 1.5",
        "closed-loop req/s while mirroring every request, shadowproxy vs nginx",
    ),
    Ratio(
        "onnx_proxy_cpu_added_us",
        ("shadowproxy_onnx", "proxy_cpu_us_per_req"),
        ("shadowproxy_off", "proxy_cpu_us_per_req"),
        "<= 30",
        "CPU µs per request the proxy process (not its workers) adds to mirror every request "
        "to a local ONNX candidate",
        difference=True,
    ),
    Ratio(
        "onnx_p99_inflation",
        ("shadowproxy_onnx", "half_p99_us"),
        ("shadowproxy_off", "half_p99_us"),
        "<= 1.1",
        "production p99 under open-loop load at half of the lower max of the two, "
        "with the local ONNX candidate vs without",
    ),
    Ratio(
        "batching_speedup",
        ("executor", "rows_per_s_batch_32"),
        ("executor", "rows_per_s_batch_1"),
        ">= 5",
        "rows/s through a process executor, max_batch 32 vs 1, many 1-row requests in flight",
    ),
    Ratio(
        "onnx_tree_cpu_added_us",
        ("shadowproxy_onnx", "cpu_us_per_req"),
        ("shadowproxy_off", "cpu_us_per_req"),
        None,
        "as onnx_proxy_cpu_added_us, for the whole process tree (workers included)",
        difference=True,
    ),
    Ratio(
        "added_p99_ratio_vs_nginx",
        ("shadowproxy_off", "added_p99_us"),
        ("nginx", "added_p99_us"),
        None,
        "as added_p50, at p99",
    ),
    Ratio(
        "throughput_ratio_vs_nginx",
        ("shadowproxy_off", "rps"),
        ("nginx", "rps"),
        None,
        "closed-loop req/s without candidates, shadowproxy vs nginx",
    ),
)

# Per-round figures summarised as median and range over rounds.
METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "rps": lambda r: r["rps"],
    "wrk_p50_us": lambda r: r["latency_us"]["p50"],
    "wrk_p99_us": lambda r: r["latency_us"]["p99"],
    "single_p50_us": lambda r: r["single"]["p50_us"],
    "single_p99_us": lambda r: r["single"]["p99_us"],
    "added_p50_us": lambda r: r.get("added_p50_us"),
    "added_p99_us": lambda r: r.get("added_p99_us"),
    "cpu_us_per_req": lambda r: r["cpu_us_per_req"],
    "proxy_cpu_us_per_req": lambda r: r.get("proxy_cpu_us_per_req"),
    "mirrored_fraction": lambda r: r["mirror"]["mirrored_fraction"] if "mirror" in r else None,
    "errors": lambda r: r["errors"],
    "half_rate": lambda r: _half(r, "rate"),
    "half_achieved_rps": lambda r: _half(r, "achieved_rps"),
    "half_p50_us": lambda r: _half(r, "latency_us", "p50"),
    "half_p99_us": lambda r: _half(r, "latency_us", "p99"),
    "half_max_us": lambda r: _half(r, "latency_us", "max"),
    "half_errors": lambda r: _half(r, "errors"),
    "half_mirrored_fraction": lambda r: _half(r, "mirror", "mirrored_fraction"),
}

# Per-round figures of the executor section.
EXECUTOR_METRICS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "rows_per_s_batch_1": lambda r: r["throughput"]["1"]["rows_per_s"],
    "rows_per_s_batch_32": lambda r: r["throughput"]["32"]["rows_per_s"],
    "mean_batch_rows_32": lambda r: r["throughput"]["32"]["mean_batch_rows"],
    "proxy_cpu_us_per_row_batch_1": lambda r: r["throughput"]["1"]["proxy_cpu_us_per_row"],
    "proxy_cpu_us_per_row_batch_32": lambda r: r["throughput"]["32"]["proxy_cpu_us_per_row"],
    "failures": lambda r: sum(t["failures"] for t in r["throughput"].values()),
    "round_trip_p50_us": lambda r: r["round_trip"]["p50_us"],
    "round_trip_p99_us": lambda r: r["round_trip"]["p99_us"],
    "round_trip_mean_us": lambda r: r["round_trip"]["mean_us"],
    "round_trip_compute_us": lambda r: r["round_trip"]["compute_mean_us"],
    "round_trip_ipc_us": lambda r: r["round_trip"]["ipc_mean_us"],
    "round_trip_queue_us": lambda r: r["round_trip"]["queue_mean_us"],
}


def _half(r: dict[str, Any], *keys: str) -> float | None:
    """A figure of the round's open-loop run at half load, None if there was none."""
    value: Any = r.get("half_load")
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _by_round(rounds: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["round"]: r for r in rounds}


def add_latency_deltas(targets: dict[str, dict[str, Any]]) -> None:
    """added p50/p99 = target − direct, within the same round (so drift cancels)."""
    direct = _by_round(targets.get("direct", {}).get("rounds", []))
    for t in targets.values():
        for r in t["rounds"]:
            d = direct.get(r["round"])
            if d is None:
                continue
            r["added_p50_us"] = r["single"]["p50_us"] - d["single"]["p50_us"]
            r["added_p99_us"] = r["single"]["p99_us"] - d["single"]["p99_us"]


def _summary(
    rounds: list[dict[str, Any]], metrics: dict[str, Callable[[dict[str, Any]], float | None]]
) -> dict[str, Any]:
    out = {}
    for metric, get in metrics.items():
        out[metric] = spread([v for r in rounds if (v := get(r)) is not None])
    return out


def summarize(targets: dict[str, dict[str, Any]]) -> None:
    for t in targets.values():
        t["summary"] = _summary(t["rounds"], METRICS)
        mirrors = [r["mirror"] for r in t["rounds"] if "mirror" in r]
        if mirrors:
            t["summary"]["mirror_totals"] = mirror_totals(t["rounds"], mirrors)
        half = [r["half_load"]["mirror"] for r in t["rounds"] if "mirror" in r.get("half_load", {})]
        if half:
            t["summary"]["half_load_mirror_totals"] = _outcome_totals(half)
        fixed = fixed_rate_summary(t["rounds"])
        if fixed:
            t["summary"]["fixed_rate"] = fixed


def fixed_rate_summary(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per fixed rate: achieved req/s, p50, p99 and max over rounds, errors summed."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in rounds:
        for rate, res in r.get("fixed_rate", {}).items():
            runs.setdefault(rate, []).append(res)
    out = {}
    for rate, results in sorted(runs.items(), key=lambda kv: float(kv[0])):
        lat = [res["latency_us"] for res in results if res["latency_us"]]
        out[rate] = {
            "achieved_rps": spread([res["achieved_rps"] for res in results]),
            "p50_us": spread([x["p50"] for x in lat]),
            "p99_us": spread([x["p99"] for x in lat]),
            "max_us": spread([x["max"] for x in lat]),
            "errors": sum(res["errors"] for res in results),
        }
    return out


def _outcome_totals(mirrors: list[dict[str, Any]]) -> dict[str, Any]:
    outcomes: dict[str, float] = {}
    for m in mirrors:
        for outcome, n in m.get("candidate_outcomes", {}).items():
            outcomes[outcome] = outcomes.get(outcome, 0.0) + n
    return {
        "candidate_outcomes": outcomes,
        "production_served": sum(m.get("production_served", 0.0) for m in mirrors),
    }


def summarize_executor(section: dict[str, Any] | None) -> None:
    if section is not None:
        section["summary"] = _summary(section.get("rounds", []), EXECUTOR_METRICS)


def mirror_totals(rounds: list[dict[str, Any]], mirrors: list[dict[str, Any]]) -> dict[str, Any]:
    """Over all wrk runs: requests served and what became of their mirrors."""
    out: dict[str, Any] = {"wrk_requests": sum(r["requests"] for r in rounds)}
    if any("candidate_backend_received" in m for m in mirrors):
        out["candidate_backend_received"] = sum(
            m.get("candidate_backend_received", 0) for m in mirrors
        )
    if any("candidate_outcomes" in m for m in mirrors):
        out.update(_outcome_totals(mirrors))
    return out


def _rounds_of(
    source: str, targets: dict[str, dict[str, Any]], executor: dict[str, Any] | None
) -> list[dict[str, Any]]:
    if source == "executor":
        return (executor or {}).get("rounds", [])
    return targets.get(source, {}).get("rounds", [])


def compute_ratios(
    targets: dict[str, dict[str, Any]], executor: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Each ratio per round (numerator and denominator from the same round), then summarised.

    A round whose denominator is not positive gives no ratio for that round (differences
    only need both figures).
    """
    out: dict[str, dict[str, Any]] = {}
    for ratio in RATIOS:
        (nt, nm), (dt_, dm) = ratio.numerator, ratio.denominator
        num = _by_round(_rounds_of(nt, targets, executor))
        den = _by_round(_rounds_of(dt_, targets, executor))
        get_num = (EXECUTOR_METRICS if nt == "executor" else METRICS)[nm]
        get_den = (EXECUTOR_METRICS if dt_ == "executor" else METRICS)[dm]
        per_round = []
        for rnd in sorted(num.keys() & den.keys()):
            value = ratio.of(get_num(num[rnd]), get_den(den[rnd]))
            if value is not None:
                per_round.append(value)
        s = spread(per_round)
        value = s["median"] if s else None
        out[ratio.name] = {
            "value": value,
            "min": s["min"] if s else None,
            "max": s["max"] if s else None,
            "per_round": per_round,
            "goal": ratio.goal,
            "met": ratio.met(value),
            "definition": f"{nt}.{nm} {'-' if ratio.difference else '/'} {dt_}.{dm}",
            "meaning": ratio.meaning,
        }
    return out


# ---------------------------------------------------------------------------------------------
# Environment


def _cmd_output(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (p.stdout + p.stderr).strip()


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "os": platform.platform(),
    }


def versions() -> dict[str, Any]:
    nginx_v = re.search(r"nginx/(\S+)", _cmd_output(["nginx", "-v"]))
    wrk_v = re.search(r"^wrk (\S+)", _cmd_output(["wrk", "-v"]), re.M)
    sp = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    commit = _cmd_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _cmd_output(["git", "-C", str(REPO), "status", "--porcelain"])
    return {
        "python": platform.python_version(),
        "nginx": nginx_v.group(1) if nginx_v else None,
        "wrk": wrk_v.group(1) if wrk_v else None,
        "shadowproxy": sp.group(1) if sp else None,
        "git_commit": commit if re.fullmatch(r"[0-9a-f]{4,40}", commit) else None,
        "git_dirty": bool(dirty),
    }


def build(raw: dict[str, Any]) -> dict[str, Any]:
    """The full JSON document from a raw run."""
    targets = raw["targets"]
    executor = raw.get("executor")
    add_latency_deltas(targets)
    summarize(targets)
    summarize_executor(executor)
    return {
        "schema": 2,
        **{k: raw[k] for k in ("started_at", "wall_s", "settings", "loadavg") if k in raw},
        "machine": machine(),
        "versions": versions(),
        "pinning": {"load_generator_and_backends": "CPU 0", "proxy_under_test": "CPU 1"},
        "ratios": compute_ratios(targets, executor),
        "targets": targets,
        "executor": executor,
    }


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(doc), indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_docs(md: str, path: Path = DOCS) -> None:
    """Replace the results section of ``docs/benchmarks.md`` (between the markers)."""
    text = path.read_text()
    begin, end = text.find(RESULTS_BEGIN), text.find(RESULTS_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{path} lacks the {RESULTS_BEGIN} … {RESULTS_END} markers")
    new = text[: begin + len(RESULTS_BEGIN)] + "\n\n" + md + "\n" + text[end:]
    path.write_text(new)
