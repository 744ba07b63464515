"""The worker process: ``python -m shadowproxy.executor.worker --fd N --parent PID``.

A fresh interpreter, never a fork of the proxy: it receives its configuration (a HELLO
frame, JSON) on the socket inherited as ``--fd``, checks the model file itself against the
digest the proxy computed, builds the session, warms it up and reports READY. Then it
answers BATCH frames one at a time until the socket closes.

The proxy puts the thread-capping variables in the environment it spawns the worker with,
so BLAS/OpenMP pools are sized before numpy or onnxruntime load. The worker lowers its own
priority and asks the kernel to kill it when the proxy dies, so it never outlives it.

Memory: the proxy's sampler kills a worker resident above ``memory_mb``, but samples only
every 0.25 s. As a backstop against a burst faster than that, the worker caps its writable
private memory (``RLIMIT_DATA``) at ``2 × memory_mb + 256 MiB``: an allocation beyond it
fails inside the worker (the batch fails, or the worker dies) instead of taking the host's
memory. ``RLIMIT_AS`` is not used: onnxruntime and numpy reserve far more address space
than they touch (thread stacks, arenas), and a cap on it breaks loading.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadowproxy.background import set_idle_policy
from shadowproxy.executor import framing
from shadowproxy.executor.faults import Faults
from shadowproxy.executor.framing import FrameError, Kind, Message
from shadowproxy.executor.outcomes import failure_outcome

if TYPE_CHECKING:
    import numpy as np

MODULE = "shadowproxy.executor.worker"
MiB = 1024 * 1024
_PR_SET_PDEATHSIG = 1
DATA_LIMIT_FACTOR = 2
DATA_LIMIT_SLACK = 256 * MiB
_IOV_MAX = 512


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to build its model, sent as the HELLO frame."""

    name: str
    where: str
    path: str
    sha256: str  # the digest the proxy computed: the worker must load the same bytes
    max_bytes: int
    threads: int
    nice: int
    warmup_runs: int
    memory_mb: int
    version: str = ""
    protocol: dict[str, Any] | None = None  # ProtocolSpec.as_json(), for BODIES frames
    idle_priority: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> WorkerConfig:
        return cls(**values)


class BlockingChannel:
    """Frames over the inherited socket, with plain blocking calls (the worker is serial)."""

    def __init__(self, sock: socket.socket, max_frame: int) -> None:
        self.sock = sock
        self.max_frame = max_frame
        self._reader = io.BufferedReader(socket.SocketIO(sock, "rb"), 64 * 1024)

    def read(self) -> Message | None:
        """The next frame, or ``None`` when the proxy closed the socket."""
        head = self._reader.read(framing.LENGTH.size)
        if not head:
            return None
        if len(head) < framing.LENGTH.size:
            raise FrameError("socket closed inside a frame header")
        (length,) = framing.LENGTH.unpack(head)
        if length > self.max_frame:
            raise FrameError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        body = bytearray(length)
        if self._reader.readinto(body) != length:
            raise FrameError("socket closed inside a frame")
        return framing.decode(body)

    def send(self, buffers: Sequence[framing.Buffer]) -> None:
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        while views:
            sent = self.sock.sendmsg(views[:_IOV_MAX])
            while sent:
                if sent >= len(views[0]):
                    sent -= len(views.pop(0))
                else:
                    views[0] = views[0][sent:]
                    sent = 0


def limit_memory(memory_mb: int) -> int:
    """Cap the data segment (``RLIMIT_DATA``) well above ``memory_mb``; the limit in bytes."""
    limit = DATA_LIMIT_FACTOR * memory_mb * MiB + DATA_LIMIT_SLACK
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    # Never loosen a limit the operator already set.
    for current in (soft, hard):
        if current != resource.RLIM_INFINITY:
            limit = min(limit, current)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit


def runs_idle() -> bool:
    """Whether this process already runs under ``SCHED_IDLE``."""
    policy = getattr(os, "SCHED_IDLE", None)
    return policy is not None and os.sched_getscheduler(0) == policy


def use_idle_priority() -> bool:
    """Move this process to ``SCHED_IDLE`` where the platform has it.

    A niced process still takes its share of a busy core, and the scheduler lets it finish a
    slice before a woken proxy runs again: enough to add milliseconds to production's tail
    when they share a core. Under ``SCHED_IDLE`` the worker runs only when nothing at normal
    priority wants the CPU and yields to the proxy at once; under sustained load its
    requests wait, then time out or are dropped, and are counted.
    """
    if not set_idle_policy(0):  # 0: this thread
        return False
    for tid in _other_threads():
        set_idle_policy(tid)  # False for a thread that just exited: nothing to move
    return True


