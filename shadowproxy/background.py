"""Threads that work beside the event loop without delaying it.

The comparator, the pair-log writer and the periodic snapshot-and-gates job are threads of
the proxy process. At normal priority on a core they share with the event loop, a woken
event loop does not always preempt them: it may wait out the rest of their time slice,
milliseconds. Measured on one shared core, a comparator at normal priority took
production's single-connection median from 51 to 164 µs and its p99 from 0.37 to 1.5 ms;
the gate evaluation (bootstrap intervals, about 0.3 s of CPU on a full sample) put
milliseconds into production's p99.9 at each run.

So such a thread lowers itself to the lowest priority of the normal class, nice 19
(:func:`run_in_background`). Linux applies niceness per thread, so the event loop keeps its
own. With nice 19 the scheduler preempts the thread for a woken event loop at once, yet
still gives it a small share of a saturated core: its work slows down but never stops,
and a draining proxy still writes its last snapshot. (``SCHED_IDLE``, which local-model
workers use, protects production as well, but a thread under it can starve outright on a
busy node, and an unprivileged thread cannot leave it again.) The thread also lets go of the
interpreter lock between small units of work (:func:`let_loop_run`), so a woken event loop
never waits long for the lock either.
"""

from __future__ import annotations

import os
import threading
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


BACKGROUND_NICE = 19


def run_in_background() -> bool:
    """Lower the calling thread (not its process) to nice :data:`BACKGROUND_NICE`.

    Returns
    -------
    bool
        Whether the thread now runs at that niceness; False where the platform cannot
        set a thread's priority (the thread then keeps the process's).
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (OSError, AttributeError):
        return False
    return True


def let_loop_run() -> None:
    """Release the interpreter lock for a moment, so a waiting event loop takes it now.

    ``time.sleep(0)`` drops the lock around a system call: an event loop waiting for it is
    woken and, at normal priority against a nice-19 thread, runs at once. It costs
    about a microsecond when nobody is waiting.
    """
    time.sleep(0)
