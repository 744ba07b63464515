"""The Markdown tables of a run's JSON document (see :func:`bench.report.build`).

Documents of earlier runs lack the later sections (open loop, executor, isolation,
comparator, memory, capacity); those sections are then left out rather than shown empty.
"""

from __future__ import annotations

from typing import Any

from .backends import PROFILES
from .cells import cell, commit_label, measured, median, pair, percent, short, without_figures
from .tables_isolation import isolation_table
from .tables_resources import capacity_table, comparator_table, memory_table

# ---------------------------------------------------------------------------------------------
# Sections


def _header(doc: dict[str, Any]) -> list[str]:
    s, m, v = doc["settings"], doc["machine"], doc["versions"]
    open_loop = ""
    if "open_loop_s" in s:
        faulty = ", faulty-candidate targets included" if _faulty(doc) else ""
        open_loop = (
            "; open loop at half the lower capacity of `shadowproxy_off` (wrk) and "
            "`shadowproxy_onnx` (mirroring every request) "
            f"for {s['open_loop_s']:g} s per target{faulty}"
            + (
                f" and at {', '.join(map(str, s['fixed_rates']))} req/s for "
                f"{s['fixed_rate_s']:g} s each"
                if s.get("fixed_rates")
                else ""
            )
        )
    load = ""
    if "loadavg" in doc:
        start, end = doc["loadavg"]["start"], doc["loadavg"]["end"]
        load = f", load average {start:.2f} at the start and {end:.2f} at the end (1 min)"
    profile = s.get("profile", "nginx")
    return [
        f"Run `{s['mode']}` of {doc['started_at']} ({doc['wall_s']:.0f} s) with the `{profile}` "
        f"backend profile ({PROFILES.get(profile, profile)}): {s['rounds']} "
        f"interleaved round{'' if s['rounds'] == 1 else 's'}; per target and round, "
        f"wrk `-t{s['threads']} -c{s['connections']} "
        f"-d{s['wrk_duration_s']}s` and {s['latency_requests']:,} sequential requests on one "
        f"connection (interleaved across targets in batches of 100){open_loop}.",
        "",
        f"Machine: {m['nproc']} × {m['cpu_model']}, Linux {m['kernel']}{load}; "
        f"nginx {v['nginx']}, wrk {v['wrk']}, Python {v['python']}, "
        f"shadowproxy {v['shadowproxy']} ({commit_label(v)}).",
    ]


def _ratios(doc: dict[str, Any]) -> list[str]:
    lines = [
        "### Ratios",
        "",
        "Median over rounds, (min … max) in brackets; names ending in `_us` are differences in µs.",
        "",
        "| ratio | value | goal | met |",
        "|---|---|---|---|",
    ]
    for name, r in doc["ratios"].items():
        val = (
            cell({"median": r["value"], "min": r["min"], "max": r["max"]}, 2)
            if r["value"] is not None
            else "–"
        )
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        lines.append(f"| `{name}` | {val} | {r['goal'] or '–'} | {met} |")
    return lines


