"""A core kept busy, for tests of what an idle-priority worker does without a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Bounded, so that a test killed before its cleanup leaves no spinner behind for long.
SPIN = "import time; end = time.monotonic() + 60\nwhile time.monotonic() < end: pass"


@contextmanager
def busy_core(cpu: int) -> Iterator[subprocess.Popen[bytes]]:
    """A process at normal priority spinning on ``cpu`` for the ``with`` block."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        os.sched_setaffinity(spinner.pid, {cpu})
        yield spinner
    finally:
        spinner.kill()
        spinner.wait()
