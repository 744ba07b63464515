"""(f') Memory growth: a fresh shadowproxy's resident memory after few and after many requests.

Whatever a proxy keeps per request (a cache that is never trimmed, a per-request-id table, a
queue that only grows) shows as memory that keeps growing with the requests served. A fresh
process of the target is started, brought to ``small`` requests (sequential, so the count is
exact), then to ``large`` (wrk, closed loop, in runs sized from the rate it sustains), and
its resident memory and its process tree's are read at each point. The growth between the
two points is the figure: after ``small`` requests the caches, pools and lazy imports of a
warmed-up process are in place.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .backends import Backends
from .load import LatencyProbe, LoadError, run_wrk
from .model import BuiltModel
from .targets import Target, start_target

# The first of these the run measures is measured for memory. The HTTP candidate first: the
# fastest mirroring configuration, so a million requests take about a minute, not three.
MEMORY_TARGETS = ("shadowproxy_http", "shadowproxy_both")
MAX_WRK_RUN_S = 60
Log = Callable[[str], None]


def checkpoint(target: Target, settle_s: float) -> dict[str, Any]:
    """Requests served so far and resident memory, once in-flight work has settled."""
    time.sleep(settle_s)  # shadow requests still in flight
    state = target.settled_compare_state()
    rss = target.rss()
    if rss is None:
        raise LoadError(f"{target.name}: no process to read memory from")
    point: dict[str, Any] = {"requests": target.production_served(), **rss}
    if state is not None:
        point["comparator"] = {k: state[k] for k in ("processed", "dropped")}
    return point


def send_sequential(target: Target, count: int) -> None:
    """Exactly ``count`` requests, one after another on one connection."""
    if count <= 0:
        return
    probe = LatencyProbe("127.0.0.1", target.port)
    try:
        probe.send(count, keep=False)
    finally:
        probe.close()


def run_duration_s(remaining: float, rate: float | None) -> int:
    """Seconds of wrk to serve about ``remaining`` requests at ``rate`` (1 s to learn it)."""
    if rate is None or rate <= 0:
        return 1
    return max(1, min(MAX_WRK_RUN_S, math.ceil(remaining / rate)))


def drive_to(
    target: Target, total: int, script: Path, *, connections: int, time_limit_s: float
) -> None:
    """wrk runs until the target has served at least ``total`` production requests."""
    deadline = time.monotonic() + time_limit_s
    served, rate = target.production_served(), None
    while served < total:
        if time.monotonic() > deadline:
            raise LoadError(
                f"{target.name}: {served:,.0f} of {total:,} requests after {time_limit_s:.0f}s"
            )
        seconds = run_duration_s(total - served, rate)
        rate = run_wrk(target.url, script, duration_s=seconds, connections=connections).rps
        served = target.production_served()


def measure(
    name: str,
    be: Backends,
    workdir: Path,
    model: BuiltModel | None,
    requests: tuple[int, int],
    *,
    script: Path,
    connections: int,
    settle_s: float,
    log: Log,
) -> dict[str, Any]:
    """Start a fresh ``name``, drive it to ``requests[0]`` then ``requests[1]`` requests."""
    small, large = requests
    with contextlib.ExitStack() as stack:
        target = start_target(stack, name, be, workdir, model)
        points = {"start": checkpoint(target, settle_s)}
        send_sequential(target, small - int(points["start"]["requests"]))
        points["small"] = checkpoint(target, settle_s)
        log(
            f"memory: {name} after {points['small']['requests']:,.0f} requests: "
            f"{points['small']['rss_mb']:.1f} MB"
        )
        # Generous: even a slow target gets there at a few thousand requests per second.
        drive_to(target, large, script, connections=connections, time_limit_s=60 + large / 2000)
        points["large"] = checkpoint(target, settle_s)
        log(
            f"memory: {name} after {points['large']['requests']:,.0f} requests: "
            f"{points['large']['rss_mb']:.1f} MB"
        )
    growth = {
        "round": 0,
        "rss_growth_mb": points["large"]["rss_mb"] - points["small"]["rss_mb"],
        "tree_rss_growth_mb": points["large"]["tree_rss_mb"] - points["small"]["tree_rss_mb"],
    }
    return {
        "error": None,
        "target": name,
        "requests": [small, large],
        "checkpoints": points,
        "rounds": [growth],
    }
