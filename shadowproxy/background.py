"""Threads that work beside the event loop without delaying it.

The comparator and the pair-log writer are threads of the proxy process. At normal priority
on a core they share with the event loop, two things delay production:

- **The scheduler.** A woken event loop does not always preempt a busy thread of equal
  priority: it may wait for the rest of that thread's slice, up to milliseconds.
- **The interpreter lock.** A thread running Python holds it until it blocks or until the
  switch interval (5 ms) forces it to let go; the event loop, woken by a request, waits.

Measured on one shared core, a comparator at normal priority took production's
single-connection median from 51 to 164 µs and its p99 from 0.37 to 1.5 ms. So such a
thread runs under ``SCHED_IDLE`` (:func:`run_thread_idle`): Linux schedules threads, and
a woken event loop preempts an idle-class thread at once. And it lets go of the interpreter
lock after every small unit of work (:func:`let_loop_run`), so the event loop never waits
long for it. Under sustained saturation such a thread gets almost no CPU: its bounded queue
fills and what it sheds is counted, production first.
"""

from __future__ import annotations

import os
import time


def set_idle_policy(tid: int) -> bool:
    """Put thread or process ``tid`` (0: the calling thread) under ``SCHED_IDLE``.

    Linux applies scheduling policies per thread; a process's id names its main thread,
    and threads it starts later inherit the policy.

    Returns
    -------
    bool
        Whether the policy was set; False where the platform has no ``SCHED_IDLE``, refuses
        it, or the thread is gone (it then keeps its priority).
    """
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
    except OSError:
        return False
    return True


def run_thread_idle() -> bool:
    """Put the calling thread (not its process) under ``SCHED_IDLE``; whether it worked."""
    return set_idle_policy(0)


def let_loop_run() -> None:
    """Release the interpreter lock for a moment, so a waiting event loop takes it now.

    ``time.sleep(0)`` drops the lock around a system call: an event loop waiting for it is
    woken and, at normal priority against an idle-class thread, runs at once. It costs
    about a microsecond when nobody is waiting.
    """
    time.sleep(0)
