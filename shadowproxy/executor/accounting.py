"""What a process tree costs, read from the OS (``psutil`` and ``/proc``).

Read by the sampler tasks every few hundred milliseconds, never per call. CPU time is
user plus system time of the process, of the children it has reaped, and of its live
descendants; ``/proc`` counts it in clock ticks, so figures move in steps of 10 ms.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psutil

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


class RunState(NamedTuple):
    """One reading of how a process's main thread stands with the scheduler."""

    runnable: bool  # state R: on a CPU or waiting for one
    run_s: float  # time spent on a CPU
    wait_s: float  # time spent waiting for a CPU, up to its last turn on one


def run_state(pid: int) -> RunState | None:
    """Read ``pid``'s state from ``/proc/<pid>/stat`` and its CPU and run-queue times from
    ``/proc/<pid>/schedstat``; None if it is gone or unreadable.

    Where the kernel keeps no schedstat (``CONFIG_SCHED_INFO`` off), the CPU time comes from
    ``stat`` in clock ticks, and the wait is 0: see :class:`StarvationClock`.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        runnable = fields[0] == b"R"
        try:
            with open(f"/proc/{pid}/schedstat", "rb") as schedstat:
                run_ns, wait_ns, _ = schedstat.read().split()
        except FileNotFoundError:
            # After the command name: utime and stime at 12 and 13, in clock ticks.
            return RunState(runnable, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, 0.0)
        return RunState(runnable, int(run_ns) / 1e9, int(wait_ns) / 1e9)
    except (OSError, ValueError, IndexError):
        return None


class StarvationClock:
    """How long a process has waited for a CPU, from readings taken now and then.

    The kernel counts a wait for a CPU (``/proc/<pid>/schedstat``) only once the wait ends,
    when the process gets its turn: a process kept off the CPU without end, as one under
    ``SCHED_IDLE`` on a core something else keeps busy, shows no wait at all. So the clock
    adds the wait still going on: two readings that both find the process runnable, with no
    CPU time between them, mean it waited all that while (it cannot have slept, since going
    to sleep takes a CPU). When its turn comes, the kernel's figure takes that wait over.
    The owner can also say when it woke the process (:meth:`woken`, as the executor does
    when it sends a worker a batch): when the reading before found it asleep and this one
    finds it runnable, the time since that wake-up that the kernel counted neither as run
    nor as wait is the wait going on. (Both rules read the main thread: a model run on
    several threads can leave it asleep meanwhile, and then it is not counted.)

    A history of readings answers :meth:`waited_since`: how long the process waited for a
    CPU over a recent stretch of time, and how long it wanted one (waited or ran).
    """

    __slots__ = ("pid", "starved_s", "_last", "_ongoing", "_origin", "_woken_at", "_history")

    HISTORY_SPACING_S = 0.005
    HISTORY_LENGTH = 256  # over a second of readings, however often they come
    FRESH_S = 0.001  # a reading this recent is used as it is, not taken again
    # The kernel brings a running process's CPU time up to date at its scheduler ticks
    # (every 1 to 10 ms with HZ from 1000 to 100): so much of a wait going on may be run
    # time not yet counted, and only the rest is credited.
    STALE_RUN_S = 0.01

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.starved_s = 0.0  # since the first reading
        self._last: tuple[float, RunState] | None = None
        self._ongoing = 0.0  # of the wait going on, what the kernel has not counted yet
        self._origin = 0.0  # the kernel's wait figure at the first reading
        self._woken_at = -math.inf
        # (time, starved_s, run_s) of readings at least HISTORY_SPACING_S apart
        self._history: deque[tuple[float, float, float]] = deque(maxlen=self.HISTORY_LENGTH)

    @property
    def read_at(self) -> float:
        """When the last reading was taken (``-inf`` before the first)."""
        return self._last[0] if self._last is not None else -math.inf

    @property
    def runnable(self) -> bool:
        """Whether the last reading found the process on a CPU or waiting for one."""
        return self._last is not None and self._last[1].runnable

    def read(self, now: float) -> None:
        state = run_state(self.pid)
        if state is None:
            return
        if self._last is None:
            self._origin = state.wait_s
        else:
            at, before = self._last
            if not state.runnable:
                self._ongoing = 0.0  # asleep: the kernel has counted every wait
            elif before.runnable and state.run_s == before.run_s:
                self._ongoing += max(0.0, now - at)
            elif not before.runnable and self._woken_at >= at:
                # Asleep until woken at that time; since then it ran and waited what the
                # kernel counted, and waits still for the rest.
                counted = (state.run_s - before.run_s) + (state.wait_s - before.wait_s)
                self._ongoing = max(0.0, now - self._woken_at - counted)
            else:
                self._ongoing = 0.0  # it ran: the kernel counted the wait that ended
        self._last = (now, state)
        # Never backwards: a wait the kernel counts can be shorter than the one credited
        # while it went on only by the reading's own jitter.
        ongoing = max(0.0, self._ongoing - self.STALE_RUN_S)
        self.starved_s = max(self.starved_s, state.wait_s - self._origin + ongoing)
        if not self._history or now - self._history[-1][0] >= self.HISTORY_SPACING_S:
            self._history.append((now, self.starved_s, state.run_s))

    def woken(self, at: float) -> None:
        """The owner woke the process at ``at`` (it wrote to what the process waits on)."""
        self._woken_at = at

    def waited_since(self, since: float, now: float) -> tuple[float, float]:
        """``(waited, wanted)``: the seconds the process waited for a CPU, and waited or
        ran, from the last reading at or before ``since`` (the oldest kept, if none) to
        ``now``.

        Reads ``/proc`` again unless the last reading is under ``FRESH_S`` old. The stretch
        can begin before ``since``, by up to the time between two readings.
        """
        if now - self.read_at >= self.FRESH_S:
            self.read(now)
        if self._last is None:
            return 0.0, 0.0
        # From the newest back: ``since`` is at most a deadline ago, a few readings.
        start = self._history[0]
        for reading in reversed(self._history):
            if reading[0] <= since:
                start = reading
                break
        _, start_starved, start_run = start
        waited = max(0.0, self.starved_s - start_starved)
        return waited, waited + max(0.0, self._last[1].run_s - start_run)


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
