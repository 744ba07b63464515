"""Waiting in tests for background work (mirrors, records, drains) without fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it holds; fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def settle(value: Callable[[], object], quiet_s: float = 0.15, timeout: float = 5.0) -> None:
    """Wait until ``value()`` has not changed for ``quiet_s`` (background work is done)."""
    deadline = time.monotonic() + timeout
    last = value()
    stable_since = time.monotonic()
    while time.monotonic() - stable_since < quiet_s:
        if time.monotonic() > deadline:
            raise AssertionError(f"value kept changing for {timeout} s: {value()!r}")
        await asyncio.sleep(0.02)
        now = value()
        if now != last:
            last, stable_since = now, time.monotonic()
