"""What both executors share: admission, the micro-batch queue, deadlines and counters.

Everything here runs on the event loop and never blocks it. A request is queued with its
deadline; ``_pump`` turns the head of the queue into a batch whenever a worker is free and
the batch is full or its oldest row has waited ``max_wait_ms``. Deadlines are kept in one
heap watched by a single timer, so a request costs a heap push, not a timer of its own.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import numpy as np

from shadowproxy.config.model import Executor, ModelFile
from shadowproxy.errors import ExecutorError, FailureOutcome
from shadowproxy.executor.api import BodyAnswer, Inference
from shadowproxy.executor.batching import BatchError, shape_key, split, stack, take_batch
from shadowproxy.executor.framing import ANSWER_OK
from shadowproxy.models.check import CheckedModel, check_model
from shadowproxy.models.signature import ModelSignature
from shadowproxy.tensors import TensorSpec, datatype_of_array

log = logging.getLogger("shadowproxy.executor")

# Timers of the event loop have about a millisecond of resolution (uvloop); a deadline this
# close is treated as reached rather than re-armed for a sliver of time.
TIMER_SLACK_S = 0.001
# A request past its deadline whose workers waited for a CPU at least this long, and for
# at least this share of the time they wanted one, is dropped as ``starved``, not counted
# as the model's timeout: see _expire. Below 10 ms the kernel's accounting, which moves at
# scheduler ticks, cannot tell a wait from a run.
STARVED_MIN_S = 0.01
STARVED_SHARE = 0.5

# A row waits for its batch to fill at most max_wait_ms, and at most this share of its own
# deadline, so a short timeout_ms is never spent on batching.
FILL_DEADLINE_SHARE = 0.5

QUEUED, SENT, DONE = 0, 1, 2
# The batch key of raw request bodies: they batch with each other, never with tensors.
BODY_KEY = "request-body"


class Request:
    """One submitted request, from admission to its answer."""

    __slots__ = (
        "inputs", "rows", "key", "future", "submitted", "deadline", "timeout_s", "state", "alone",
    )  # fmt: skip

    def __init__(
        self,
        inputs: dict[str, np.ndarray] | bytes,
        rows: int,
        key: Hashable,
        future: asyncio.Future[Any],
        submitted: float,
        timeout_s: float,
    ) -> None:
        self.inputs: dict[str, np.ndarray] | bytes | None = inputs
        self.rows = rows
        self.key = key
        self.future = future
        self.submitted = submitted
        self.deadline = submitted + timeout_s
        self.timeout_s = timeout_s
        self.state = QUEUED
        # Run in a batch of its own: its last batch was refused, and the model must say
        # which request's inputs it refused (see BatchingExecutor._refused).
        self.alone = False

    @property
    def waiting(self) -> bool:
        return self.state == QUEUED


class Batch:
    """Requests sent to a worker together."""

    __slots__ = ("id", "requests", "rows", "sent_at", "hang_timer")

    def __init__(self, batch_id: int, requests: list[Request], sent_at: float) -> None:
        self.id = batch_id
        self.requests = requests
        self.rows = sum(r.rows for r in requests)
        self.sent_at = sent_at
        self.hang_timer: asyncio.TimerHandle | None = None


W = TypeVar("W")


class BatchingExecutor(Generic[W]):
    """The queue and bookkeeping of an executor; subclasses provide workers.

    Subclasses implement ``_free_worker`` (a worker able to take a batch now, or ``None``)
    and ``_send`` (hand it the batch; the answer comes back through ``_complete`` or
    ``_fail_batch``), and call ``_running`` once their workers are ready.
    """

    name: str
    signature: ModelSignature
    model: CheckedModel

    def __init__(
        self, name: str, model: ModelFile, settings: Executor, *, where: str = "model"
    ) -> None:
        self.name = name
        self.spec = model
        self.settings = settings
        self.where = where
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = "new"  # new -> starting -> running -> closing -> closed
        self._disabled_reason: str | None = None
        self._queue: deque[Request] = deque()
        self._queued_rows = 0
        self._input_names: tuple[str, ...] = ()
        self._input_specs: dict[str, TensorSpec] = {}
        self._batching = False
        self._max_wait_s = settings.max_wait_ms / 1000.0
        self._seq = itertools.count()
        self._batch_ids = itertools.count(1)
        self._deadlines: list[tuple[float, int, Request]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = math.inf
        self._fill_timer: asyncio.TimerHandle | None = None
        self._pump_scheduled = False
        # Counters: requests and rows a worker ran (whether or not their caller still
        # waited), and per-request sums of the times reported in ``Inference``.
        self.requests = 0
        self.rows = 0
        self.batches = 0
        self.timeouts = 0
        self.starved = 0  # requests past their deadline dropped as starved, see _expire
        self.batch_cpu_seconds = 0.0
        self.compute_seconds = 0.0
        self.queue_seconds = 0.0
        self.ipc_seconds = 0.0

    # -- subclass interface ----------------------------------------------------------

    def _free_worker(self) -> W | None:
        raise NotImplementedError

    def _send(self, worker: W, batch: Batch, inputs: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _send_bodies(self, worker: W, batch: Batch, bodies: list[bytes]) -> None:
        raise NotImplementedError

    @property
    def accepts_bodies(self) -> bool:
        return False

    def _loaded(self, model: CheckedModel, loop: asyncio.AbstractEventLoop) -> None:
        """Record the checked model; batching needs every input and output batchable."""
        self._loop = loop
        self.model = model
        self.signature = model.signature
        self._input_specs = {spec.name: spec for spec in model.signature.inputs}
        self._input_names = tuple(self._input_specs)
        self._batching = self.settings.max_batch > 1 and all(
            spec.batchable for spec in (*model.signature.inputs, *model.signature.outputs)
        )

    async def _check_and_load(self) -> CheckedModel:
        """The common start: refuse a second start, check the model off the loop, record it."""
        if self._state != "new":
            raise RuntimeError(f"executor {self.name!r} was already started")
        loop = asyncio.get_running_loop()
        self._state = "starting"
        model = await asyncio.to_thread(check_model, self.spec, self.where)
        self._closed_while_starting()
        self._loaded(model, loop)
        return model

    def _running(self) -> None:
        self._state = "running"

    def _closed_while_starting(self) -> None:
        """``start()`` raises this way when ``close()`` ran while it was waiting."""
        if self._state != "starting":
            raise ExecutorError(f"executor {self.name!r} was closed while starting", "dropped")

    # -- state -----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._state == "running" and self._disabled_reason is None and self._alive() > 0

    @property
    def disabled(self) -> bool:
        return self._disabled_reason is not None

    @property
    def starting(self) -> bool:
        """Not started yet, or loading and warming up its model."""
        return self._state in ("new", "starting")

    @property
    def disabled_reason(self) -> str | None:
        """Why the executor was switched off; None while it is not."""
        return self._disabled_reason

    def disable(self, reason: str) -> None:
        """Switch the executor off for good: queued and later requests are dropped.

        After repeated crashes, or for a candidate whose model failed to load: it stays in
        place and is reported disabled, rather than stopping the proxy.
        """
        if self._disabled_reason is not None:
            return
        self._disabled_reason = reason
        log.error("%s", reason)
        self._fail_queued(reason, "dropped")

    @property
    def batching(self) -> bool:
        """Whether rows of several requests are stacked into one model run."""
        return self._batching

    def _alive(self) -> int:
        raise NotImplementedError

    # -- admission -------------------------------------------------------------------

    def _refusal(self) -> str | None:
        if self._disabled_reason is not None:
            return self._disabled_reason
        if self._state in ("new", "starting"):
            return f"executor {self.name!r} is not started"
        if self._state != "running":
            return f"executor {self.name!r} is closed"
        return None

    def _input_problem(self, inputs: dict[str, np.ndarray], rows: int) -> str | None:
        specs = self._input_specs
        if inputs.keys() != specs.keys():
            missing = sorted(specs.keys() - inputs.keys())
            unknown = sorted(inputs.keys() - specs.keys())
            return f"inputs do not match the model: missing {missing}, unknown {unknown}"
        if rows < 1:
            return f"a request needs at least one row, got {rows}"
        for name, array in inputs.items():
            spec = specs[name]
            if not isinstance(array, np.ndarray):
                return f"input {name!r} is a {type(array).__name__}, not a numpy array"
            try:
                datatype = datatype_of_array(array)
            except KeyError:
                return f"input {name!r} has unsupported dtype {array.dtype}"
            if datatype != spec.datatype:
                return f"input {name!r} is {datatype}, the model takes {spec.datatype}"
            if spec.batchable and (array.ndim == 0 or array.shape[0] != rows):
                return f"input {name!r} has shape {array.shape}, not {rows} rows"
        return None

    def submit(
        self, inputs: dict[str, np.ndarray], rows: int, timeout_s: float
    ) -> asyncio.Future[Inference]:
        """Queue one request; failures are set on the returned future, never raised.

        Outcomes: ``invalid`` (inputs that do not match the signature), ``dropped`` (not
        started, closed, disabled, or the queue would hold more than ``queue_rows`` rows,
        so a single request above ``queue_rows`` rows is always dropped), ``timeout``.
        """
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Inference] = loop.create_future()
        problem = self._refusal()
        if problem is None:
            problem = self._input_problem(inputs, rows)
            if problem is not None:
                future.set_exception(ExecutorError(problem, "invalid"))
                return future
        key = shape_key(inputs, self._input_names) if self._batching else None
        return self._admit(future, inputs, rows, key, timeout_s, problem)

    def submit_body(self, body: bytes, timeout_s: float) -> asyncio.Future[BodyAnswer]:
        """Queue one raw request body for a worker to decode, run and encode.

        Each body counts as one row for ``max_batch`` and ``queue_rows``: its rows are only
        known once a worker has decoded it.
        """
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[BodyAnswer] = loop.create_future()
        refusal = self._refusal()
        if refusal is None and not self.accepts_bodies:
            future.set_exception(ExecutorError("this executor takes tensors only", "error"))
            return future
        return self._admit(future, body, 1, BODY_KEY, timeout_s, refusal)

    def _admit(
        self,
        future: asyncio.Future[Any],
        inputs: dict[str, np.ndarray] | bytes,
        rows: int,
        key: Hashable,
        timeout_s: float,
        refusal: str | None,
    ) -> asyncio.Future[Any]:
        if refusal is not None:
            future.set_exception(ExecutorError(refusal, "dropped"))
            return future
        if self._queued_rows + rows > self.settings.queue_rows:
            future.set_exception(
                ExecutorError(
                    f"queue full: {self._queued_rows} rows waiting, {rows} more would pass "
                    f"queue_rows={self.settings.queue_rows}",
                    "dropped",
                )
            )
            return future
        if timeout_s <= 0:
            self.timeouts += 1
            future.set_exception(ExecutorError("deadline already passed", "timeout"))
            return future
        request = Request(inputs, rows, key, future, time.perf_counter(), timeout_s)
        self._queue.append(request)
        self._queued_rows += rows
        heapq.heappush(self._deadlines, (request.deadline, next(self._seq), request))
        if request.deadline < self._deadline_at:
            self._arm_deadline(request.deadline)
        if not self._pump_scheduled and (
            self._fill_timer is None or self._queued_rows >= self.settings.max_batch
        ):
            # Requests submitted in the same loop iteration get the chance to share a batch.
            # While a batch is filling, its timer pumps when it is due: only a full batch
            # needs a pump sooner.
            self._pump_scheduled = True
            future.get_loop().call_soon(self._pump)
        return future

    # -- batching --------------------------------------------------------------------

    def _pump(self) -> None:
        """Send batches while a worker is free and a batch is due."""
        self._pump_scheduled = False
        if self._state != "running" or self._disabled_reason is not None:
            return
        queue = self._queue
        while queue:
            head = queue[0]
            if not head.waiting:
                queue.popleft()
                continue
            worker = self._free_worker()
            if worker is None:
                return  # a worker becoming free pumps again
            # Bodies always batch (the worker stacks what it can); tensors when stackable.
            batching = self._batching or (head.key is BODY_KEY and self.settings.max_batch > 1)
            if batching and not head.alone and self._queued_rows < self.settings.max_batch:
                # Never more than half the row's deadline: the other half is the model's.
                fill = min(self._max_wait_s, FILL_DEADLINE_SHARE * head.timeout_s)
                wait = head.submitted + fill - time.perf_counter()
                if wait > TIMER_SLACK_S:
                    if self._fill_timer is None:
                        self._arm_fill(wait)
                    return
            requests = take_batch(queue, self.settings.max_batch if batching else 1)
            self._dispatch(worker, requests)

    def _arm_fill(self, delay: float) -> None:
        # Armed for the oldest waiting row; firing early for a newer head is harmless, the
        # pump re-arms.
        assert self._loop is not None
        self._fill_timer = self._loop.call_later(delay, self._on_fill)

    def _on_fill(self) -> None:
        self._fill_timer = None
        self._pump()

    def _dispatch(self, worker: W, requests: list[Request]) -> None:
        if requests[0].key is BODY_KEY:
            bodies: list[bytes] = []
            for request in requests:
                request.state = SENT
                self._queued_rows -= request.rows
                assert isinstance(request.inputs, bytes)
                bodies.append(request.inputs)
                if len(requests) == 1:
                    request.inputs = None  # kept otherwise, to run alone if refused
            self._send_bodies(
                worker, Batch(next(self._batch_ids), requests, time.perf_counter()), bodies
            )
            return
        parts: list[dict[str, np.ndarray]] = []
        for request in requests:
            request.state = SENT
            self._queued_rows -= request.rows
            assert isinstance(request.inputs, dict)
            parts.append(request.inputs)
            if len(requests) == 1:
                # The batch holds the inputs; the request no longer needs its arrays. In a
                # batch of several they are kept, to run alone if the model refuses the
                # batch, until it is answered.
                request.inputs = None
        batch = Batch(next(self._batch_ids), requests, time.perf_counter())
        try:
            inputs = stack(parts)
            self._send(worker, batch, inputs)
        except (TypeError, ValueError) as exc:
            self._fail_batch(batch, f"inputs cannot be sent to the model: {exc}", "invalid")

    # -- answers ---------------------------------------------------------------------

    def _complete(
        self,
        batch: Batch,
        outputs: dict[str, np.ndarray],
        compute_s: float,
        cpu_s: float,
        wait_s: float = 0.0,
    ) -> None:
        """The worker ran ``batch``: account for it and answer every request still waiting."""
        round_trip = time.perf_counter() - batch.sent_at
        requests = batch.requests
        try:
            parts = split(outputs, [r.rows for r in requests])
        except BatchError as exc:
            self._fail_batch(batch, str(exc), "error")
            return
        ipc_s = max(0.0, round_trip - compute_s)
        self.batches += 1
        self.requests += len(requests)
        self.rows += batch.rows
        self.batch_cpu_seconds += cpu_s
        self.compute_seconds += compute_s * len(requests)
        self.ipc_seconds += ipc_s * len(requests)
        cpu_per_row = cpu_s / batch.rows
        for request, part in zip(requests, parts, strict=True):
            request.inputs = None
            queue_s = batch.sent_at - request.submitted
            self.queue_seconds += queue_s
            if request.state == DONE:
                continue  # timed out meanwhile; its answer is no longer wanted
            request.state = DONE
            if not request.future.done():
                request.future.set_result(
                    Inference(part, queue_s, ipc_s, compute_s, cpu_per_row * request.rows, wait_s)
                )

    def _complete_bodies(
        self,
        batch: Batch,
        answers: tuple[tuple[int, int, bytes], ...],
        compute_s: float,
        cpu_s: float,
        wait_s: float = 0.0,
    ) -> None:
        """The worker answered a batch of bodies: one answer per body, in order."""
        requests = batch.requests
        if len(answers) != len(requests):
            self._fail_batch(batch, f"{len(answers)} answers to {len(requests)} bodies", "error")
            return
        round_trip = time.perf_counter() - batch.sent_at
        ipc_s = max(0.0, round_trip - compute_s)
        n = len(requests)
        rows = sum(r for _, r, _ in answers)
        self.batches += 1
        self.requests += n
        self.rows += rows
        self.batch_cpu_seconds += cpu_s
        self.compute_seconds += compute_s * n
        self.ipc_seconds += ipc_s * n
        # The batch's CPU is shared by row, as for tensors (_complete): a 1,000-row body
        # costs what its rows cost. With no row run (every body invalid), per body.
        for request, (status, body_rows, data) in zip(requests, answers, strict=True):
            request.inputs = None
            cpu_share = cpu_s * body_rows / rows if rows else cpu_s / n
            queue_s = batch.sent_at - request.submitted
            self.queue_seconds += queue_s
            if request.state == DONE:
                continue
            request.state = DONE
            if request.future.done():
                continue
            if status == ANSWER_OK:
                answer = BodyAnswer(data, "", "", queue_s, ipc_s, compute_s, cpu_share, wait_s)
            else:
                reason, _, message = data.decode("utf-8", "replace").partition("\0")
                answer = BodyAnswer(
                    b"", reason, message, queue_s, ipc_s, compute_s, cpu_share, wait_s
                )
            request.future.set_result(answer)

    def _refused(self, batch: Batch, message: str, outcome: FailureOutcome) -> None:
        """The model raised on ``batch`` as a whole.

        When it refused the inputs (``invalid``: a Gather index out of range, a shape only
        one request got wrong) and the batch held several requests, the fault is one
        request's, not every request's: each one still waiting runs again alone, first in
        the queue, so only the culprit gets ``invalid`` (a 400, if this is production) and
        the others their answers. Any other failure fails the whole batch.
        """
        if outcome != "invalid" or len(batch.requests) < 2:
            self._fail_batch(batch, message, outcome)
            return
        # A batch of several keeps its requests' inputs until it is answered (_dispatch).
        waiting = [r for r in batch.requests if r.state != DONE]
        log.info(
            "executor %r: the model refused a batch of %d requests (%s); running each alone",
            self.name, len(batch.requests), message,
        )  # fmt: skip
        for request in reversed(waiting):
            request.state = QUEUED
            request.alone = True
            self._queue.appendleft(request)
            self._queued_rows += request.rows
        # The caller pumps once the worker is free again.

    def _fail_batch(self, batch: Batch, message: str, outcome: FailureOutcome) -> None:
        for request in batch.requests:
            self._fail(request, message, outcome)

    def _fail(
        self, request: Request, message: str, outcome: FailureOutcome, reason: str | None = None
    ) -> None:
        if request.state == QUEUED:
            self._queued_rows -= request.rows
        elif request.state == DONE:
            return
        request.state = DONE
        request.inputs = None
        if not request.future.done():
            # One exception object per future: a shared one would collect every awaiter's
            # traceback.
            request.future.set_exception(ExecutorError(message, outcome, reason=reason))

    def _fail_queued(self, message: str, outcome: FailureOutcome) -> None:
        while self._queue:
            self._fail(self._queue.popleft(), message, outcome)

    # -- deadlines -------------------------------------------------------------------

    def _arm_deadline(self, at: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        assert self._loop is not None
        self._deadline_at = at
        self._deadline_timer = self._loop.call_later(
            max(0.0, at - time.perf_counter()), self._on_deadline
        )

    def _on_deadline(self) -> None:
        self._deadline_timer = None
        self._deadline_at = math.inf
        now = time.perf_counter()
        heap = self._deadlines
        while heap:
            deadline, _, request = heap[0]
            if request.state != DONE and deadline > now + TIMER_SLACK_S:
                self._arm_deadline(deadline)
                return
            heapq.heappop(heap)
            if request.state != DONE:
                self._expire(request, now)

    def _expire(self, request: Request, now: float) -> None:
        """Fail a request past its deadline: ``timeout``, unless the model never had the
        CPU to answer it.

        A worker under ``SCHED_IDLE`` on a core production keeps busy waits for a CPU; its
        requests miss their deadline through no fault of the model. Counted as timeouts,
        they would fail a healthy candidate's ``timeout_rate`` gate on a saturated replica.
        So when, over the request's life, its workers waited for a CPU at least
        ``STARVED_MIN_S`` in all and at least ``STARVED_SHARE`` of the time they wanted
        one, and still want one at its deadline (not asleep in a hang), the request is
        ``dropped`` with reason ``starved`` instead: left out of the candidate's rates like
        every other request the proxy sheds, and counted.
        """
        where = "waiting for a worker" if request.state == QUEUED else "in the model"
        budget = f"no answer within {request.timeout_s * 1000:.0f} ms ({where})"
        waited, wanted = self._cpu_wait(request, now)
        if waited >= STARVED_MIN_S and waited >= STARVED_SHARE * wanted:
            self.starved += 1
            message = (
                f"{budget}: its worker waited {waited * 1000:.0f} ms for a CPU, "
                f"{waited / wanted:.0%} of the time it wanted one"
            )
            self._fail(request, message, "dropped", reason="starved")
            return
        self.timeouts += 1
        self._fail(request, budget, "timeout")

    def _cpu_wait(self, request: Request, now: float) -> tuple[float, float]:
        """``(waited, wanted)``: the seconds ``request``'s workers waited for a CPU, and
        waited or ran, over its life.

        Executors whose workers the proxy cannot observe apart answer ``(0, 0)``.
        """
        return 0.0, 0.0

    def _stop_timers(self) -> None:
        for timer in (self._deadline_timer, self._fill_timer):
            if timer is not None:
                timer.cancel()
        self._deadline_timer = self._fill_timer = None
        self._deadline_at = math.inf
        self._deadlines.clear()