def lower_priority(nice: int) -> None:
    """Add ``nice`` to the niceness of this process, every thread of it included."""
    os.nice(nice)
    for tid in _other_threads():
        with contextlib.suppress(OSError):
            current = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))


def _other_threads() -> list[int]:
    """Ids of this process's threads but the calling one (Linux; empty elsewhere).

    On Linux, priority and scheduling policy belong to each thread, and calls on ``0`` move
    only the calling one; threads a library started at import (OpenBLAS sizes its pool when
    numpy loads) keep the settings they had. Threads started later inherit the caller's.
    """
    try:
        tids = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return []
    return [tid for tid in tids if tid != threading.get_native_id()]


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the proxy dies (Linux only).

    The signal is tied to the thread that spawned the worker: the proxy spawns from its
    event loop thread, which lives as long as the proxy does.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    # The proxy may have died before the request above was in place.
    if os.getppid() != parent_pid:
        os._exit(1)


class CpuWaitMeter:
    """How long the calling thread waited for a CPU since the last :meth:`take`, from its
    ``/proc/thread-self/schedstat`` (the kernel's run-queue wait, counted as each wait
    ends); always 0 where the kernel keeps no schedstat.

    Read once per batch, at its end: the worker sleeps on its socket between batches, so
    what accrued since the last batch is the wait to be woken for this one and the waits
    while running it. The proxy takes it off the candidate's latency (a busy core's, not
    the model's); the file stays open and is re-read in place, about half a microsecond.
    """

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None
        self._last = self._read()

    def _read(self) -> float:
        if self._fd is None:
            return 0.0
        try:
            return int(os.pread(self._fd, 64, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def take(self) -> float:
        now = self._read()
        waited, self._last = max(0.0, now - self._last), now
        return waited


class Worker:
    """The loaded model and the serving loop."""

    def __init__(self, config: WorkerConfig, channel: BlockingChannel, faults: Faults) -> None:
        from shadowproxy.config.model import ModelFile
        from shadowproxy.models.check import check_model
        from shadowproxy.models.session import build_session

        self.config = config
        self.channel = channel
        self.faults = faults
        self.waits = CpuWaitMeter()
        spec = ModelFile(path=Path(config.path), sha256=config.sha256, max_bytes=config.max_bytes)
        self.model = check_model(spec, config.where)
        self.session = build_session(self.model, config.threads)
        self.bodies: BodyRunner | None = None
        if config.protocol is not None:
            self.bodies = BodyRunner(self, config)
        faults.at_start()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from shadowproxy.models.session import run_model

        return run_model(self.session, self.model.signature, inputs)

    def warm_up(self) -> None:
        from shadowproxy.models.session import warmup_inputs

        for seed in range(self.config.warmup_runs):
            self.run(warmup_inputs(self.model.signature, rows=1, seed=seed))

    def serve(self) -> None:
        calls = 0
        self.waits.take()  # loading and warm-up are not a batch's wait
        while (message := self.channel.read()) is not None:
            if message.kind is Kind.BODIES and self.bodies is not None:
                handle = self.bodies.answer
            elif message.kind is Kind.BATCH:
                handle = self._result
            else:
                raise FrameError(f"expected a BATCH or BODIES frame, got {message.kind.name}")
            calls += 1
            # process_time covers every thread of the process: onnxruntime's intra-op
            # threads are counted with the calling one.
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            try:
                self.faults.before_call(calls)
                reply = handle(message, cpu_start, wall_start)
            except Exception as exc:  # onnxruntime raises its own unrelated types
                self.waits.take()  # this batch's, not the next one's
                message_text = f"{type(exc).__name__}: {exc}"
                reply = framing.encode_failure(message.batch_id, failure_outcome(exc), message_text)
            self.channel.send(reply)

    def _result(
        self, message: Message, cpu_start: float, wall_start: float
    ) -> list[framing.Buffer]:
        outputs = self.run(message.tensors)
        compute_s = time.perf_counter() - wall_start
        cpu_s = time.process_time() - cpu_start
        wait_s = self.waits.take()
        return framing.encode_result(message.batch_id, outputs, compute_s, cpu_s, wait_s)


class BodyRunner:
    """Answers BODIES frames: decode each body, run the decodable ones together, encode.

    A body the protocol refuses gets its reason back (the candidate's ``invalid`` outcome);
    the others are stacked into one model run when every tensor has a batch dimension, and
    run one by one otherwise. Compute and CPU time cover the whole frame, decoding and
    encoding included: that is what this candidate costs per request.
    """

    def __init__(self, worker: Worker, config: WorkerConfig) -> None:
        from shadowproxy.protocols import ProtocolSpec

        assert config.protocol is not None
        self.worker = worker
        self.protocol = ProtocolSpec.from_json(config.protocol).build()
        self.inputs = worker.model.signature.inputs
        signature = worker.model.signature
        self.stackable = all(t.batchable for t in (*signature.inputs, *signature.outputs))
        self.name = config.name
        self.version = config.version

    def answer(self, message: Message, cpu_start: float, wall_start: float) -> list[framing.Buffer]:
        import numpy as np

        from shadowproxy.errors import PayloadError

        answers: list[tuple[int, int, bytes]] = [(framing.ANSWER_INVALID, 0, b"")] * len(
            message.items
        )
        decoded = []
        for i, body in enumerate(message.items):
            try:
                decoded.append((i, self.protocol.decode_request(body, self.inputs)))
            except PayloadError as exc:
                answers[i] = (framing.ANSWER_INVALID, 0, f"{exc.reason}\0{exc}".encode())
        groups = [decoded] if self.stackable else [[item] for item in decoded]
        for group in groups:
            if not group:
                continue
            names = group[0][1].arrays.keys()
            inputs = {n: np.concatenate([d.arrays[n] for _, d in group]) for n in names}
            outputs = self.worker.run(inputs)
            start = 0
            for i, d in group:
                rows = {n: v[start : start + d.rows] for n, v in outputs.items()}
                start += d.rows
                answers[i] = (framing.ANSWER_OK, d.rows, self._encode(rows, d.id, d.rows))
        compute_s = time.perf_counter() - wall_start
        cpu_s = time.process_time() - cpu_start
        wait_s = self.worker.waits.take()
        return framing.encode_answers(message.batch_id, answers, compute_s, cpu_s, wait_s)

    def _encode(self, outputs: dict[str, np.ndarray], request_id: str | None, rows: int) -> bytes:
        from shadowproxy.errors import PayloadError

        try:
            return self.protocol.encode_response(
                outputs, model_name=self.name, model_version=self.version,
                request_id=request_id, rows=rows,
            )  # fmt: skip
        except PayloadError as exc:  # outputs the protocol cannot carry
            raise RuntimeError(f"the model's outputs cannot be encoded: {exc}") from exc


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to the proxy")
    parser.add_argument("--parent", type=int, required=True, help="pid of the proxy")
    parser.add_argument("--name", default="", help="model name, for process listings")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    die_with_parent(args.parent)
    # Helpers the model may start must not inherit the channel: the proxy would never see
    # it close.
    os.set_inheritable(args.fd, False)
    sock = socket.socket(fileno=args.fd)
    # Large enough for the HELLO frame; raised to the memory cap once it is known.
    channel = BlockingChannel(sock, max_frame=MiB)
    hello = channel.read()
    if hello is None or hello.kind is not Kind.HELLO:
        print("worker: no HELLO frame from the proxy", file=sys.stderr)
        return 2
    started_idle = runs_idle()  # set by the proxy at spawn (see ProcessExecutor._spawn)
    config = WorkerConfig.from_json(hello.json())
    channel.max_frame = config.memory_mb * MiB
    if config.nice:
        lower_priority(config.nice)
    if config.idle_priority:
        use_idle_priority()
    limit_memory(config.memory_mb)
    started = time.perf_counter()
    try:
        faults = Faults.from_environ(os.environ)
        worker = Worker(config, channel, faults)
        loaded = time.perf_counter()
        worker.warm_up()
    except Exception as exc:
        channel.send(framing.encode_failure(0, "error", f"{type(exc).__name__}: {exc}"))
        return 1
    ready = {
        "pid": os.getpid(),
        "sha256": worker.model.sha256,
        "load_s": loaded - started,
        "warmup_s": time.perf_counter() - loaded,
        "started_idle": started_idle,
    }
    channel.send(framing.encode_json(Kind.READY, ready))
    try:
        worker.serve()
    except FrameError as exc:
        print(f"worker: protocol error: {exc}", file=sys.stderr)
        return 2
    except (BrokenPipeError, ConnectionResetError):
        pass  # the proxy went away; nothing left to answer
    return 0


if __name__ == "__main__":
    sys.exit(main())
