"""Turn raw rounds into summaries, ratios, JSON, a Markdown table and the docs section."""

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

from .targets import REPO

DOCS = REPO / "docs" / "benchmarks.md"
RESULTS_BEGIN = "<!-- results:begin -->"
RESULTS_END = "<!-- results:end -->"


@dataclass(frozen=True)
class Ratio:
    name: str
    numerator: tuple[str, str]  # (target, per-round metric)
    denominator: tuple[str, str]
    goal: str | None = None  # e.g. "<= 3"
    meaning: str = ""

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
    "mirrored_fraction": lambda r: r["mirror"]["mirrored_fraction"] if "mirror" in r else None,
    "errors": lambda r: r["errors"],
}


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


def summarize(targets: dict[str, dict[str, Any]]) -> None:
    for t in targets.values():
        t["summary"] = {}
        for metric, get in METRICS.items():
            values = [v for r in t["rounds"] if (v := get(r)) is not None]
            t["summary"][metric] = spread(values)
        mirrors = [r["mirror"] for r in t["rounds"] if "mirror" in r]
        if mirrors:
            t["summary"]["mirror_totals"] = mirror_totals(t["rounds"], mirrors)


def mirror_totals(rounds: list[dict[str, Any]], mirrors: list[dict[str, Any]]) -> dict[str, Any]:
    """Over all wrk runs: requests served and what became of their mirrors."""
    out: dict[str, Any] = {
        "wrk_requests": sum(r["requests"] for r in rounds),
        "candidate_backend_received": sum(m["candidate_backend_received"] for m in mirrors),
    }
    outcomes: dict[str, float] = {}
    for m in mirrors:
        for outcome, n in m.get("candidate_outcomes", {}).items():
            outcomes[outcome] = outcomes.get(outcome, 0.0) + n
    if any("candidate_outcomes" in m for m in mirrors):
        out["candidate_outcomes"] = outcomes
        out["production_served"] = sum(m.get("production_served", 0.0) for m in mirrors)
    return out


