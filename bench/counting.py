"""Mirroring is counted, not assumed: what reached each candidate during a measurement.

A mirrored-throughput figure means nothing if the mirrors were silently dropped, and a
comparator figure nothing if no pair was compared. :class:`MirrorCount` brackets a run on a
mirroring target and turns the counters read before and after it into fractions of the
requests production served (pure functions below, so the arithmetic is tested alone).
"""

from __future__ import annotations

import math
import time
from typing import Any

from .targets import PRODUCTION_NAME, Target


def delta(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    """``after − before`` per key, keys whose difference is 0 left out."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def mirror_figures(
    requests: int,
    backend_received: int | None,
    counts: dict[tuple[str, str], float] | None,
    candidates: tuple[str, ...],
) -> dict[str, Any]:
    """How many of the requests served in a run reached each candidate.

    ``backend_received`` is what the candidate's own server counted (None where it cannot
    count); ``counts`` are shadowproxy's counters per (model, outcome), None for nginx.
    ``mirrored_fraction`` is the lowest over the candidates: every one of them answered at
    least that share of production's requests.
    """
    out: dict[str, Any] = {}
    if backend_received is not None:
        out["candidate_backend_received"] = backend_received
    if counts is None or not candidates:  # nginx: count what the candidate's server saw
        received = backend_received or 0
        out["mirrored_fraction"] = received / requests if requests else 0.0
        return out
    prod_total = sum(v for (m, _), v in counts.items() if m == PRODUCTION_NAME)
    served = prod_total or requests
    out["production_served"] = prod_total
    per: dict[str, dict[str, Any]] = {}
    for name in candidates:
        outcomes = {o: v for (m, o), v in counts.items() if m == name}
        per[name] = {
            "outcomes": outcomes,
            "mirrored_fraction": outcomes.get("ok", 0.0) / served if served else 0.0,
            "dropped_fraction": outcomes.get("dropped", 0.0) / served if served else 0.0,
        }
    out["candidates"] = per
    out["mirrored_fraction"] = min(c["mirrored_fraction"] for c in per.values())
    out["dropped_fraction"] = max(c["dropped_fraction"] for c in per.values())
    return out


def compare_figures(
    before: dict[str, Any], after: dict[str, Any], served: float, candidates: tuple[str, ...]
) -> dict[str, Any]:
    """What the comparator did between two of its states (see ``targets.compare_summary``).

    ``compared_fraction`` per candidate is the pairs it compared over the requests
    production ``served``; the overall figure is the lowest. ``thread_us_per_pair`` is the
    comparator thread's CPU time per record folded, as measured inside the proxy.
    """
    processed = after["processed"] - before["processed"]
    busy_s = after["busy_s"] - before["busy_s"]
    per = {}
    for name in candidates:  # one the comparator never saw has compared nothing
        n = after["compared"].get(name, 0) - before["compared"].get(name, 0)
        per[name] = {"compared": n, "compared_fraction": n / served if served else 0.0}
    return {
        "processed": processed,
        "dropped": after["dropped"] - before["dropped"],
        "thread_us_per_pair": busy_s * 1e6 / processed if processed else None,
        "candidates": per,
        "compared_fraction": min((c["compared_fraction"] for c in per.values()), default=0.0),
    }


def gc_figures(before: dict[str, Any], after: dict[str, Any], duration_s: float) -> dict[str, Any]:
    """Full garbage collections between two readings of ``gc_full_collections``.

    Each stalls the event loop throughout. ``longest_ms_at_most`` is the upper bound of
    the lowest histogram bucket that holds every new one (infinite past the last bound,
    0 when there was none).
    """
    n = after["count"] - before["count"]
    longest = 0.0
    if n:
        longest = math.inf
        for bound in sorted(after["buckets"]):
            if after["buckets"][bound] - before["buckets"].get(bound, 0.0) >= n:
                longest = bound
                break
    return {
        "collections": n,
        "per_s": n / duration_s if duration_s else 0.0,
        "pause_ms": (after["sum_s"] - before["sum_s"]) * 1000,
        "longest_ms_at_most": longest * 1000,
    }


class MirrorCount:
    """Brackets a run on a mirroring target: what reached its candidates meanwhile."""

    def __init__(self, target: Target) -> None:
        self.target = target
        received = target.candidate_received
        self.received_before = received() if received is not None else None
        self.counts_before = target.proxy_counts()
        self.compare_before = target.compare_state()

    def figures(self, requests: int, settle_s: float) -> dict[str, Any]:
        time.sleep(settle_s)  # let in-flight shadow requests finish
        target = self.target
        received = None
        if target.candidate_received is not None and self.received_before is not None:
            received = target.candidate_received() - self.received_before
        after = target.proxy_counts()
        counts = delta(after, self.counts_before or {}) if after is not None else None
        out = mirror_figures(requests, received, counts, target.candidates)
        if self.compare_before is not None:
            state = target.settled_compare_state()
            assert state is not None
            served = out.get("production_served") or requests
            out["compare"] = compare_figures(self.compare_before, state, served, target.candidates)
        return out
