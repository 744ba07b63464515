"""Tables of what shadowproxy costs to run: comparator, memory growth, capacity per replica."""

from __future__ import annotations

from typing import Any

from .backends import PROFILES
from .cells import cell, commit_label, num, without_figures


def comparator_table(doc: dict[str, Any]) -> list[str]:
    section = doc.get("comparator")
    if not section or not section.get("rounds"):
        return without_figures("Comparator cost", section)
    sm = section["summary"]
    rows = [
        f"| `bench comparator`: hand-over + fold per pair (µs) | {cell(sm['us_per_pair'], 1)} |",
        f"| of which the event loop's hand-over (µs) | {cell(sm['handoff_us_per_pair'], 2)} |",
        f"| of which the comparator thread's fold (µs) | {cell(sm['fold_us_per_pair'], 1)} |",
    ]
    both = doc["targets"].get("shadowproxy_both", {}).get("summary")
    if both:
        rows += [
            "| `shadowproxy_both` under wrk: comparator thread per record folded (µs) "
            f"| {cell(both.get('compare_thread_us_per_pair'), 1)} |",
            "| `shadowproxy_both` under wrk: pairs compared per production request, "
            f"lower of the two candidates | {cell(both.get('compared_fraction'), 3)} |",
        ]
    return [
        "### Comparator cost",
        "",
        f"`python -m bench comparator` folds {section['rounds'][0]['pairs']:,.0f} synthetic "
        "pairs in each round, on the proxy's CPU; `shadowproxy_both` runs the comparator "
        "inside the proxy, where its figures come from `/admin/snapshot`.",
        "",
        "| figure | value |",
        "|---|---|",
        *rows,
    ]


def memory_table(doc: dict[str, Any]) -> list[str]:
    mem = doc.get("memory")
    if not mem or not mem.get("rounds"):
        return without_figures("Memory growth", mem)
    points = mem["checkpoints"]
    rows = [
        f"| {label} | {num(p['requests'])} | {num(p['rss_mb'], 1)} | {num(p['tree_rss_mb'], 1)} |"
        for label, p in (
            ("started, ready", points["start"]),
            ("after the small count", points["small"]),
            ("after the large count", points["large"]),
        )
    ]
    growth = mem["rounds"][0]
    return [
        "### Memory growth",
        "",
        f"A fresh `{mem['target']}` process, brought to {mem['requests'][0]:,} requests "
        f"(sequential) then {mem['requests'][1]:,} (wrk); resident memory in MB of the proxy "
        "process and of its process tree.",
        "",
        "| point | requests served | proxy process (MB) | process tree (MB) |",
        "|---|---|---|---|",
        *rows,
        f"| growth, small → large | | {num(growth['rss_growth_mb'], 1)} "
        f"| {num(growth['tree_rss_growth_mb'], 1)} |",
    ]


# What each configuration of the capacity table runs.
CAPACITY_CONFIGURATIONS = {
    "shadowproxy_http": "one HTTP candidate at `sample_rate: 1.0`, comparator off",
    "shadowproxy_onnx": (
        "one local ONNX candidate at `sample_rate: 1.0`, its worker on the proxy's core, "
        "comparator off; every request mirrored: from open-loop runs below saturation "
        "(10^6 ÷ the tree's CPU µs per request), since at saturation the worker, under "
        "`SCHED_IDLE`, gets no CPU"
    ),
    "shadowproxy_both": (
        "an HTTP and a local ONNX candidate at `sample_rate: 1.0`, comparator on; at "
        "saturation the local candidate's requests are shed (counted), so this is the "
        "capacity with the HTTP candidate mirrored and the local one mostly not"
    ),
}


def capacity_table(doc: dict[str, Any]) -> list[str]:
    """Capacity per replica, as written into the scale-out guide as well."""
    cap = doc.get("capacity")
    if not cap:
        return []
    s, v = doc["settings"], doc["versions"]
    profile = s.get("profile", "nginx")
    rows = [
        f"| `{name}` | {num(c['rps'])} | {num(c['cores_per_1k_rps'], 3)} "
        f"| {num(c['rss_mb'])} / {num(c['tree_rss_mb'])} |"
        for name, c in cap.items()
    ]
    return [
        "### Capacity per replica",
        "",
        f"From the `{s['mode']}` benchmark run of {doc['started_at']} (backend profile "
        f"`{profile}`: {PROFILES.get(profile, profile)}; shadowproxy {v['shadowproxy']}, "
        f"{commit_label(v)}): one shadowproxy process pinned to one core "
        f"({doc['machine']['cpu_model']}); req/s at saturation (wrk, {s['connections']} "
        "connections) unless noted below, CPU cores per 1,000 req/s (the process tree's CPU "
        "µs per request × 1,000), resident memory while serving (proxy process / whole "
        "tree, workers of local candidates included). Medians over rounds.",
        "",
        "| configuration | req/s per replica | CPU cores per 1,000 req/s | RSS per replica (MB) |",
        "|---|---|---|---|",
        *rows,
        "",
        *(f"- `{name}`: {CAPACITY_CONFIGURATIONS.get(name, name)}." for name in cap),
    ]


def capacity_markdown(doc: dict[str, Any]) -> str:
    """The capacity section alone, for the scale-out guide ('' when the run has none)."""
    lines = capacity_table(doc)
    return "\n".join(lines[2:]) + "\n" if lines else ""
