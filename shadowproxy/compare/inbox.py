"""A bounded hand-over from the event loop to one consumer thread, without locks on the way in.

``queue.Queue`` takes a lock and notifies a condition on every ``put`` and every ``get``:
about 2 µs per item across the two sides, paid for every pair record. Here the event loop
appends to a ``deque`` (atomic under the interpreter lock) and sets an ``Event`` only when
the consumer has said it is about to sleep; the consumer takes items in batches.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """Items from any number of producers to a single consumer; at most ``size`` waiting."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self._items: deque[T] = deque()
        self._sleeping = False
        self._wake = threading.Event()

    def put(self, item: T) -> bool:
        """Add ``item`` unless ``size`` items wait already; never blocks."""
        if len(self._items) >= self.size:
            return False
        self._items.append(item)
        if self._sleeping:
            self._wake.set()
        return True

    def put_always(self, item: T) -> None:
        """Add ``item`` even when full (a stop marker must always get through)."""
        self._items.append(item)
        self._wake.set()

    def take(self, most: int, timeout_s: float) -> list[T]:
        """Up to ``most`` items in arrival order, waiting up to ``timeout_s`` for the first.

        For the single consumer only. May return an empty list early (a wake-up meant for
        an item already taken).
        """
        items = self._items
        if not items:
            # Announce the sleep, then look again: an item appended in between either is
            # seen here or finds ``_sleeping`` set and wakes us.
            self._sleeping = True
            if not items:
                self._wake.wait(timeout_s)
            self._sleeping = False
            self._wake.clear()
        taken: list[T] = []
        while items and len(taken) < most:
            taken.append(items.popleft())
        return taken

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items
