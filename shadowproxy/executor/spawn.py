"""Starting worker processes without stalling the event loop.

An event loop's own ``subprocess_exec`` (uvloop's, through libuv) starts a child with
``fork()``: the kernel copies the page tables of the whole proxy, a few milliseconds for a
proxy of a couple of hundred megabytes, and the event loop stands still meanwhile. A
candidate whose worker crash-loops pays that at every respawn, and production's tail with
it. :class:`subprocess.Popen` starts children with ``vfork()`` and ``exec`` (nothing is
copied; the parent waits only for the ``exec``), so it is used here, and the child is then
watched without a thread: its exit through a pidfd in the event loop, its stderr through a
pipe transport.

A worker leads a process group of its own, so that one signal reaches it and every helper
it started, but it stays in the proxy's session. A new session would also be a new
scheduling autogroup on kernels that use them (``/proc/sys/kernel/sched_autogroup_enabled``,
for processes outside a CPU cgroup): the kernel first shares the CPU between autogroups as
equals and only then applies ``SCHED_IDLE`` and nice inside each one, so a worker in its own
session would take half of a busy core from production, priority or not.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import Mapping, Sequence


class ChildProcess:
    """A started child: ``pid``, ``returncode``, ``await wait()`` and its ``stderr`` stream.

    ``returncode`` follows :mod:`asyncio`'s convention: the exit status, or ``-N`` when
    signal ``N`` ended it.
    """

    def __init__(self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._popen = popen
        self._loop = loop
        self.pid = popen.pid
        self.returncode: int | None = None
        self.stderr = asyncio.StreamReader(loop=loop)
        self._exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(self.pid)
        loop.add_reader(self._pidfd, self._on_exit)

    @classmethod
    async def start(
        cls, args: Sequence[str], *, env: Mapping[str, str], pass_fds: Sequence[int] = ()
    ) -> ChildProcess:
        """Start ``args`` in a new process group, stdin and stdout on /dev/null, stderr piped.

        Raises
        ------
        OSError
            The program could not be started.
        """
        loop = asyncio.get_running_loop()
        popen = subprocess.Popen(  # our own interpreter and module; no shell
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
            env=dict(env),
            process_group=0,  # a group of its own, in our session: see the docstring
        )
        try:
            child = cls(popen, loop)
        except BaseException:
            popen.kill()
            popen.wait()
            raise
        assert popen.stderr is not None
        reader = child.stderr
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), popen.stderr)
        return child

    def _on_exit(self) -> None:
        # The pidfd turns readable once the child has exited; poll() reaps it and sets the
        # Popen's own returncode, so nothing else ever waits for it again.
        code = self._popen.poll()
        if code is None:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = code
        if not self._exited.done():
            self._exited.set_result(code)

    async def wait(self) -> int:
        """The return code, once the child has exited (several callers may wait)."""
        return await asyncio.shield(self._exited)


def pin_to_cpus(pid: int, cpus: Sequence[int]) -> str | None:
    """Restrict process ``pid`` (and the threads it starts later) to ``cpus``.

    Returns what is wrong, or None. The kernel quietly drops CPUs outside the process's
    cpuset from the set it is given, so the set is read back: any CPU missing from it is
    one this machine or container does not offer (the proxy's own pinning does not matter:
    workers may be placed on other cores of the cpuset).
    """
    wanted = set(cpus)
    try:
        os.sched_setaffinity(pid, wanted)
        got = os.sched_getaffinity(pid)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return None  # already gone: its exit is reported as any other
        return f"executor.cpus {sorted(wanted)}: not available here ({exc.strerror})"
    if got != wanted:
        return f"executor.cpus {sorted(wanted)}: CPU(s) {sorted(wanted - got)} not available here"
    return None
