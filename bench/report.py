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

from . import faults
from .tables import markdown as markdown  # the tables of a document, re-exported here
from .targets import REPO

DOCS = REPO / "docs" / "benchmarks.md"
RESULTS_BEGIN = "<!-- results:begin -->"
RESULTS_END = "<!-- results:end -->"
SCALE_OUT_DOCS = REPO / "docs" / "scale-out.md"
CAPACITY_BEGIN = "<!-- capacity:begin -->"
CAPACITY_END = "<!-- capacity:end -->"


@dataclass(frozen=True)
class Ratio:
    """A per-round comparison of two figures: their quotient, or for ``difference`` a − b;
    without a ``denominator``, the numerator's figure itself, summarised the same way.

    Each side is (source, per-round metric); a source is a target, a faulty-candidate target,
    or a section: ``executor``, ``comparator``, ``memory``.
    """

    name: str
    numerator: tuple[str, str]
    denominator: tuple[str, str] | None
    goal: str | None = None  # e.g. "<= 3"
    meaning: str = ""
    difference: bool = False

    def of(self, a: float | None, b: float | None) -> float | None:
        if a is None or (b is None and self.denominator is not None):
            return None
        if b is None:
            return a
        if self.difference:
            return a - b
        return a / b if b > 0 else None

    def met(self, value: float | None) -> bool | None:
        if self.goal is None or value is None:
            return None
        op, bound = self.goal.split()
        return value <= float(bound) if op == "<=" else value >= float(bound)

    @property
    def definition(self) -> str:
        num = ".".join(self.numerator)
        if self.denominator is None:
            return num
        return f"{num} {'-' if self.difference else '/'} {'.'.join(self.denominator)}"


def _isolation_ratios(family: str, goal: str | None) -> tuple[Ratio, ...]:
    prefix = "" if family == "shadowproxy" else "nginx_"
    healthy = Ratio(
        f"{prefix}isolation_p99_inflation_healthy",
        (faults.HEALTHY[family], "iso_p99_us"),
        (faults.BASELINE[family], "iso_p99_us"),
        None,  # the reference for the faults' goals, not a goal itself
        f"production p99 at the isolation rate (open loop) mirroring every request to a "
        f"healthy candidate vs {faults.BASELINE[family]}: what mirroring itself costs there",
    )
    return (healthy,) + tuple(
        Ratio(
            f"{prefix}isolation_p99_inflation_{fault}",
            (faults.target_name(family, fault), "half_p99_us"),
            (faults.BASELINE[family], "iso_p99_us"),
            goal,
            f"production p99 at half load (open loop) with a candidate that is {fault} "
            f"({faults.FAULTS[fault]}) vs {faults.BASELINE[family]}",
        )
        for fault in faults.FAMILY_FAULTS[family]
    )


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
        ("shadowproxy_onnx", "half_proxy_cpu_us_per_req"),
        ("shadowproxy_off", "half_proxy_cpu_us_per_req"),
        "<= 30",
        "CPU µs per request the proxy process (not its workers) adds to mirror every request "
        "to a local ONNX candidate, in the open-loop runs at half load (at saturation the "
        "candidate's SCHED_IDLE worker gets no CPU and most requests are shed)",
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
    *_isolation_ratios("shadowproxy", "<= 1.1"),
    Ratio(
        "comparator_us_per_pair",
        ("comparator", "us_per_pair"),
        None,
        "<= 2",
        "CPU µs the comparator costs the proxy process per pair: hand-over plus fold "
        "(python -m bench comparator, on the proxy CPU)",
    ),
    Ratio(
        "rss_growth_mb",
        ("memory", "rss_growth_mb"),
        None,
        "<= 20",
        "resident memory the proxy process gains between the small and the large request "
        "count (f')",
    ),
    Ratio(
        "onnx_tree_cpu_added_us",
        ("shadowproxy_onnx", "half_cpu_us_per_req"),
        ("shadowproxy_off", "half_cpu_us_per_req"),
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
    Ratio(
        "both_throughput_ratio_vs_http",
        ("shadowproxy_both", "rps"),
        ("shadowproxy_http", "rps"),
        None,
        "closed-loop req/s with the HTTP and the local candidate and the comparator, vs the "
        "HTTP candidate alone",
    ),
    Ratio(
        "rss_growth_tree_mb",
        ("memory", "tree_rss_growth_mb"),
        None,
        None,
        "as rss_growth_mb, for the whole process tree (executor workers included)",
    ),
    *_isolation_ratios("nginx_mirror", None),
)

