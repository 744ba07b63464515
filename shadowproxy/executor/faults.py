"""TEST-ONLY fault injection for worker processes.

Nothing in production sets ``SHADOWPROXY_TEST_FAULTS``: the tests set it (JSON) in the
proxy's environment, the executor passes its environment on to the workers it spawns, and
only the worker reads it, from its own environment. It makes a worker misbehave the way a
bad candidate model would, so crash, hang, memory and child-process handling are tested
against real processes::

    {"crash_on_call": 3}       exit abruptly on the 3rd batch (warm-up runs do not count)
    {"hang_on_call": 2}        never answer the 2nd batch
    {"leak_mb_per_call": 50}   keep 50 MiB more resident memory after every batch
    {"spawn_children": 14}     start 14 child processes at load, like a stray n_jobs=14
    {"crash_at_start": true}   exit during load, before the worker reports ready
    {"hang_at_start": true}    never finish loading (never report ready)

Keys combine. An unset or empty variable means no fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

ENV_VAR = "SHADOWPROXY_TEST_FAULTS"
MiB = 1024 * 1024
CRASH_EXIT_CODE = 70


@dataclass(frozen=True)
class Faults:
    crash_on_call: int | None = None
    hang_on_call: int | None = None
    leak_mb_per_call: int = 0
    spawn_children: int = 0
    crash_at_start: bool = False
    hang_at_start: bool = False
    _leaked: list[bytes] = field(default_factory=list, compare=False, repr=False)
    _children: list[subprocess.Popen[bytes]] = field(
        default_factory=list, compare=False, repr=False
    )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Faults:
        raw = environ.get(ENV_VAR, "").strip()
        if not raw:
            return cls()
        values = json.loads(raw)
        if not isinstance(values, dict):
            raise ValueError(f"{ENV_VAR} must hold a JSON object")
        unknown = set(values) - _KEYS
        if unknown:
            raise ValueError(f"{ENV_VAR}: unknown keys {sorted(unknown)}")
        return cls(**values)

    def at_start(self) -> None:
        """Run once the model is loaded, before warm-up."""
        for _ in range(self.spawn_children):
            # ``sleep`` is the cheapest process to start; the executor must count and reap
            # these like any helper process a model would leave behind.
            self._children.append(subprocess.Popen(["sleep", "600"]))
        if self.crash_at_start:
            _crash("crash_at_start")
        if self.hang_at_start:
            _hang("hang_at_start")

    def before_call(self, call: int) -> None:
        """Run before the ``call``-th batch (counted from 1)."""
        if self.leak_mb_per_call:
            # Filled, not just reserved, so the pages are resident.
            self._leaked.append(b"\x01" * (self.leak_mb_per_call * MiB))
        if call == self.crash_on_call:
            _crash(f"crash_on_call={call}")
        if call == self.hang_on_call:
            _hang(f"hang_on_call={call}")


_KEYS = {
    "crash_on_call", "hang_on_call", "leak_mb_per_call", "spawn_children", "crash_at_start",
    "hang_at_start",
}  # fmt: skip


def _hang(what: str) -> None:
    print(f"test fault: {what}", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)


def _crash(what: str) -> None:
    print(f"test fault: {what}", file=sys.stderr, flush=True)
    os._exit(CRASH_EXIT_CODE)
