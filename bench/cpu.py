"""CPU time of a process tree, read from ``/proc/<pid>/stat``.

The figure for a tree is utime+stime of the root and of every live descendant, plus
cutime+cstime (children already reaped). For nginx that is master + worker; for shadowproxy
the server process plus any executor worker it spawned. The figure for the root process
alone leaves its children out, live or reaped: for shadowproxy with a local candidate, that
is what the proxy itself spends, apart from the model's workers. Resident memory is read
the same way, per process and per tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_PROC = Path("/proc")


def _fields(pid: int) -> list[str] | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) is in parentheses and may itself hold spaces or ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_ticks(pid: int, *, include_reaped: bool = True) -> int:
    """utime+stime (+cutime+cstime) of one process in clock ticks; 0 if it is gone."""
    f = _fields(pid)
    if f is None:
        return 0
    # After comm: state=0, ppid=1, ... utime=11, stime=12, cutime=13, cstime=14.
    ticks = int(f[11]) + int(f[12])
    if include_reaped:
        ticks += int(f[13]) + int(f[14])
    return ticks


def process_start(pid: int) -> int | None:
    """When ``pid`` started (ticks after boot): with the pid, it names one process for good."""
    f = _fields(pid)
    return int(f[19]) if f is not None else None


def parent_pid(pid: int) -> int | None:
    f = _fields(pid)
    return int(f[1]) if f is not None else None


def descendants(root: int) -> list[int]:
    """Live descendants of ``root`` (not including it), found by scanning /proc."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        ppid = parent_pid(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def tree_ticks(root: int) -> int:
    """CPU ticks used so far by ``root`` and its whole process tree."""
    return sum(process_ticks(pid) for pid in [root, *descendants(root)])


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (``/proc/<pid>/statm``); 0 if it is gone."""
    try:
        resident_pages = int((_PROC / str(pid) / "statm").read_text().split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    return resident_pages * PAGE_BYTES


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and every live descendant, summed: pages the processes
    share count once per process, so this is an upper bound of what the tree holds."""
    return sum(rss_bytes(pid) for pid in [root, *descendants(root)])


def ticks_to_us(ticks: int) -> float:
    return ticks * 1_000_000 / CLK_TCK


@dataclass(frozen=True)
class CpuUse:
    tree_us: float  # the root and every descendant (nginx workers, executor workers)
    own_us: float  # the root process alone: all its threads, none of its children


class CpuMeter:
    """Brackets a measurement: ``start()`` then ``stop()`` gives the CPU µs used meanwhile."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._start: tuple[int, int] | None = None

    def _read(self) -> tuple[int, int]:
        return tree_ticks(self.root), process_ticks(self.root, include_reaped=False)

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> CpuUse:
        if self._start is None:
            raise RuntimeError("CpuMeter.stop() before start()")
        (tree0, own0), (tree1, own1) = self._start, self._read()
        self._start = None
        return CpuUse(ticks_to_us(tree1 - tree0), ticks_to_us(own1 - own0))