# How to read one figure from a round's record; None when the record lacks it.
Metrics = dict[str, Callable[[dict[str, Any]], float | None]]

# Per-round figures summarised as median and range over rounds.
METRICS: Metrics = {
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
    # The baselines of the faulty candidates at the isolation rate: their own run when it
    # differs from the half-load rate, else the half-load run.
    "iso_rate": lambda r: _iso(r, "rate"),
    "iso_p99_us": lambda r: _iso(r, "latency_us", "p99"),
    "half_cpu_us_per_req": lambda r: _half(r, "cpu_us_per_req"),
    "half_proxy_cpu_us_per_req": lambda r: _half(r, "proxy_cpu_us_per_req"),
    # The local candidate's capacity mirroring every request, from its refined calibration.
    "mirrored_capacity_rps": lambda r: _get(r, "mirrored_capacity", "rps"),
    "mirrored_cpu_us_per_req": lambda r: (
        r["mirrored_capacity"]["calibration"][-1]["cpu_us_per_req"]
        if "mirrored_capacity" in r
        else None
    ),
    "rss_mb": lambda r: _get(r, "memory", "rss_mb"),
    "tree_rss_mb": lambda r: _get(r, "memory", "tree_rss_mb"),
    "compared_fraction": lambda r: _get(r, "mirror", "compare", "compared_fraction"),
    "compare_thread_us_per_pair": lambda r: _get(r, "mirror", "compare", "thread_us_per_pair"),
    "gc_full_per_s": lambda r: _get(r, "gc_full", "per_s"),
    "gc_full_pause_ms": lambda r: _get(r, "gc_full", "pause_ms"),
    "gc_full_longest_ms": lambda r: _get(r, "gc_full", "longest_ms_at_most"),
}
# A faulty-candidate target is only measured at half load: its rounds hold ``half_load``.
HALF_METRICS = {k: v for k, v in METRICS.items() if k.startswith("half_")}

