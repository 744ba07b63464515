"""The thread executor: the session runs inside the proxy process, on its own threads.

For trusted models (the default for a local production model), where a process hop would
only add latency. Batching, queue limits and deadlines are the process executor's; the
runs happen on a dedicated ``ThreadPoolExecutor`` of ``workers`` threads (onnxruntime
releases the GIL while it runs), one hop per batch.

The trade-offs of sharing the proxy's process:

* no isolation: a crash of the model is a crash of the proxy, and its memory is the
  proxy's memory;
* no kill on hang: a request past its deadline fails with ``timeout``, but a run that
  never ends keeps its thread busy for good;
* resource figures are the proxy process's own (RSS, peak RSS, threads), except
  ``cpu_seconds``, which sums ``time.thread_time()`` of the threads running the batches.
  That is exact with ``threads: 1``; onnxruntime's extra intra-op threads (``threads`` > 1)
  are not counted. ``child_processes`` counts the proxy's children other than process
  executor workers and their helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import psutil

from shadowproxy.config.model import Executor, ModelFile
from shadowproxy.errors import ModelError, ModelLoadError
from shadowproxy.executor.accounting import peak_rss
from shadowproxy.executor.api import ResourceFigures
from shadowproxy.executor.core import Batch, BatchingExecutor
from shadowproxy.executor.outcomes import failure_outcome
from shadowproxy.executor.worker import MODULE
from shadowproxy.models.session import build_session, run_model, warmup_inputs

SAMPLE_INTERVAL_S = 0.5

RunResult = tuple[dict[str, np.ndarray], float, float]


class ThreadExecutor(BatchingExecutor[int]):
    """Runs a model on threads of the proxy process; see the module documentation."""

    def __init__(
        self, name: str, model: ModelFile, settings: Executor, *, where: str = "model"
    ) -> None:
        super().__init__(name, model, settings, where=where)
        self._pool: ThreadPoolExecutor | None = None
        self._session: Any = None
        self._running_batches: dict[asyncio.Future[RunResult], Batch] = {}
        self._sampler: asyncio.Task[None] | None = None
        self._process = psutil.Process()
        self._rss = self._peak = self._threads = self._children = 0

    async def start(self) -> None:
        model = await self._check_and_load()
        loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.workers, thread_name_prefix=f"shadowproxy-{self.name}"
        )
        try:
            # One session serves every thread: onnxruntime runs are thread-safe, and one copy
            # of the weights is enough inside one process.
            self._session = await loop.run_in_executor(
                self._pool, build_session, model, self.settings.threads
            )
            for seed in range(self.settings.warmup_runs):
                inputs = warmup_inputs(model.signature, rows=1, seed=seed)
                await loop.run_in_executor(self._pool, self._run, inputs)
        except Exception as exc:
            # The model passed its checks; building or running it is what failed.
            self._pool.shutdown(wait=False)
            self._pool = self._session = None
            self._state = "closed"
            if isinstance(exc, ModelError):
                raise ModelLoadError(f"{self.where}: {exc}") from exc
            raise ModelLoadError(
                f"{self.where}: {model.path}: warm-up run failed: {type(exc).__name__}: {exc}"
            ) from exc
        if self._state != "starting":
            self._pool.shutdown(wait=False)
            self._closed_while_starting()
        self._sampler = loop.create_task(self._sample_loop(), name=f"executor-{self.name}-sample")
        self._running()

    async def close(self, timeout_s: float = 2.0) -> None:
        """Stop accepting, fail pending requests as ``dropped``, wait for running batches.

        A run still going after ``timeout_s`` cannot be stopped; its thread is left to end.
        """
        if self._state in ("closing", "closed"):
            return
        self._state = "closing"
        self._stop_timers()
        message = f"executor {self.name!r} closed"
        self._fail_queued(message, "dropped")
        for batch in self._running_batches.values():
            self._fail_batch(batch, message, "dropped")
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        if self._running_batches and timeout_s > 0:
            await asyncio.wait(list(self._running_batches), timeout=timeout_s)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._session = None
        self._state = "closed"

    # -- runs ------------------------------------------------------------------------

    def _run(self, inputs: dict[str, np.ndarray]) -> RunResult:
        """On a pool thread: one model run, its wall time and this thread's CPU time."""
        cpu_start, wall_start = time.thread_time(), time.perf_counter()
        outputs = run_model(self._session, self.signature, inputs)
        return outputs, time.perf_counter() - wall_start, time.thread_time() - cpu_start

    def _alive(self) -> int:
        return self.settings.workers if self._pool is not None else 0

    def _free_worker(self) -> int | None:
        busy = len(self._running_batches)
        return busy if busy < self.settings.workers else None

    def _send(self, worker: int, batch: Batch, inputs: dict[str, np.ndarray]) -> None:
        assert self._loop is not None and self._pool is not None
        future = self._loop.run_in_executor(self._pool, self._run, inputs)
        self._running_batches[future] = batch
        future.add_done_callback(functools.partial(self._finished, batch))

    def _finished(self, batch: Batch, future: asyncio.Future[RunResult]) -> None:
        self._running_batches.pop(future, None)
        if future.cancelled():
            self._fail_batch(batch, f"executor {self.name!r} closed", "dropped")
            return
        exc = future.exception()
        if exc is not None:
            message = f"model failed: {type(exc).__name__}: {exc}"
            self._refused(batch, message, failure_outcome(exc))
        else:
            outputs, compute_s, cpu_s = future.result()
            self._complete(batch, outputs, compute_s, cpu_s)
        self._pump()

    # -- resources -------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        while True:
            self._refresh()
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def _refresh(self) -> None:
        with contextlib.suppress(psutil.Error):
            with self._process.oneshot():
                self._rss = self._process.memory_info().rss
                self._threads = self._process.num_threads()
            self._peak = max(self._peak, peak_rss(self._process.pid))
            self._children = _foreign_children(self._process)

    def resources(self) -> ResourceFigures:
        return ResourceFigures(
            cpu_seconds=self.batch_cpu_seconds,
            cpu_seconds_per_request=self.batch_cpu_seconds / self.requests
            if self.requests
            else 0.0,
            rss_bytes=self._rss,
            peak_rss_bytes=self._peak,
            threads=self._threads,
            child_processes=self._children,
            requests=self.requests,
            rows=self.rows,
            batches=self.batches,
            crashes=0,
            timeouts=self.timeouts,
            restarts=0,
            disabled=self.disabled,
            workers_alive=self._alive(),
            compute_seconds=self.compute_seconds,
            queue_seconds=self.queue_seconds,
            ipc_seconds=self.ipc_seconds,
        )


def _foreign_children(process: psutil.Process) -> int:
    """Descendants of ``process`` that are not process-executor workers or their helpers."""
    count = 0
    for child in process.children():
        try:
            if MODULE in child.cmdline():
                continue
            count += 1 + len(child.children(recursive=True))
        except psutil.Error:
            continue
    return count