def compute_ratios(targets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each ratio per round (numerator and denominator from the same round), then summarised.

    A round whose denominator is not positive gives no ratio for that round.
    """
    out: dict[str, dict[str, Any]] = {}
    for ratio in RATIOS:
        (nt, nm), (dt_, dm) = ratio.numerator, ratio.denominator
        num = _by_round(targets.get(nt, {}).get("rounds", []))
        den = _by_round(targets.get(dt_, {}).get("rounds", []))
        per_round = []
        for rnd in sorted(num.keys() & den.keys()):
            a, b = METRICS[nm](num[rnd]), METRICS[dm](den[rnd])
            if a is not None and b is not None and b > 0:
                per_round.append(a / b)
        s = spread(per_round)
        value = s["median"] if s else None
        out[ratio.name] = {
            "value": value,
            "min": s["min"] if s else None,
            "max": s["max"] if s else None,
            "per_round": per_round,
            "goal": ratio.goal,
            "met": ratio.met(value),
            "definition": f"{nt}.{nm} / {dt_}.{dm}",
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
    add_latency_deltas(targets)
    summarize(targets)
    return {
        "schema": 1,
        **{k: raw[k] for k in ("started_at", "wall_s", "settings", "loadavg") if k in raw},
        "machine": machine(),
        "versions": versions(),
        "pinning": {"load_generator_and_backends": "CPU 0", "proxy_under_test": "CPU 1"},
        "ratios": compute_ratios(targets),
        "targets": targets,
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


# ---------------------------------------------------------------------------------------------
# Markdown


def _num(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _cell(s: dict[str, float] | None, digits: int = 0, scale: float = 1.0) -> str:
    if s is None:
        return "–"
    med, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if lo == hi:
        return _num(med, digits)
    return f"{_num(med, digits)} ({_num(lo, digits)} … {_num(hi, digits)})"


def _pair(
    a: dict[str, float] | None, b: dict[str, float] | None, digits: int = 0, scale: float = 1.0
) -> str:
    fa = _num(a["median"] * scale, digits) if a else "–"
    fb = _num(b["median"] * scale, digits) if b else "–"
    return f"{fa} / {fb}"


def markdown(doc: dict[str, Any]) -> str:
    s, m, v = doc["settings"], doc["machine"], doc["versions"]
    commit = v["git_commit"] or "uncommitted"
    if v["git_commit"] and v["git_dirty"]:
        commit += "+dirty"
    lines = [
        f"Run `{s['mode']}` of {doc['started_at']} ({doc['wall_s']:.0f} s): {s['rounds']} "
        f"interleaved round{'' if s['rounds'] == 1 else 's'}; per target and round, "
        f"wrk `-t{s['threads']} -c{s['connections']} "
        f"-d{s['wrk_duration_s']}s` and {s['latency_requests']:,} sequential requests on one "
        "connection (interleaved across targets in batches of 100).",
        "",
        f"Machine: {m['nproc']} × {m['cpu_model']}, Linux {m['kernel']}"
        + (f", load average {_load(doc)}" if "loadavg" in doc else "")
        + f"; nginx {v['nginx']}, wrk {v['wrk']}, Python {v['python']}, "
        f"shadowproxy {v['shadowproxy']} ({commit}).",
        "",
        "### Ratios",
        "",
        "Median over rounds, (min … max) in brackets.",
        "",
        "| ratio | value | goal | met |",
        "|---|---|---|---|",
    ]
    for name, r in doc["ratios"].items():
        val = (
            _cell({"median": r["value"], "min": r["min"], "max": r["max"]}, 2)
            if r["value"] is not None
            else "–"
        )
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        lines.append(f"| `{name}` | {val} | {r['goal'] or '–'} | {met} |")
    lines += [
        "",
        "### Targets",
        "",
        "| target | req/s | wrk p50 / p99 (ms) | 1-conn p50 / p99 (µs) | added p50 / p99 (µs) "
        "| proxy CPU µs/req | mirrored | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in doc["targets"].items():
        if not t["rounds"]:
            lines.append(f"| `{name}` | not measured: {_short(t['error'])} | | | | | | |")
            continue
        sm = t["summary"]
        mirrored = (
            _cell(sm["mirrored_fraction"], 1, 100.0) + " %" if sm["mirrored_fraction"] else "–"
        )
        errors = int(sum(r["errors"] for r in t["rounds"]))
        added = _pair(sm["added_p50_us"], sm["added_p99_us"]) if name != "direct" else "–"
        lines.append(
            f"| `{name}` | {_cell(sm['rps'])} "
            f"| {_pair(sm['wrk_p50_us'], sm['wrk_p99_us'], 2, 1e-3)} "
            f"| {_pair(sm['single_p50_us'], sm['single_p99_us'])} "
            f"| {added} | {_cell(sm['cpu_us_per_req'], 1)} | {mirrored} | {errors} |"
        )
    notes = []
    for name, t in doc["targets"].items():
        totals = t.get("summary", {}).get("mirror_totals")
        if not totals:
            continue
        if "candidate_outcomes" in totals:
            outcomes = ", ".join(
                f"{o} {int(n):,}" for o, n in sorted(totals["candidate_outcomes"].items())
            )
            notes.append(
                f"- `{name}`: production served {int(totals['production_served']):,} requests "
                f"during the wrk runs; candidate outcomes: {outcomes or 'none'}; "
                f"the candidate backend received {totals['candidate_backend_received']:,}."
            )
        else:
            notes.append(
                f"- `{name}`: wrk completed {totals['wrk_requests']:,} requests; the candidate "
                f"backend received {totals['candidate_backend_received']:,} mirrored requests."
            )
    if notes:
        lines += ["", "Mirroring, summed over rounds:", "", *notes]
    for name, t in doc["targets"].items():
        if t.get("restarts"):
            lines.append(
                f"\n`{name}` was stopped from outside during the run and started again "
                f"{t['restarts']} time(s); each interrupted measurement was repeated after "
                "a warm-up."
            )
        if t["error"] and t["rounds"]:
            lines.append(f"\n`{name}` stopped early: {_short(t['error'])}")
    return "\n".join(lines) + "\n"


def _load(doc: dict[str, Any]) -> str:
    start, end = doc["loadavg"]["start"], doc["loadavg"]["end"]
    return f"{start:.2f} at the start and {end:.2f} at the end (1 min)"


def _short(text: str | None, n: int = 160) -> str:
    line = (text or "").strip().splitlines()[0] if text else ""
    line = line.replace("|", "\\|")
    return line if len(line) <= n else line[: n - 1] + "…"


def write_docs(md: str, path: Path = DOCS) -> None:
    """Replace the results section of ``docs/benchmarks.md`` (between the markers)."""
    text = path.read_text()
    begin, end = text.find(RESULTS_BEGIN), text.find(RESULTS_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{path} lacks the {RESULTS_BEGIN} … {RESULTS_END} markers")
    new = text[: begin + len(RESULTS_BEGIN)] + "\n\n" + md + "\n" + text[end:]
    path.write_text(new)
