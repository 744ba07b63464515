"""Background threads beside the event loop: idle scheduling and handing over the lock."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shadowproxy.background import let_loop_run, run_thread_idle, set_idle_policy

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling")


@pytest.fixture
def long_switch_interval() -> Iterator[None]:
    # Ten seconds: the interpreter would not force a thread to let go of the lock within
    # any test's life, so only a voluntary release can hand it over.
    before = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_run_thread_idle_moves_the_calling_thread_only() -> None:
    seen: dict[str, int | bool] = {}

    def body() -> None:
        seen["ok"] = run_thread_idle()
        seen["policy"] = os.sched_getscheduler(0)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert seen == {"ok": True, "policy": os.SCHED_IDLE}
    # The process's other threads, this one included, keep their policy.
    assert os.sched_getscheduler(0) != os.SCHED_IDLE


def _busy_until(stop: threading.Event, pause: Callable[[], None], limit_s: float) -> bool:
    """Spin in Python until ``stop`` is set (True) or ``limit_s`` passes (False)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if stop.is_set():
            return True
        pause()
    return False


@pytest.mark.usefixtures("long_switch_interval")
@pytest.mark.parametrize(("pause", "handed_over"), [(let_loop_run, True), (lambda: None, False)])
def test_let_loop_run_hands_the_lock_to_a_waiting_thread(
    pause: Callable[[], None], handed_over: bool
) -> None:
    # The spinning thread holds the interpreter lock. This thread can set the event only
    # once it gets the lock back: at once if the spinner lets go between steps, only when
    # the spinner gives up otherwise (the second case shows the test can tell them apart).
    stop = threading.Event()
    result: list[bool] = []
    spinner = threading.Thread(target=lambda: result.append(_busy_until(stop, pause, 1.5)))
    spinner.start()
    stop.set()
    spinner.join(20)
    assert result == [handed_over]


def test_a_thread_that_does_not_exist_is_reported() -> None:
    # Beyond the kernel's largest id, so never a live task of someone else's.
    beyond = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    assert set_idle_policy(beyond) is False
