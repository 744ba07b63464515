"""Threads beside the event loop: their priority, and handing the interpreter lock over."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shadowproxy.background import BACKGROUND_NICE, let_loop_run, run_in_background, set_idle_policy

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


def thread_nice(native_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, native_id)


def test_run_in_background_lowers_the_calling_thread_only() -> None:
    mine = thread_nice(threading.get_native_id())
    seen: dict[str, int | bool] = {}

    def body() -> None:
        seen["ok"] = run_in_background()
        seen["nice"] = thread_nice(threading.get_native_id())

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert seen == {"ok": True, "nice": BACKGROUND_NICE}
    # The process's other threads, this one included, keep their niceness.
    assert thread_nice(threading.get_native_id()) == mine < BACKGROUND_NICE


def test_set_idle_policy_moves_the_named_thread_only() -> None:
    seen: dict[str, int | bool] = {}

    def body() -> None:
        seen["ok"] = set_idle_policy(0)
        seen["policy"] = os.sched_getscheduler(0)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    assert seen == {"ok": True, "policy": os.SCHED_IDLE}
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
