"""How long the garbage collector held the process, as a histogram by generation.

CPython collects in whichever thread crosses an allocation threshold, and holds the
interpreter lock throughout: every collection stalls the event loop, and so production,
for as long as it takes. A young collection looks at recent objects only (well under a
millisecond); a full one walks every tracked object outside the set frozen at start (see
``Runtime.serve``), so a pile of live objects (a backlog of queued pair records, for one)
turns each into a stall of milliseconds. ``shadowproxy_gc_pause_seconds`` shows it.

The collector's callback only counts, in plain integers, like the hot-path counters of
:mod:`shadowproxy.observability.metrics`: it can run in the middle of any code, including
code holding a metric's lock, so it takes none. The figures are the process's, like
``shadowproxy_process_*``: one set per process, which every registry's
:class:`~shadowproxy.observability.metrics.GcPauseCollector` exports.
"""

from __future__ import annotations

import bisect
import gc
import threading
import time
from collections.abc import Callable
from typing import Any

GC_PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
GENERATIONS = 3


class GcPauses:
    """Counts of collection pauses per generation and bucket, fed by ``gc.callbacks``."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.buckets = [[0] * (len(GC_PAUSE_BUCKETS) + 1) for _ in range(GENERATIONS)]
        self.sums = [0.0] * GENERATIONS
        self._started = 0.0  # collections never overlap: they run under the interpreter lock
        self._installed = False
        self._install_lock = threading.Lock()

    def install(self) -> None:
        """Start counting (once per process, however often it is called)."""
        with self._install_lock:
            if not self._installed:
                gc.callbacks.append(self._callback)
                self._installed = True

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self.clock()
            return
        pause = self.clock() - self._started
        generation = info["generation"]
        self.buckets[generation][bisect.bisect_left(GC_PAUSE_BUCKETS, pause)] += 1
        self.sums[generation] += pause


PAUSES = GcPauses()
