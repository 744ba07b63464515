"""What a process tree costs, read from the OS (``psutil`` and ``/proc``).

Read by the sampler tasks every few hundred milliseconds, never per call. CPU time is
user plus system time of the process, of the children it has reaped, and of its live
descendants; ``/proc`` counts it in clock ticks, so figures move in steps of 10 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psutil


@dataclass(frozen=True)
class TreeSample:
    """One reading of a process and all its descendants."""

    rss_bytes: int = 0
    peak_rss_bytes: int = 0  # the largest VmHWM of any process in the tree
    threads: int = 0
    cpu_seconds: float = 0.0
    children: tuple[psutil.Process, ...] = field(default=(), repr=False)


def peak_rss(pid: int) -> int:
    """``VmHWM`` of ``pid`` in bytes: the most resident memory it ever had (0 if unknown)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cpu(times: Any) -> float:
    return float(
        times.user
        + times.system
        + getattr(times, "children_user", 0.0)
        + getattr(times, "children_system", 0.0)
    )


def sample_tree(
    process: psutil.Process,
    *,
    include_self: bool = True,
    children: tuple[psutil.Process, ...] | None = None,
) -> TreeSample:
    """Resources of ``process`` and its descendants; ``psutil.Error`` if it is gone.

    With ``include_self`` False only the descendants are summed (``children`` is the same).
    ``children`` reuses descendants found earlier: finding them walks every process of the
    machine (about half a millisecond), reading known ones costs microseconds.
    """
    rss = peak = threads = 0
    cpu = 0.0
    if include_self:
        with process.oneshot():
            rss = process.memory_info().rss
            threads = process.num_threads()
            cpu = _cpu(process.cpu_times())
        peak = peak_rss(process.pid)
    if children is None:
        children = tuple(process.children(recursive=True))
    for child in children:
        try:
            with child.oneshot():
                rss += child.memory_info().rss
                threads += child.num_threads()
                cpu += _cpu(child.cpu_times())
            peak = max(peak, peak_rss(child.pid))
        except psutil.Error:
            continue  # exited between the listing and the reading
    return TreeSample(rss, peak, threads, cpu, children)
