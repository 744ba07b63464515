"""The isolation table: production's latency with each faulty candidate, beside nginx's."""

from __future__ import annotations

from typing import Any

from .cells import cell, num, short
from .faults import BASELINE, HEALTHY, target_name

HEALTHY_ROW = "healthy"


def _ratio(doc: dict[str, Any], name: str) -> str:
    r = doc["ratios"].get(name)
    if not r or r["value"] is None:
        return "–"
    return cell({"median": r["value"], "min": r["min"], "max": r["max"]}, 2)


def _errors(t: dict[str, Any], key: str = "half_load") -> str:
    """Errors of the runs at the isolation rate (``key``, else the half-load run)."""
    runs = [r.get(key, r.get("half_load")) for r in t["rounds"]]
    return str(int(sum(run["errors"] for run in runs if run)))


def _seen(t: dict[str, Any], key: str = "half_load") -> str:
    """What the candidate got in the runs at the isolation rate (``key``): shadowproxy's
    outcomes, or what its server counted."""
    totals = t["summary"].get(f"{key}_mirror_totals")
    if totals and totals.get("by_candidate"):
        return "; ".join(
            ", ".join(f"{o} {int(n):,}" for o, n in sorted(outcomes.items())) or "none"
            for outcomes in totals["by_candidate"].values()
        )
    received = [
        r[key]["mirror"]["candidate_backend_received"]
        for r in t["rounds"]
        if "candidate_backend_received" in r.get(key, {}).get("mirror", {})
    ]
    return f"received {sum(received):,}" if received else "–"


def _columns(doc: dict[str, Any], family: str, fault: str | None) -> list[str]:
    """p99, inflation, what the candidate saw and errors of one family, one fault; the
    fault None is the baseline (no candidate), ``healthy`` the healthy candidate."""
    if fault is None or fault == HEALTHY_ROW:
        name = BASELINE[family] if fault is None else HEALTHY[family]
        t = doc["targets"].get(name)
        if not t or not t["rounds"] or not t["summary"].get("iso_p99_us"):
            return ["–"] * 4
        if fault is None:
            return [cell(t["summary"]["iso_p99_us"]), "1", "–", _errors(t, "isolation_load")]
        prefix = "" if family == "shadowproxy" else "nginx_"
        return [
            cell(t["summary"]["iso_p99_us"]),
            _ratio(doc, f"{prefix}isolation_p99_inflation_healthy"),
            _seen(t, "isolation_load"),
            _errors(t, "isolation_load"),
        ]
    t = doc["isolation"]["targets"].get(target_name(family, fault))
    if t is None:
        return ["–"] * 4
    if not t["rounds"]:
        return [f"not measured: {short(t['error'], 60)}", "–", "–", "–"]
    prefix = "" if family == "shadowproxy" else "nginx_"
    return [
        cell(t["summary"]["half_p99_us"]),
        _ratio(doc, f"{prefix}isolation_p99_inflation_{fault}"),
        _seen(t),
        _errors(t),
    ]


def _iso_rate(doc: dict[str, Any]) -> float | None:
    t = doc["targets"].get(BASELINE["shadowproxy"])
    rate = t["summary"].get("iso_rate") if t and t.get("summary") else None
    return rate["median"] if rate else None


def isolation_table(doc: dict[str, Any]) -> list[str]:
    iso = doc.get("isolation")
    if not iso or not iso.get("targets"):
        return []
    faults = list(iso["faults"])
    cal = iso.get("calibration") or {}
    slow = ""
    if cal:
        slow = (
            f" The slow candidate answers after {num(cal['slow_delay_us'])} µs, "
            f"{cal['slow_factor_asked']}× production's p50 of {num(cal['production_p50_us'])} µs "
            f"measured at the start of the run; its own p50 was {num(cal.get('slow_p50_us'))} µs "
            f"({num(cal.get('slow_factor'), 1)}× production's)."
        )
    lines = [
        "### Isolation: production with a faulty candidate",
        "",
        "Open loop at the isolation rate of each round: half the lower wrk req/s of "
        "`shadowproxy_off` and `shadowproxy_http` (the capacity of mirroring every request "
        "to a healthy HTTP candidate)"
        + (f", {num(_iso_rate(doc))} req/s (median over rounds)" if _iso_rate(doc) else "")
        + ", the same rate for "
        "every target; p99 in µs from the scheduled send time over the answered requests, "
        "median (min … max) over rounds; unanswered requests are errors. Inflation: p99 over "
        "that of the same proxy without a candidate in the same round." + slow,
        "",
        "| candidate | shadowproxy p99 | inflation | candidate outcomes | errors "
        "| nginx + mirror p99 | inflation | received | errors |",
        "|---|---|---|---|---|---|---|---|---|",
        "| none | "
        + " | ".join(_columns(doc, "shadowproxy", None))
        + " | "
        + " | ".join(_columns(doc, "nginx_mirror", None))
        + " |",
    ]
    for fault in [HEALTHY_ROW, *faults]:
        sp = _columns(doc, "shadowproxy", fault)
        ng = _columns(doc, "nginx_mirror", fault)
        lines.append(f"| `{fault}` | " + " | ".join(sp) + " | " + " | ".join(ng) + " |")
    lines += [
        "",
        f"- `{HEALTHY_ROW}`: the candidate of `{HEALTHY['shadowproxy']}` and "
        f"`{HEALTHY['nginx_mirror']}`, answering at once; its inflation is what mirroring "
        "itself costs production at this rate, the reference for the faults below",
        *(f"- `{fault}`: {iso['faults'][fault]}" for fault in faults),
    ]
    return lines