# Per-round figures of the executor section.
EXECUTOR_METRICS: Metrics = {
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
# Per-round figures of ``bench comparator`` (comparator) and of the memory growth (one round).
COMPARATOR_METRICS: Metrics = {
    "us_per_pair": lambda r: r["us_per_pair"],
    "handoff_us_per_pair": lambda r: r["handoff_us_per_pair"],
    "fold_us_per_pair": lambda r: r["fold_us_per_pair"],
}
MEMORY_METRICS: Metrics = {
    "rss_growth_mb": lambda r: r["rss_growth_mb"],
    "tree_rss_growth_mb": lambda r: r["tree_rss_growth_mb"],
}
# The sections of a run besides its targets, each with rounds of its own.
SECTION_METRICS = {
    "executor": EXECUTOR_METRICS,
    "comparator": COMPARATOR_METRICS,
    "memory": MEMORY_METRICS,
}


def _get(record: dict[str, Any], *keys: str) -> Any:
    """``record[k1][k2]…``, None where a key is missing (older runs, targets without it)."""
    value: Any = record
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _half(r: dict[str, Any], *keys: str) -> float | None:
    """A figure of the round's open-loop run at half load, None if there was none."""
    return _get(r, "half_load", *keys)


def _iso(r: dict[str, Any], *keys: str) -> float | None:
    """A figure of the round's open-loop run at the isolation rate (see ``_half_load`` in
    bench/runner.py)."""
    if "isolation_load" in r:
        return _get(r, "isolation_load", *keys)
    return _half(r, *keys)


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


def _summary(rounds: list[dict[str, Any]], metrics: Metrics) -> dict[str, Any]:
    out = {}
    for metric, get in metrics.items():
        out[metric] = spread([v for r in rounds if (v := get(r)) is not None])
    return out


def summarize(targets: dict[str, dict[str, Any]], metrics: Metrics = METRICS) -> None:
    for t in targets.values():
        t["summary"] = _summary(t["rounds"], metrics)
        mirrors = [r["mirror"] for r in t["rounds"] if "mirror" in r]
        if mirrors:
            t["summary"]["mirror_totals"] = mirror_totals(t["rounds"], mirrors)
        half = [r["half_load"]["mirror"] for r in t["rounds"] if "mirror" in r.get("half_load", {})]
        if half:
            t["summary"]["half_load_mirror_totals"] = _outcome_totals(half)
        iso = [r["isolation_load"]["mirror"] for r in t["rounds"]
               if "mirror" in r.get("isolation_load", {})]  # fmt: skip
        if iso:
            t["summary"]["isolation_load_mirror_totals"] = _outcome_totals(iso)
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
    """Per candidate, each outcome summed over runs; and production's requests served."""
    by_candidate: dict[str, dict[str, float]] = {}
    for m in mirrors:
        for name, c in m.get("candidates", {}).items():
            totals = by_candidate.setdefault(name, {})
            for outcome, n in c["outcomes"].items():
                totals[outcome] = totals.get(outcome, 0.0) + n
    out: dict[str, Any] = {
        "by_candidate": by_candidate,
        "production_served": sum(m.get("production_served", 0.0) for m in mirrors),
    }
    compares = [m["compare"] for m in mirrors if "compare" in m]
    if compares:
        out["compare"] = {
            "processed": sum(c["processed"] for c in compares),
            "dropped": sum(c["dropped"] for c in compares),
            "compared": {
                name: sum(c["candidates"][name]["compared"] for c in compares)
                for name in compares[0]["candidates"]
            },
        }
    return out


def summarize_section(name: str, section: dict[str, Any] | None) -> None:
    """The summary of a section (``executor``, ``comparator``, ``memory``) from its rounds."""
    if section is not None:
        section["summary"] = _summary(section.get("rounds", []), SECTION_METRICS[name])


def mirror_totals(rounds: list[dict[str, Any]], mirrors: list[dict[str, Any]]) -> dict[str, Any]:
    """Over all wrk runs: requests served and what became of their mirrors."""
    out: dict[str, Any] = {"wrk_requests": sum(r["requests"] for r in rounds)}
    if any("candidate_backend_received" in m for m in mirrors):
        out["candidate_backend_received"] = sum(
            m.get("candidate_backend_received", 0) for m in mirrors
        )
    if any("candidates" in m for m in mirrors):
        out.update(_outcome_totals(mirrors))
    return out


def _source(source: str, doc: dict[str, Any]) -> tuple[list[dict[str, Any]], Metrics]:
    """The rounds of a ratio's source in a run document, and how to read its figures."""
    if source in SECTION_METRICS:
        return (doc.get(source) or {}).get("rounds", []), SECTION_METRICS[source]
    faulty = (doc.get("isolation") or {}).get("targets", {})
    if source in faulty:
        return faulty[source]["rounds"], HALF_METRICS
    return doc.get("targets", {}).get(source, {}).get("rounds", []), METRICS


def compute_ratios(
    targets: dict[str, dict[str, Any]],
    executor: dict[str, Any] | None = None,
    **sections: dict[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """Each ratio per round (numerator and denominator from the same round), then summarised.

    ``sections`` are the run's other sources: ``isolation`` (its faulty-candidate targets),
    ``comparator``, ``memory``. A round whose denominator is not positive gives no ratio for
    that round (differences only need both figures).
    """
    doc = {"targets": targets, "executor": executor, **sections}
    out: dict[str, dict[str, Any]] = {}
    for ratio in RATIOS:
        num_rounds, num_metrics = _source(ratio.numerator[0], doc)
        get_num = num_metrics[ratio.numerator[1]]
        num = _by_round(num_rounds)
        den, get_den = num, None
        if ratio.denominator is not None:
            den_rounds, den_metrics = _source(ratio.denominator[0], doc)
            den, get_den = _by_round(den_rounds), den_metrics[ratio.denominator[1]]
        per_round = []
        for rnd in sorted(num.keys() & den.keys()):
            b = get_den(den[rnd]) if get_den is not None else None
            value = ratio.of(get_num(num[rnd]), b)
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
            "definition": ratio.definition,
            "meaning": ratio.meaning,
        }
    return out


CAPACITY_TARGETS = ("shadowproxy_http", "shadowproxy_onnx", "shadowproxy_both")
# A local candidate's worker gets no CPU at saturation (SCHED_IDLE), so wrk's figure for a
# target with one is the capacity with its requests shed; mirroring every request to it,
# the capacity comes from the open-loop calibration runs instead (bench/runner.py).
MIRRORED_CAPACITY = {"shadowproxy_onnx": ("mirrored_capacity_rps", "mirrored_cpu_us_per_req")}


def capacity(targets: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """What one replica serves, for sizing: from the closed-loop runs on the proxy's one core.

    ``rps`` is its req/s at saturation, ``cores_per_1k_rps`` the CPU it spends per 1,000
    req/s (µs per request × 1,000 req/s, in cores), ``rss_mb`` / ``tree_rss_mb`` what the
    process and its tree hold while serving (medians over rounds).
    """
    out: dict[str, dict[str, float | None]] = {}
    for name in CAPACITY_TARGETS:
        sm = targets.get(name, {}).get("summary")
        if not sm or not sm.get("rps"):
            continue

        def median(metric: str, sm: dict[str, Any] = sm) -> float | None:
            return sm[metric]["median"] if sm.get(metric) else None

        rps_metric, cpu_metric = MIRRORED_CAPACITY.get(name, ("rps", "cpu_us_per_req"))
        if not sm.get(rps_metric):
            continue
        cpu = median(cpu_metric)
        out[name] = {
            "rps": median(rps_metric),
            "cores_per_1k_rps": cpu / 1000 if cpu is not None else None,
            "rss_mb": median("rss_mb"),
            "tree_rss_mb": median("tree_rss_mb"),
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
    isolation = raw.get("isolation")
    add_latency_deltas(targets)
    summarize(targets)
    if isolation is not None:
        summarize(isolation["targets"], HALF_METRICS)
    sections = {name: raw.get(name) for name in SECTION_METRICS}
    for name, section in sections.items():
        summarize_section(name, section)
    return {
        "schema": 3,
        **{k: raw[k] for k in ("started_at", "wall_s", "settings", "loadavg") if k in raw},
        "machine": machine(),
        "versions": versions(),
        "pinning": {
            "load_generator_backends_and_faulty_candidates": "CPU 0",
            "proxy_under_test": "CPU 1",
        },
        "ratios": compute_ratios(targets, isolation=isolation, **sections),
        "capacity": capacity(targets),
        "targets": targets,
        "isolation": isolation,
        **sections,
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


def between_markers(text: str, begin: str, end: str, md: str) -> str | None:
    """``text`` with what lies between the ``begin`` and ``end`` lines replaced by ``md``;
    None when the markers are missing or out of order."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        return None
    return text[: start + len(begin)] + "\n\n" + md.rstrip("\n") + "\n\n" + text[stop:]


def write_docs(md: str, path: Path = DOCS) -> None:
    """Replace the results section of ``docs/benchmarks.md`` (between the markers)."""
    new = between_markers(path.read_text(), RESULTS_BEGIN, RESULTS_END, md)
    if new is None:
        raise ValueError(f"{path} lacks the {RESULTS_BEGIN} … {RESULTS_END} markers")
    path.write_text(new)


def write_capacity_docs(md: str, path: Path = SCALE_OUT_DOCS) -> str | None:
    """Replace the capacity figures of the scale-out guide (between its markers).

    That page is written by hand around the markers: a page or markers not there (yet) are
    left alone, and the warning is returned for the caller to show.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return f"{path} does not exist; the capacity figures were not written there"
    new = between_markers(text, CAPACITY_BEGIN, CAPACITY_END, md)
    if new is None:
        return (
            f"{path} lacks the {CAPACITY_BEGIN} … {CAPACITY_END} markers; "
            "the capacity figures were not written there"
        )
    path.write_text(new)
    return None