def _targets(doc: dict[str, Any]) -> list[str]:
    lines = [
        "### Targets",
        "",
        "| target | req/s | wrk p50 / p99 (ms) | 1-conn p50 / p99 (µs) | added p50 / p99 (µs) "
        "| proxy CPU µs/req | mirrored | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in doc["targets"].items():
        if not t["rounds"]:
            lines.append(f"| `{name}` | not measured: {short(t['error'])} | | | | | | |")
            continue
        sm = t["summary"]
        errors = int(sum(r["errors"] for r in t["rounds"]))
        added = pair(sm["added_p50_us"], sm["added_p99_us"]) if name != "direct" else "–"
        lines.append(
            f"| `{name}` | {cell(sm['rps'])} "
            f"| {pair(sm['wrk_p50_us'], sm['wrk_p99_us'], 2, 1e-3)} "
            f"| {pair(sm['single_p50_us'], sm['single_p99_us'])} "
            f"| {added} | {cell(sm['cpu_us_per_req'], 1)} "
            f"| {percent(sm['mirrored_fraction'])} | {errors} |"
        )
    return lines


def _outcomes(totals: dict[str, Any]) -> str:
    """Each candidate's outcomes; runs of schema 2 and older counted one candidate."""

    def text(outcomes: dict[str, float]) -> str:
        return ", ".join(f"{o} {int(n):,}" for o, n in sorted(outcomes.items())) or "none"

    if "by_candidate" not in totals:
        return "candidate outcomes: " + text(totals["candidate_outcomes"])
    return "; ".join(
        f"candidate `{name}`: {text(outcomes)}" for name, outcomes in totals["by_candidate"].items()
    )


def _compared(totals: dict[str, Any]) -> str:
    c = totals.get("compare")
    if not c:
        return ""
    pairs = ", ".join(f"`{name}` {int(n):,}" for name, n in c["compared"].items())
    return (
        f"; the comparator folded {int(c['processed']):,} records (its full queue refused "
        f"{int(c['dropped']):,}) and compared pairs: {pairs}"
    )


def _mirror_notes(doc: dict[str, Any]) -> list[str]:
    notes = []
    for name, t in doc["targets"].items():
        sm = t.get("summary", {})
        totals = sm.get("mirror_totals")
        if not totals:
            continue
        backend = totals.get("candidate_backend_received")
        if "production_served" in totals:
            note = (
                f"- `{name}`: production served {int(totals['production_served']):,} requests "
                f"during the wrk runs; {_outcomes(totals)}{_compared(totals)}"
            )
            if backend is not None:
                note += f"; the candidate backend received {backend:,}"
            half = sm.get("half_load_mirror_totals")
            if half:
                note += (
                    f". During the open-loop runs at half load: production served "
                    f"{int(half['production_served']):,}; {_outcomes(half)}"
                )
            notes.append(note + ".")
        else:
            notes.append(
                f"- `{name}`: wrk completed {totals['wrk_requests']:,} requests; the candidate "
                f"backend received {backend or 0:,} mirrored requests."
            )
    return ["Mirroring, summed over rounds:", "", *notes] if notes else []


def _summary_table(
    doc: dict[str, Any], heading: str, intro: str, columns: list[tuple[str, str, int]]
) -> list[str]:
    """One row per measured target that has the first column's figure: ``columns`` are
    (header, summary key, digits)."""
    rows = [
        f"| `{name}` | " + " | ".join(cell(t["summary"][key], digits) for _, key, digits in columns)
        + " |"
        for name, t in measured(doc).items()
        if t["summary"].get(columns[0][1])
    ]  # fmt: skip
    if not rows:
        return []
    headers = " | ".join(header for header, _, _ in columns)
    return [heading, "", intro, "", f"| target | {headers} |", "|---" * (len(columns) + 1) + "|",
            *rows]  # fmt: skip


def _cpu_split(doc: dict[str, Any]) -> list[str]:
    return _summary_table(
        doc,
        "### CPU per request: proxy process alone and whole tree",
        "During the wrk runs. The tree adds the executor's worker processes.",
        [
            ("proxy process CPU µs/req", "proxy_cpu_us_per_req", 1),
            ("process tree CPU µs/req", "cpu_us_per_req", 1),
        ],
    )


def _gc_pauses(doc: dict[str, Any]) -> list[str]:
    return _summary_table(
        doc,
        "### Full garbage collections",
        'During the wrk runs, from `shadowproxy_gc_pause_seconds{generation="2"}`: the event '
        "loop stands still through each. The longest is the upper bound of its histogram "
        "bucket.",
        [
            ("full collections per s", "gc_full_per_s", 1),
            ("their pauses in all (ms)", "gc_full_pause_ms", 1),
            ("longest (ms, at most)", "gc_full_longest_ms", 2),
        ],
    )


def _half_load(doc: dict[str, Any]) -> list[str]:
    rows = []
    for name, t in measured(doc).items():
        sm = t["summary"]
        if not sm.get("half_rate"):
            continue
        errors = int(sum(r["half_load"]["errors"] for r in t["rounds"] if "half_load" in r))
        rows.append(
            f"| `{name}` | {cell(sm['half_rate'])} | {cell(sm['half_achieved_rps'])} "
            f"| {median(sm['half_p50_us'])} | {cell(sm['half_p99_us'])} "
            f"| {median(sm['half_max_us'])} | {percent(sm.get('half_mirrored_fraction'))} "
            f"| {errors} |"
        )
    if not rows:
        return []
    return [
        "### Open loop at half load",
        "",
        "Fixed rate: half the lower capacity in the same round of `shadowproxy_off` (its wrk "
        "req/s) and `shadowproxy_onnx` (10^6 ÷ its tree's CPU µs per request in short "
        "open-loop runs that mirror every request), the same rate for each target; latency "
        "from each request's scheduled send time. p50 and max are medians over rounds.",
        "",
        "| target | rate (req/s) | achieved (req/s) | p50 (µs) | p99 (µs) | max (µs) | mirrored "
        "| errors |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _fixed_rates(doc: dict[str, Any]) -> list[str]:
    by_target = {
        n: t["summary"]["fixed_rate"]
        for n, t in measured(doc).items()
        if t["summary"].get("fixed_rate")
    }
    rates = sorted({rate for f in by_target.values() for rate in f}, key=float)
    if not rates:
        return []
    lines = [
        "### Open loop at fixed rates",
        "",
        "p50 / p99 latency in µs from the scheduled send time (median over rounds); "
        "errors, if any, in brackets.",
        "",
        "| target | " + " | ".join(f"{float(r):,.0f} req/s" for r in rates) + " |",
        "|---|" + "---|" * len(rates),
    ]
    for name, fixed in by_target.items():
        cells = []
        for rate in rates:
            f = fixed.get(rate)
            if f is None:
                cells.append("–")
                continue
            cell = pair(f["p50_us"], f["p99_us"])
            cells.append(cell + (f" ({f['errors']} errors)" if f["errors"] else ""))
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return lines


def executor_table(ex: dict[str, Any] | None) -> list[str]:
    """The executor section (see :mod:`bench.executor`), once summarised by the report."""
    if not ex or not ex.get("rounds"):
        return without_figures("Executor batching", ex)
    sm = ex["summary"]
    settings = ex["settings"]
    failures = sum(t["failures"] for r in ex["rounds"] for t in r["throughput"].values())
    return [
        "### Executor batching",
        "",
        f"One process executor per `max_batch` (other settings at their defaults, all on the "
        f"proxy CPU), {settings['concurrency']} 1-row requests in flight for "
        f"{settings['duration_s']:g} s each, {settings['rounds']} round(s); then "
        f"{settings['round_trips']:,} sequential 1-row requests at `max_batch: 1`.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| rows/s at `max_batch: 1` | {cell(sm['rows_per_s_batch_1'])} |",
        f"| rows/s at `max_batch: 32` | {cell(sm['rows_per_s_batch_32'])} |",
        f"| mean rows per batch at `max_batch: 32` | {median(sm['mean_batch_rows_32'], 1)} |",
        f"| proxy-side CPU µs per row, `max_batch` 1 / 32 "
        f"| {pair(sm['proxy_cpu_us_per_row_batch_1'], sm['proxy_cpu_us_per_row_batch_32'], 1)} |",
        f"| round trip at `max_batch: 1`, p50 / p99 / mean (µs) "
        f"| {median(sm['round_trip_p50_us'])} / {median(sm['round_trip_p99_us'])} "
        f"/ {median(sm['round_trip_mean_us'])} |",
        f"| of which model run / transfer / queue, mean (µs) "
        f"| {median(sm['round_trip_compute_us'])} / {median(sm['round_trip_ipc_us'])} "
        f"/ {median(sm['round_trip_queue_us'])} |",
        f"| failed requests | {failures} |",
    ]


def _faulty(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return (doc.get("isolation") or {}).get("targets", {})


def _incidents(doc: dict[str, Any]) -> list[str]:
    lines = []
    for name, t in {**doc["targets"], **_faulty(doc)}.items():
        if t.get("restarts"):
            lines.append(
                f"\n`{name}` was stopped from outside during the run and started again "
                f"{t['restarts']} time(s); each interrupted measurement was repeated after "
                "a warm-up."
            )
        if t["error"] and t["rounds"]:
            lines.append(f"\n`{name}` stopped early: {short(t['error'])}")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    sections = [
        _header(doc),
        _ratios(doc),
        _targets(doc),
        _mirror_notes(doc),
        _cpu_split(doc),
        _gc_pauses(doc),
        _half_load(doc),
        isolation_table(doc),
        _fixed_rates(doc),
        executor_table(doc.get("executor")),
        comparator_table(doc),
        memory_table(doc),
        capacity_table(doc),
    ]
    lines: list[str] = []
    for section in filter(None, sections):
        lines += ["", *section] if lines else section
    lines += _incidents(doc)
    return "\n".join(lines) + "\n"
