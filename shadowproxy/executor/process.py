"""The process executor: every worker is a fresh interpreter the proxy can measure and kill.

A candidate model must never hurt the production path, so it runs in worker processes
(``python -m shadowproxy.executor.worker``) spawned, never forked, from the event loop. The
model is checked again and built inside the worker; only its configuration crosses over.
Batches travel as raw tensor bytes over a socket pair (:mod:`.framing`), one batch per
worker at a time, to the free worker idle the longest.

Supervision, all on the event loop without blocking it:

* each worker slot has a task that waits for its process to exit; an exit the proxy did
  not ask for is a crash: the batch in flight fails (outcome ``error``), the crash is
  counted and the slot respawns after ``restart_backoff_s``, doubled per consecutive crash
  (at most a minute); ``max_restarts`` crashes within ``restart_window_s`` disable a
  candidate's executor. Production's is never disabled: disabled, it would leave the replica
  unready for good while its liveness stays green, so it keeps respawning with the backoff;
* a batch still unanswered ``max(1 s, 10 × timeout)`` past its deadline gets its worker
  killed (counted as a crash, reason "hung"); its requests have already missed their
  deadline. Production's clients are waiting: its workers get ``max(1 s, 2 × timeout)``.
  Time the worker spent runnable without a CPU (a :class:`.accounting.StarvationClock`
  over its ``/proc/<pid>/stat`` and ``schedstat``) is added to that grace: under
  ``SCHED_IDLE`` a worker on a core production keeps busy gets next to no CPU, and a
  starved worker is not a hung one. Its requests past their deadline are dropped as
  ``starved`` (counted, and not held against the model: see ``BatchingExecutor._expire``),
  and its breaker sheds the rest until production leaves it CPU again;
* the sampler reads every worker's process tree every 0.25 s for the resource figures and
  kills a worker whose tree is resident above ``memory_mb`` (a crash, reason "memory").

Workers lead their own process group, so killing one also reaches the helper processes a
model started; the last sampled list of descendants catches those that left the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import shadowproxy
from shadowproxy.background import set_idle_policy
from shadowproxy.config.model import Executor, ModelFile
from shadowproxy.errors import ModelLoadError
from shadowproxy.executor import framing
from shadowproxy.executor.accounting import StarvationClock, TreeSample, sample_tree
from shadowproxy.executor.api import ResourceFigures
from shadowproxy.executor.core import TIMER_SLACK_S, Batch, BatchingExecutor, Request
from shadowproxy.executor.framing import FrameAssembler, FrameError, Kind, Message
from shadowproxy.executor.restarts import CrashPolicy
from shadowproxy.executor.spawn import ChildProcess, pin_to_cpus
from shadowproxy.executor.worker import MODULE, WorkerConfig
from shadowproxy.models.session import thread_environment
from shadowproxy.protocols import ProtocolSpec

log = logging.getLogger("shadowproxy.executor")

MiB = 1024 * 1024
SAMPLE_INTERVAL_S = 0.25
SEND_READING_AGE_S = 0.02  # a worker's scheduler reading is refreshed at a send if older
# Descendants are looked for on every this-many samples (every 2 s): the search walks all of
# /proc and would hold the event loop for about half a millisecond each time.
CHILD_SCAN_EVERY = 8
HANG_GRACE_MIN_S = 1.0
HANG_GRACE_FACTOR = 10.0
PRODUCTION_HANG_GRACE_FACTOR = 2.0
EXIT_DRAIN_S = 1.0  # after an exit, time for the last frames and stderr lines to arrive
STDERR_TAIL_LINES = 20
STDERR_LOG_LINES = 200  # per worker; later lines are only kept in the tail
STDERR_MAX_LINE = 2000
RECEIVE_SCRATCH = 256 * 1024


class SpawnFailed(Exception):
    """A worker did not become ready; the message says why (exit status, stderr, error)."""


class _Worker:
    """One worker process and its channel."""

    def __init__(self, slot: int, proc: ChildProcess, loop: asyncio.AbstractEventLoop) -> None:
        self.slot = slot
        self.proc = proc
        self.pid = proc.pid
        self.ps: psutil.Process | None = None
        with contextlib.suppress(psutil.Error):
            self.ps = psutil.Process(proc.pid)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.channel_closed: asyncio.Future[None] = loop.create_future()
        self.alive = False  # ready and not known to be dead
        self.ever_ready = False
        self.batch: Batch | None = None
        self.idle_since = 0.0
        self.kill_reason: str | None = None
        self.retiring = False  # asked to stop: its exit is not a crash
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.stderr_lines = 0
        self.stderr_task: asyncio.Task[None] | None = None
        self.sample = TreeSample()
        # Time it waited for a CPU: in all, when the batch in flight was sent, and when that
        # batch is judged hung (see _on_hang).
        self.starvation = StarvationClock(proc.pid)
        self.starved_at_send = 0.0
        self.hang_due = 0.0
        self.started_idle = False  # under SCHED_IDLE before its own code ran (its report)

    @property
    def exited(self) -> bool:
        return self.proc.returncode is not None

    def exit_reason(self) -> str:
        code = self.proc.returncode
        if self.kill_reason is not None:
            reason = self.kill_reason
        elif code is None:
            reason = "still running"
        elif code < 0:
            try:
                reason = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                reason = f"killed by signal {-code}"
        else:
            reason = f"exited with code {code}"
        if self.stderr_tail:
            reason += f"; stderr: {' | '.join(list(self.stderr_tail)[-3:])}"
        return reason


class _Channel(asyncio.BufferedProtocol):
    """Receives frames from one worker into buffers the decoded arrays then view."""

    def __init__(self, executor: ProcessExecutor, worker: _Worker, max_frame: int) -> None:
        self.executor = executor
        self.worker = worker
        self.assembler = FrameAssembler(max_frame)
        self.scratch = memoryview(bytearray(RECEIVE_SCRATCH))
        self.direct = False

    def get_buffer(self, sizehint: int) -> memoryview:
        direct = self.assembler.receive_buffer()
        self.direct = direct is not None
        return direct if direct is not None else self.scratch

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self.direct:
                bodies = self.assembler.received(nbytes)
            else:
                bodies = self.assembler.feed(self.scratch[:nbytes])
            for body in bodies:
                self.executor._on_message(self.worker, framing.decode(body))
        except (FrameError, ValueError) as exc:
            self.executor._kill(self.worker, f"protocol error: {exc}")

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.executor._on_channel_lost(self.worker)


class ProcessExecutor(BatchingExecutor[_Worker]):
    """Runs a model in isolated worker processes; see the module documentation."""

    def __init__(
        self,
        name: str,
        model: ModelFile,
        settings: Executor,
        *,
        where: str = "model",
        protocol: ProtocolSpec | None = None,
        version: str = "",
        serves_production: bool = False,
    ) -> None:
        super().__init__(name, model, settings, where=where)
        # With a protocol, workers decode request bodies and encode answers themselves.
        self.protocol = protocol
        self.version = version
        self.serves_production = serves_production
        self._hang_grace_factor = (
            PRODUCTION_HANG_GRACE_FACTOR if serves_production else HANG_GRACE_FACTOR
        )
        self._slots: list[_Worker | None] = [None] * settings.workers
        self._all: set[_Worker] = set()  # every spawned worker not yet reaped
        self._slot_tasks: list[asyncio.Task[None]] = []
        self._sampler: asyncio.Task[None] | None = None
        self._policy = CrashPolicy(
            settings.max_restarts, settings.restart_window_s, settings.restart_backoff_s
        )
        self.restarts = 0
        self.last_crash: str | None = None
        self._retired_cpu = 0.0  # CPU of reaped workers, as last sampled
        self._retired_wait = 0.0  # and the time they waited for a CPU
        self._peak_rss = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self._check_and_load()
        loop = asyncio.get_running_loop()
        spawned = await asyncio.gather(
            *(self._spawn(slot) for slot in range(self.settings.workers)),
            return_exceptions=True,
        )
        failures = [r for r in spawned if isinstance(r, BaseException)]
        if failures or self._state != "starting":
            await self._stop_workers(list(self._all), timeout_s=0.0)
            self._closed_while_starting()
            self._state = "closed"
            if not isinstance(failures[0], SpawnFailed):
                raise failures[0]
            # Each worker that died or gave up while loading is a crash, as after a respawn.
            for failure in failures:
                self._policy.crashed(time.monotonic())
                self.last_crash = str(failure)
            raise ModelLoadError(
                f"{self.where}: {self.spec.path}: worker failed to start: {failures[0]}"
            ) from failures[0]
        workers = [w for w in spawned if isinstance(w, _Worker)]
        for worker in workers:
            self._slots[worker.slot] = worker
        self._slot_tasks = [
            loop.create_task(self._keep_slot(w.slot, w), name=f"executor-{self.name}-{w.slot}")
            for w in workers
        ]
        self._sampler = loop.create_task(self._sample_loop(), name=f"executor-{self.name}-sample")
        self._running()

    async def close(self, timeout_s: float = 2.0) -> None:
        """Stop accepting, fail every pending request as ``dropped``, stop the workers.

        Workers get their socket closed and SIGTERM, then SIGKILL after ``timeout_s``.
        """
        if self._state in ("closing", "closed"):
            return
        self._state = "closing"
        self._stop_timers()
        message = f"executor {self.name!r} closed"
        self._fail_queued(message, "dropped")
        for worker in self._all:
            self._drop_batch(worker, message)
        tasks = [*self._slot_tasks, *([self._sampler] if self._sampler else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._stop_workers(list(self._all), timeout_s)
        self._state = "closed"

    async def _stop_workers(self, workers: list[_Worker], timeout_s: float) -> None:
        for worker in workers:
            self._refresh(worker)  # its last CPU figures, while it can still be read
            worker.retiring = True
            worker.alive = False
            if worker.transport is not None:
                worker.transport.close()
            self._signal_tree(worker, signal.SIGTERM)
        waits = [asyncio.ensure_future(w.proc.wait()) for w in workers]
        if waits and timeout_s > 0:
            await asyncio.wait(waits, timeout=timeout_s)
        for worker in workers:
            if not worker.exited:
                self._signal_tree(worker, signal.SIGKILL)
        if waits:
            await asyncio.wait(waits, timeout=EXIT_DRAIN_S)
        for worker in workers:
            # Helpers that outlived their worker: SIGTERM may not have been enough.
            self._signal_tree(worker, signal.SIGKILL)
            self._retire(worker)
            if worker.stderr_task is not None:
                worker.stderr_task.cancel()
        for wait in waits:
            wait.cancel()
        await asyncio.gather(
            *waits, *(w.stderr_task for w in workers if w.stderr_task), return_exceptions=True
        )

    # -- spawning --------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Thread pools are sized from the environment when their library loads, before
        # the worker runs any code of its own.
        env.update(thread_environment(self.settings.threads))
        # The worker imports this very package, wherever the proxy found it.
        root = str(Path(shadowproxy.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    def _config(self) -> WorkerConfig:
        return WorkerConfig(
            name=self.name,
            where=self.where,
            path=str(self.model.path),
            sha256=self.model.sha256,
            max_bytes=self.spec.max_bytes,
            threads=self.settings.threads,
            nice=self.settings.nice,
            warmup_runs=self.settings.warmup_runs,
            memory_mb=self.settings.memory_mb,
            version=self.version,
            protocol=None if self.protocol is None else self.protocol.as_json(),
            idle_priority=self.settings.idle_priority,
        )

    async def _spawn(self, slot: int) -> _Worker:
        """Start a worker and wait until it is ready; ``SpawnFailed`` if it is not."""
        loop = asyncio.get_running_loop()
        parent_end, child_end = socket.socketpair()
        try:
            proc = await ChildProcess.start(
                [sys.executable, "-m", MODULE, "--fd", str(child_end.fileno()),
                 "--parent", str(os.getpid()), "--name", self.name],
                env=self._environment(),
                pass_fds=(child_end.fileno(),),
            )  # fmt: skip
        except OSError as exc:
            parent_end.close()
            raise SpawnFailed(f"cannot start {sys.executable}: {exc}") from exc
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        if self.settings.idle_priority:
            # Before its imports, not after: the interpreter's start and the imports of numpy
            # and onnxruntime cost a fraction of a CPU second, paid again at every respawn of
            # a crash-looping candidate, and at normal priority taken from production.
            set_idle_policy(proc.pid)
        problem = pin_to_cpus(proc.pid, self.settings.cpus) if self.settings.cpus else None
        if problem is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            parent_end.close()
            raise SpawnFailed(problem)
        worker = _Worker(slot, proc, loop)
        self._all.add(worker)
        worker.stderr_task = loop.create_task(self._drain_stderr(worker))
        max_frame = self.settings.memory_mb * MiB
        try:
            transport, _ = await loop.create_unix_connection(
                lambda: _Channel(self, worker, max_frame), sock=parent_end
            )
            worker.transport = transport
            transport.writelines(framing.encode_json(Kind.HELLO, self._config().as_json()))
            deadline = self.settings.start_timeout_s
            ready = await asyncio.wait_for(asyncio.shield(worker.ready), deadline)
            if ready.get("sha256") != self.model.sha256:
                self._kill(worker, "loaded different bytes than the proxy checked")
                raise SpawnFailed("")
        except (SpawnFailed, TimeoutError, OSError) as exc:
            worker.ready.cancel()  # nobody waits for it any more
            if isinstance(exc, TimeoutError):
                self._kill(worker, f"not ready within executor.start_timeout_s ({deadline:g} s)")
            # A worker that failed on its own exits by itself: let it, for its exit status.
            await asyncio.wait([asyncio.ensure_future(proc.wait())], timeout=EXIT_DRAIN_S)
            if not worker.exited:
                self._kill(worker, "failed to start")
                await asyncio.wait([asyncio.ensure_future(proc.wait())], timeout=EXIT_DRAIN_S)
            self._signal_tree(worker, signal.SIGKILL)
            await self._settle(worker)
            self._retire(worker)
            detail = str(exc) if isinstance(exc, SpawnFailed) else ""
            reason = worker.exit_reason()
            raise SpawnFailed(f"{detail} ({reason})" if detail else reason) from exc
        except BaseException:
            worker.ready.cancel()
            self._kill(worker, "start cancelled")
            raise
        self._refresh(worker)
        worker.started_idle = ready.get("started_idle") is True
        worker.ever_ready = worker.alive = True
        worker.idle_since = time.perf_counter()
        log.debug(
            "%s: worker %d (pid %d) ready, load %.3f s, warm-up %.3f s",
            self.name,
            slot,
            worker.pid,
            ready.get("load_s", 0.0),
            ready.get("warmup_s", 0.0),
        )
        return worker

    async def _drain_stderr(self, worker: _Worker) -> None:
        """Keep the worker's stderr flowing (a full pipe would block it), log it sparingly."""
        reader = worker.proc.stderr
        pending = b""
        while chunk := await reader.read(64 * 1024):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > STDERR_MAX_LINE:
                lines.append(pending)
                pending = b""
            for line in lines:
                self._stderr_line(worker, line)
        if pending:
            self._stderr_line(worker, pending)

    def _stderr_line(self, worker: _Worker, line: bytes) -> None:
        text = line[:STDERR_MAX_LINE].decode("utf-8", "replace").rstrip()
        if not text:
            return
        worker.stderr_tail.append(text)
        worker.stderr_lines += 1
        if worker.stderr_lines <= STDERR_LOG_LINES:
            log.debug("%s: worker %d stderr: %s", self.name, worker.pid, text)
        elif worker.stderr_lines == STDERR_LOG_LINES + 1:
            log.warning(
                "%s: worker %d writes a lot to stderr; further lines are not logged",
                self.name,
                worker.pid,
            )

    # -- supervision -----------------------------------------------------------------

    async def _keep_slot(self, slot: int, worker: _Worker | None) -> None:
        """Watch the slot's worker; after a crash, respawn it with backoff."""
        while True:
            if worker is not None:
                await worker.proc.wait()
                self._signal_tree(worker, signal.SIGKILL)  # its helpers go with it
                await self._settle(worker)
                self._worker_exited(worker)
            if self._state != "running" or self.disabled:
                return
            await asyncio.sleep(self._policy.backoff())
            if self._state != "running" or self.disabled:
                return
            try:
                worker = await self._spawn(slot)
            except SpawnFailed as exc:
                worker = None
                if self._state != "running" or self.disabled:
                    return  # stopped on purpose while it loaded
                self._crashed(f"respawn failed: {exc}")
                continue
            if self._state != "running" or self.disabled:
                await self._stop_workers([worker], timeout_s=0.0)
                return
            self.restarts += 1
            self._slots[slot] = worker
            self._pump()

    async def _settle(self, worker: _Worker) -> None:
        """Let the last frames and stderr lines of an exited worker arrive (bounded)."""
        pending: list[asyncio.Future[Any]] = [worker.channel_closed]
        if worker.stderr_task is not None:
            pending.append(worker.stderr_task)
        await asyncio.wait(pending, timeout=EXIT_DRAIN_S)
        if worker.transport is not None:
            worker.transport.abort()

    def _worker_exited(self, worker: _Worker) -> None:
        self._retire(worker)
        if worker.retiring:
            self._drop_batch(worker, f"executor {self.name!r} stopped its worker")
            return
        reason = worker.exit_reason()
        batch = worker.batch
        if batch is not None:
            worker.batch = None
            if batch.hang_timer is not None:
                batch.hang_timer.cancel()
            self._fail_batch(batch, f"worker crashed: {reason}", "error")
        self._crashed(reason)

    def _retire(self, worker: _Worker) -> None:
        """Account for a worker that is gone for good."""
        worker.alive = False
        if worker in self._all:
            self._all.discard(worker)
            self._retired_cpu += worker.sample.cpu_seconds
            self._retired_wait += worker.starvation.starved_s
        if self._slots[worker.slot] is worker:
            self._slots[worker.slot] = None

    def _crashed(self, reason: str) -> None:
        if self.disabled:
            return  # workers stopped by the disabling are not crashes
        self.last_crash = reason
        log.warning("%s: worker crashed: %s", self.name, reason)
        burst = self._policy.crashed(time.monotonic())
        if burst and self.serves_production:
            log.error(
                "%s: %d crashes within %g s; production's model keeps restarting, next in "
                "%.1f s (readiness is 503 while no worker runs)",
                self.name, self._policy.recent(), self.settings.restart_window_s,
                self._policy.backoff(),
            )  # fmt: skip
        elif burst:
            self.disable(
                f"executor {self.name!r} disabled after {self._policy.recent()} crashes "
                f"within {self.settings.restart_window_s:g} s (last: {reason})"
            )

    def disable(self, reason: str) -> None:
        if self.disabled:
            return
        super().disable(reason)
        # A disabled model gets no more traffic: its healthy workers only cost resources.
        for worker in list(self._all):
            worker.retiring = True
            worker.alive = False
            self._drop_batch(worker, reason)
            self._signal_tree(worker, signal.SIGKILL)

    def _drop_batch(self, worker: _Worker, message: str) -> None:
        batch = worker.batch
        if batch is not None:
            worker.batch = None
            if batch.hang_timer is not None:
                batch.hang_timer.cancel()
            self._fail_batch(batch, message, "dropped")

    def _kill(self, worker: _Worker, reason: str) -> None:
        if worker.kill_reason is None:
            worker.kill_reason = reason
            self._refresh(worker)  # its last CPU figures, while it can still be read
        worker.alive = False
        self._signal_tree(worker, signal.SIGKILL)

    def _signal_tree(self, worker: _Worker, sig: signal.Signals) -> None:
        # The worker leads its own process group: one signal reaches it
        # and every helper that stayed in the group, even after the worker itself died.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, sig)
        for child in worker.sample.children:
            # psutil checks the process is still the one sampled (no pid reuse).
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)

    def _on_channel_lost(self, worker: _Worker) -> None:
        if not worker.channel_closed.done():
            worker.channel_closed.set_result(None)
        if not worker.ready.done():
            worker.ready.set_exception(SpawnFailed(""))
        if not worker.exited and not worker.retiring and self._loop is not None:
            # The exit of a crashed worker may be seen just after its socket closes; only
            # a worker still running a while later really closed its channel on its own.
            self._loop.call_later(EXIT_DRAIN_S, self._check_channel_lost, worker)

    def _check_channel_lost(self, worker: _Worker) -> None:
        if not worker.exited and not worker.retiring:
            self._kill(worker, "closed its channel")

    # -- batches ---------------------------------------------------------------------

    def _alive(self) -> int:
        return sum(1 for w in self._slots if w is not None and w.alive)

    def _free_worker(self) -> _Worker | None:
        best: _Worker | None = None
        for worker in self._slots:
            if worker is not None and worker.alive and worker.batch is None:
                if best is None or worker.idle_since < best.idle_since:
                    best = worker
        return best

    @property
    def accepts_bodies(self) -> bool:
        return self.protocol is not None

    def _send(self, worker: _Worker, batch: Batch, inputs: dict[str, np.ndarray]) -> None:
        self._write(worker, batch, framing.encode_batch(batch.id, inputs))

    def _send_bodies(self, worker: _Worker, batch: Batch, bodies: list[bytes]) -> None:
        try:
            self._write(worker, batch, framing.encode_bodies(batch.id, bodies))
        except ValueError as exc:
            self._fail_batch(batch, f"bodies cannot be sent to the model: {exc}", "invalid")

    def _write(self, worker: _Worker, batch: Batch, buffers: list[framing.Buffer]) -> None:
        size = sum(len(b) for b in buffers)
        if size > self.settings.memory_mb * MiB:
            # The worker would refuse the frame, and could not hold the batch anyway.
            raise ValueError(f"a batch of {size} bytes is larger than memory_mb")
        assert worker.transport is not None
        worker.batch = batch
        sent = time.perf_counter()
        clock = worker.starvation
        if sent - clock.read_at >= SEND_READING_AGE_S:
            # A reading from before the batch wakes the worker, to measure a wait from (see
            # _expire); at most every SEND_READING_AGE_S, so not a /proc read per batch.
            clock.read(sent)
        worker.transport.writelines(buffers)
        clock.woken(sent)  # asleep on its socket until now
        timeout = max(r.timeout_s for r in batch.requests)
        deadline = max(r.deadline for r in batch.requests)
        grace = max(HANG_GRACE_MIN_S, self._hang_grace_factor * timeout)
        # A reading up to SEND_READING_AGE_S old: an older one only errs towards more grace.
        worker.starved_at_send = clock.starved_s
        worker.hang_due = deadline + grace
        assert self._loop is not None
        batch.hang_timer = self._loop.call_later(
            worker.hang_due - sent, self._on_hang, worker, batch, grace
        )

    def _on_hang(self, worker: _Worker, batch: Batch, grace: float) -> None:
        if worker.batch is not batch:
            return
        worker.starvation.read(time.perf_counter())
        starved = worker.starvation.starved_s - worker.starved_at_send
        due = worker.hang_due + starved
        wait = due - time.perf_counter()
        if wait > TIMER_SLACK_S:
            # It waited that long for a CPU: give it that much more before judging it.
            assert self._loop is not None
            batch.hang_timer = self._loop.call_later(wait, self._on_hang, worker, batch, grace)
            return
        reason = f"hung: no answer {grace:g} s past the deadline"
        if starved >= 0.05:
            reason += f" (not counting {starved:.1f} s it waited for a CPU)"
        self._kill(worker, reason)

    def _cpu_wait(self, request: Request, now: float) -> tuple[float, float]:
        """Of the busy workers, the one that waited the least share of the time it wanted
        a CPU, over the request's life (see ``BatchingExecutor._expire``); ``(0, 0)`` for
        production's executor, whose late answer is a 504 to the client whatever kept it.

        A worker found asleep now counts as not waiting at all: whatever it waited before,
        it now waits on something else (a hang, a lock, I/O), which is the model's doing.
        """
        if self.serves_production:
            return 0.0, 0.0
        waits = []
        for worker in self._all:
            if worker.alive and worker.batch is not None:
                waited, wanted = worker.starvation.waited_since(request.submitted, now)
                waits.append((waited if worker.starvation.runnable else 0.0, wanted))
        return min(waits, key=lambda w: w[0] / w[1] if w[1] else 0.0, default=(0.0, 0.0))

    def _on_message(self, worker: _Worker, message: Message) -> None:
        kind = message.kind
        if not worker.ready.done():
            if kind is Kind.READY:
                worker.ready.set_result(message.json())
            elif kind is Kind.FAILURE:
                worker.ready.set_exception(SpawnFailed(message.text))
            else:
                raise FrameError(f"{kind.name} frame before READY")
            return
        batch = worker.batch
        if batch is None or message.batch_id != batch.id:
            raise FrameError(f"{kind.name} frame for batch {message.batch_id}, not in flight")
        worker.batch = None
        worker.idle_since = time.perf_counter()
        if batch.hang_timer is not None:
            batch.hang_timer.cancel()
        if kind is Kind.RESULT:
            self._policy.succeeded()
            self._complete(batch, message.tensors, message.compute_s, message.cpu_s, message.wait_s)
        elif kind is Kind.ANSWERS:
            self._policy.succeeded()
            self._complete_bodies(
                batch, message.answers, message.compute_s, message.cpu_s, message.wait_s
            )
        elif kind is Kind.FAILURE:
            self._refused(batch, f"model failed: {message.text}", message.outcome)
        else:
            raise FrameError(f"unexpected {kind.name} frame")
        self._pump()

    # -- resources -------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        rounds = 0
        while True:
            scan = rounds % CHILD_SCAN_EVERY == 0
            for worker in list(self._all):
                self._refresh(worker, scan_children=scan)
            rounds += 1
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def _refresh(self, worker: _Worker, *, scan_children: bool = True) -> None:
        """Read one worker's process tree; kill it when above the memory cap."""
        if worker.ps is None or worker.exited:
            return
        worker.starvation.read(time.perf_counter())
        known = None
        if not scan_children:
            known = tuple(c for c in worker.sample.children if c.is_running())
        try:
            sample = sample_tree(worker.ps, children=known)
        except psutil.Error:
            return  # exiting; its supervisor accounts for it
        worker.sample = sample
        self._peak_rss = max(self._peak_rss, sample.peak_rss_bytes)
        cap = self.settings.memory_mb * MiB
        if sample.rss_bytes > cap and not worker.retiring and worker.kill_reason is None:
            self._kill(
                worker,
                f"memory: {sample.rss_bytes / MiB:.0f} MiB resident, "
                f"above memory_mb={self.settings.memory_mb}",
            )

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the worker processes not yet reaped (for tests and diagnostics)."""
        return sorted(w.pid for w in self._all)

    @property
    def started_idle(self) -> list[bool]:
        """Per live worker: whether it ran under ``SCHED_IDLE`` from its start (diagnostics)."""
        return [w.started_idle for w in sorted(self._all, key=lambda w: w.pid)]

    def resources(self) -> ResourceFigures:
        live = [w.sample for w in self._all]
        cpu = self._retired_cpu + sum(s.cpu_seconds for s in live)
        return ResourceFigures(
            cpu_seconds=cpu,
            # Per request: the worker's own CPU time measured around each batch (decode,
            # run, encode), as the thread executor and every pair record count it. The OS
            # total above also holds loading, warm-up and idle time, in 10 ms ticks.
            cpu_seconds_per_request=self.batch_cpu_seconds / self.requests
            if self.requests
            else 0.0,
            rss_bytes=sum(s.rss_bytes for s in live),
            peak_rss_bytes=self._peak_rss,
            threads=sum(s.threads for s in live),
            child_processes=sum(len(s.children) for s in live),
            requests=self.requests,
            rows=self.rows,
            batches=self.batches,
            crashes=self._policy.crashes,
            timeouts=self.timeouts,
            cpu_wait_seconds=self._retired_wait + sum(w.starvation.starved_s for w in self._all),
            restarts=self.restarts,
            disabled=self.disabled,
            workers_alive=self._alive(),
            compute_seconds=self.compute_seconds,
            queue_seconds=self.queue_seconds,
            ipc_seconds=self.ipc_seconds,
        )
