"""Children started by vfork and exec, watched from the event loop (exit code, stderr)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import pytest

from shadowproxy.executor.spawn import ChildProcess, pin_to_cpus

pytestmark = pytest.mark.both_loops


async def test_exit_code_stderr_and_session() -> None:
    code = "import os, sys; sys.stderr.write(f'bye from {os.getpid()}\\n'); sys.exit(3)"
    child = await ChildProcess.start([sys.executable, "-c", code], env=os.environ)
    assert os.getsid(child.pid) == child.pid  # leads its own session (killpg reaches all)
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
