"""What a worker costs and how it stands with the scheduler, read from ``/proc``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest

from shadowproxy.background import set_idle_policy
from shadowproxy.executor import accounting
from shadowproxy.executor.accounting import RunState, StarvationClock, run_state

SPIN = "while True: pass"
SLEEP = "import time; time.sleep(60)"


@contextmanager
def child(code: str, *, cpu: int, idle: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        os.sched_setaffinity(process.pid, {cpu})
        if idle:
            assert set_idle_policy(process.pid)
        yield process
    finally:
        process.kill()
        process.wait()


def watched(pid: int, seconds: float = 0.6) -> tuple[float, float]:
    """Read a clock on ``pid`` every 20 ms for ``seconds``; ``(waited, wanted)`` over the
    second half."""
    clock = StarvationClock(pid)
    started = time.perf_counter()
    while (now := time.perf_counter()) - started < seconds:
        clock.read(now)
        time.sleep(0.02)
    return clock.waited_since(started + seconds / 2, time.perf_counter())


def test_run_state_reads_state_cpu_and_wait() -> None:
    for _ in range(300_000):  # some CPU time of our own to read back
        pass
    state = run_state(os.getpid())
    assert state is not None and state.runnable  # reading it, we are running
    main = next(t for t in psutil.Process().threads() if t.id == os.getpid())
    assert state.run_s == pytest.approx(main.user_time + main.system_time, abs=0.05)
    assert state.wait_s >= 0.0
    with child(SLEEP, cpu=max(os.sched_getaffinity(0))) as sleeper:
        for _ in range(200):
            if psutil.Process(sleeper.pid).status() == psutil.STATUS_SLEEPING:
                break
            time.sleep(0.01)
        asleep = run_state(sleeper.pid)
        assert asleep is not None and not asleep.runnable
    assert run_state(sleeper.pid) is None  # reaped: gone


def test_a_process_asleep_or_alone_on_its_core_is_not_starved() -> None:
    cpu = max(os.sched_getaffinity(0))
    with child(SLEEP, cpu=cpu) as sleeper:
        assert watched(sleeper.pid) == (0.0, 0.0)  # it wanted no CPU at all
    with child(SPIN, cpu=cpu) as spinner:
        # Runnable at every reading, but on the CPU: CPU time between readings.
        waited, wanted = watched(spinner.pid)
    assert wanted > 0.2 and waited < 0.3 * wanted


def test_an_idle_priority_process_beside_a_busy_one_is_starved() -> None:
    """The kernel counts a wait only when it ends; the clock sees the one going on."""
    cpu = max(os.sched_getaffinity(0))
    with child(SPIN, cpu=cpu), child(SPIN, cpu=cpu, idle=True) as starved:
        time.sleep(0.1)  # the busy one has the core
        waited, wanted = watched(starved.pid)
        kernel = run_state(starved.pid)
    assert waited > 0.2 and waited > 0.8 * wanted
    assert kernel is not None and kernel.runnable


def test_a_wait_after_a_wake_up_counts_from_the_wake_up() -> None:
    """Asleep at one reading, woken by its owner, then kept off the CPU: the wait runs
    from the wake-up, less what the kernel counted as run or wait since."""
    cpu = max(os.sched_getaffinity(0))
    read_end, write_end = os.pipe()
    code = f"import os; os.read({read_end}, 1)\nwhile True: pass"
    with child(SPIN, cpu=cpu):
        waiter = subprocess.Popen([sys.executable, "-c", code], pass_fds=(read_end,))
        try:
            clock = StarvationClock(waiter.pid)
            for _ in range(500):  # until it sleeps on the pipe, started at full priority
                time.sleep(0.01)
                clock.read(time.perf_counter())
                if psutil.Process(waiter.pid).status() == psutil.STATUS_SLEEPING:
                    break
            os.sched_setaffinity(waiter.pid, {cpu})
            assert set_idle_policy(waiter.pid)
            asleep = run_state(waiter.pid)
            assert asleep is not None and not asleep.runnable
            clock.read(before := time.perf_counter())
            woken = time.perf_counter()
            os.write(write_end, b"x")
            clock.woken(woken)
            time.sleep(0.15)
            waited, wanted = clock.waited_since(before, time.perf_counter())
        finally:
            waiter.kill()
            waiter.wait()
            os.close(read_end)
            os.close(write_end)
    # The wake-up rule alone credits it: one reading after the one that found it asleep.
    assert waited > 0.1 and waited > 0.8 * wanted


def test_a_clock_with_nothing_to_read_measures_nothing() -> None:
    with child(SLEEP, cpu=max(os.sched_getaffinity(0))) as sleeper:
        clock = StarvationClock(sleeper.pid)
        assert clock.waited_since(0.0, time.perf_counter()) == (0.0, 0.0)  # one reading
    gone = StarvationClock(sleeper.pid)  # reaped: nothing to read
    assert gone.waited_since(0.0, time.perf_counter()) == (0.0, 0.0)
    assert gone.starved_s == 0.0 and gone.read_at == float("-inf")


def scripted(monkeypatch: pytest.MonkeyPatch, states: list[RunState]) -> StarvationClock:
    """A clock whose readings are ``states``, one per read, to check its arithmetic."""
    pending = iter(states)
    monkeypatch.setattr(accounting, "run_state", lambda pid: next(pending))
    return StarvationClock(4242)


def test_the_clock_adds_the_wait_going_on_to_the_kernels_and_takes_the_window_from_since(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = scripted(monkeypatch, [
        RunState(False, 1.0, 0.5),  # t=0: asleep; the kernel had counted 0.5 s of waits
        RunState(True, 1.0, 0.5),   # t=1: woken at 0.9, no CPU since: waiting 0.1 s
        RunState(True, 1.0, 0.5),   # t=2: still no CPU: 1.1 s in all
        RunState(True, 1.2, 1.6),   # t=3: it ran 0.2 s; the kernel counted its 1.1 s wait
        RunState(True, 1.2, 1.6),   # t=4: waiting again for 1 s, since the last reading
        RunState(False, 1.3, 1.7),  # t=5: asleep: every wait counted by the kernel
    ])  # fmt: skip
    stale = StarvationClock.STALE_RUN_S
    clock.read(0.0)
    clock.woken(0.9)
    starved = []
    for now in (1.0, 2.0, 3.0, 4.0, 5.0):
        clock.read(now)
        starved.append(clock.starved_s)
    assert starved == pytest.approx([
        0.1 - stale,  # the wake-up rule: from 0.9, less what the kernel counted (nothing)
        1.1 - stale,  # runnable at both readings with no CPU between: all of it
        1.1,  # the kernel's own figure takes over: the 1.1 s wait, in full
        2.1 - stale,  # and the new wait going on since the reading at 3
        2.1 - stale,  # asleep: the kernel counted 1.2 s, less than credited: never backwards
    ])  # fmt: skip
    # Over (2, 5]: from the reading at 2 (the last at or before since=2.5).
    waited, wanted = clock.waited_since(2.5, 5.0)
    assert waited == pytest.approx((2.1 - stale) - (1.1 - stale))
    assert wanted == pytest.approx(waited + (1.3 - 1.0))
    # A since older than every reading measures from the oldest.
    assert clock.waited_since(-10.0, 5.0)[0] == pytest.approx(2.1 - stale)


def test_a_process_that_ran_between_two_runnable_readings_is_not_credited_a_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = scripted(monkeypatch, [
        RunState(True, 1.0, 0.0),
        RunState(True, 1.5, 0.0),  # on the CPU all along: no wait
        RunState(True, 1.5, 0.0),  # then 10 ms without a CPU: within the tick's slack
    ])  # fmt: skip
    for now in (0.0, 0.5, 0.51):
        clock.read(now)
    assert clock.starved_s == pytest.approx(0.0, abs=1e-9) and clock.runnable
