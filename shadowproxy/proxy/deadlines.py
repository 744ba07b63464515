"""Cheap deadlines for the hot path.

Scheduling and cancelling a timer per request costs more than the rest of a small
request's bookkeeping. Exchanges that share one timeout expire in arrival order, so a
FIFO of ``(deadline, item)`` served by a single timer is enough.

The timer ticks every ``TICK_S`` while entries are queued, dropping finished items from
the head. Waiting for the oldest deadline instead would keep every finished exchange of
the last ``timeout`` alive, and the garbage collector would keep walking them.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol


class Expirable(Protocol):
    done: bool

    def expire(self) -> None:
        """Called once, at or after the deadline, if the item is not done by then."""


TICK_S = 0.005


class DeadlineQueue:
    """Deadlines that all share one timeout, served by a single timer."""

    __slots__ = ("_loop", "timeout_s", "_entries", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self.timeout_s = timeout_s
        self._entries: collections.deque[tuple[float, Expirable]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, item: Expirable) -> None:
        deadline = self._loop.time() + self.timeout_s
        self._entries.append((deadline, item))
        if self._timer is None:
            self._timer = self._loop.call_at(min(deadline, self._loop.time() + TICK_S), self._fire)

    def __len__(self) -> int:
        return len(self._entries)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        entries = self._entries
        while entries:
            deadline, item = entries[0]
            if item.done:
                entries.popleft()
            elif deadline <= now:
                entries.popleft()
                item.expire()
            else:
                self._timer = self._loop.call_at(min(deadline, now + TICK_S), self._fire)
                return

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._entries.clear()
