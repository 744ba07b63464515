"""CPU time of a process tree, read from ``/proc/<pid>/stat``.

The figure for a tree is utime+stime of the root and of every live descendant, plus
cutime+cstime (children already reaped). For nginx that is master + worker; for shadowproxy
the server process plus any executor it spawned.
"""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
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


def ticks_to_us(ticks: int) -> float:
    return ticks * 1_000_000 / CLK_TCK


class CpuMeter:
    """Brackets a measurement: ``start()`` then ``stop()`` gives CPU µs used by the tree."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._start: int | None = None

    def start(self) -> None:
        self._start = tree_ticks(self.root)

    def stop(self) -> float:
        if self._start is None:
            raise RuntimeError("CpuMeter.stop() before start()")
        used = tree_ticks(self.root) - self._start
        self._start = None
        return ticks_to_us(used)
