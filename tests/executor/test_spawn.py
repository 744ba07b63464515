"""Children started by vfork and exec, watched from the event loop (exit code, stderr)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import psutil
import pytest

from shadowproxy.background import set_idle_policy
from shadowproxy.executor.spawn import ChildProcess, pin_to_cpus

pytestmark = pytest.mark.both_loops


def autogroup(pid: int) -> str | None:
    """The scheduling autogroup of ``pid`` (``/autogroup-N``), None where there is none.

    The file is absent on kernels built without autogroups, and reads empty for a process
    inside a CPU cgroup (as in most containers), where the cgroup shares the CPU instead.
    """
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            fields = f.read().split()
    except OSError:
        return None
    return fields[0] if fields else None


async def test_exit_code_stderr_and_process_group() -> None:
    # The child holds on until its group, session and autogroup are read: a child that
    # has already exited is a zombie, whose /proc entries read empty.
    hold_read, hold_write = os.pipe()
    code = (
        "import os, sys; os.read(int(sys.argv[1]), 1); "
        "sys.stderr.write(f'bye from {os.getpid()}\\n'); sys.exit(3)"
    )
    try:
        child = await ChildProcess.start(
            [sys.executable, "-c", code, str(hold_read)], env=os.environ, pass_fds=(hold_read,)
        )
        assert os.getpgid(child.pid) == child.pid  # leads its own group: killpg reaches all
        # ... in our session, so in our scheduling autogroup: see the next test.
        assert os.getsid(child.pid) == os.getsid(0)
        assert autogroup(child.pid) == autogroup(os.getpid())
    finally:
        os.close(hold_read)
        os.close(hold_write)  # end of file: the child goes on and exits
    assert await asyncio.wait_for(child.wait(), 30) == 3
    assert child.returncode == 3
    assert await child.stderr.read() == f"bye from {child.pid}\n".encode()
    assert await child.wait() == 3  # waiting again answers at once


async def test_a_signal_gives_a_negative_code_and_fds_are_passed() -> None:
    parent_end, child_end = socket.socketpair()
    code = (
        "import socket, sys, time; s = socket.socket(fileno=int(sys.argv[1])); "
        "s.sendall(b'up'); time.sleep(60)"
    )
    child = await ChildProcess.start(
        [sys.executable, "-c", code, str(child_end.fileno())],
        env=os.environ,
        pass_fds=(child_end.fileno(),),
    )
    child_end.close()
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(parent_end, 2), 30) == b"up"
    assert child.returncode is None
    os.kill(child.pid, signal.SIGKILL)
    assert await asyncio.wait_for(child.wait(), 30) == -signal.SIGKILL
    parent_end.close()


async def test_a_program_that_cannot_start_raises() -> None:
    with pytest.raises(OSError):
        await ChildProcess.start(["/nonexistent/interpreter"], env=os.environ)


async def test_pinning_reads_back_what_the_kernel_kept() -> None:
    child = await ChildProcess.start(
        [sys.executable, "-c", "import time; time.sleep(60)"], env=os.environ
    )
    try:
        cpu = max(os.sched_getaffinity(0))
        assert pin_to_cpus(child.pid, [cpu]) is None
        assert os.sched_getaffinity(child.pid) == {cpu}
        beyond = os.cpu_count() or 1
        problem = pin_to_cpus(child.pid, [cpu, beyond + 1000])
        # The kernel keeps the CPU it has and drops the other without an error: the
        # read-back names it.
        assert (
            problem
            == f"executor.cpus {[cpu, beyond + 1000]}: CPU(s) [{beyond + 1000}] not available here"
        )
        assert pin_to_cpus(child.pid, [beyond + 1000]) == (
            f"executor.cpus [{beyond + 1000}]: not available here (Invalid argument)"
        )
    finally:
        os.kill(child.pid, signal.SIGKILL)
        await child.wait()
    assert pin_to_cpus(child.pid, [cpu]) is None  # gone: nothing to pin, no error


SPIN = "import time; end = time.monotonic() + {s}\nwhile time.monotonic() < end: pass"


async def test_an_idle_priority_child_yields_a_shared_core() -> None:
    """What the executor relies on: a SCHED_IDLE worker takes next to no CPU from a busy
    process on its core. A worker in a session (an autogroup) of its own would take half."""
    cpu = max(os.sched_getaffinity(0))
    spin = [sys.executable, "-c", SPIN.format(s=1.5)]
    busy = await ChildProcess.start(spin, env=os.environ)
    idle = await ChildProcess.start(spin, env=os.environ)
    try:
        for child in (busy, idle):
            assert pin_to_cpus(child.pid, [cpu]) is None
        assert set_idle_policy(idle.pid)
        await asyncio.sleep(1.0)
        busy_cpu, idle_cpu = (sum(psutil.Process(c.pid).cpu_times()[:2]) for c in (busy, idle))
    finally:
        for child in (busy, idle):
            os.kill(child.pid, signal.SIGKILL)
            await asyncio.wait_for(child.wait(), 30)
    assert busy_cpu > 0.3
    assert idle_cpu < 0.1 * busy_cpu, (busy_cpu, idle_cpu)
