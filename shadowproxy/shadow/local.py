"""Mirroring requests to a local ONNX candidate run by an executor.

The request body is decoded with the configured payload protocol into the model's named
inputs, run, and the model's outputs are encoded back as that protocol's response: the pair
record then holds what this candidate would have answered, exactly as for a remote one,
plus what the answer cost. Nothing waits for it on the production path.

With the process executor, all of that happens in the worker: the raw body is batched and
sent as it is, so the proxy's event loop neither parses the untrusted payload nor touches
numpy for it (profiles showed decoding on the loop cost the proxy twice what it costs in
isolation, through cache pressure on everything else it does). The thread executor takes
tensors decoded here.

A body the candidate cannot take (bad shape, dtype, NaN, ...) is the ``invalid`` outcome
with the payload reason, counted per reason; it never touches production, and it is not a
failure of the candidate, so the breaker does not count it.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from shadowproxy.config.model import Baseline, Candidate
from shadowproxy.errors import ExecutorError, PayloadError
from shadowproxy.executor import BodyAnswer, Inference, LocalExecutor
from shadowproxy.observability.metrics import Metrics
from shadowproxy.pairing.join import PairJoin
from shadowproxy.pairing.record import Cost, Exchange, Outcome, Role
from shadowproxy.protocols import PayloadProtocol
from shadowproxy.proxy.connection import Request
from shadowproxy.shadow.breaker import Permit
from shadowproxy.shadow.target import MirroredTarget

JSON = "application/json"


class Footprint:
    """A local model's memory, threads and child processes, for every pair record.

    The executor's sampler refreshes these a few times a second; reading its full figures
    per request would cost more than the rest of the record, so they are re-read at most
    every ``max_age_s``.
    """

    __slots__ = ("executor", "max_age_s", "read_at", "rss_bytes", "threads", "children")

    def __init__(self, executor: LocalExecutor, max_age_s: float = 0.25) -> None:
        self.executor = executor
        self.max_age_s = max_age_s
        self.read_at = -max_age_s
        self.rss_bytes = 0.0
        self.threads = 0
        self.children = 0

    def cost(self, inference: Inference | BodyAnswer) -> Cost:
        """One call's cost, with the model process's current footprint."""
        now = time.monotonic()
        if now - self.read_at >= self.max_age_s:
            figures = self.executor.resources()
            self.read_at = now
            self.rss_bytes = float(figures.rss_bytes)
            self.threads = figures.threads
            self.children = figures.child_processes
        return Cost(
            cpu_s=inference.cpu_s,
            compute_s=inference.compute_s,
            queue_s=inference.queue_s,
            ipc_s=inference.ipc_s,
            rss_bytes=self.rss_bytes,
            threads=self.threads,
            child_processes=self.children,
        )


class LocalShadowTarget(MirroredTarget):
    """A candidate that is a local model: budget, breaker and counters, like an HTTP one."""

    def __init__(
        self,
        config: Candidate | Baseline,
        role: Role,
        executor: LocalExecutor,
        protocol: PayloadProtocol,
        *,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
        salt: bytes = b"",
    ) -> None:
        self.in_flight = 0
        super().__init__(config, role, metrics=metrics, loop=loop, salt=salt)
        self.executor = executor
        self.footprint = Footprint(executor)
        self.protocol = protocol
        self.input_invalid = metrics.input_invalid

    def outstanding(self) -> int:
        return self.in_flight

    def mirror(self, request: Request, added: bytes, join: PairJoin, too_large: bool) -> None:
        """Hand the request to the model, or record why not. Never raises, never blocks."""
        if too_large:
            self.drop(join, "body_too_large")
        elif self.executor.disabled:
            self.drop(join, "disabled")
        elif self.executor.starting:
            self.drop(join, "starting")  # still loading or warming up: production serves on
        elif self.in_flight >= self.config.max_in_flight:
            self.drop(join, "budget")
        elif (permit := self.breaker.allow(self.loop.time())) is None:
            self.drop(join, "breaker_open")
        else:
            self._submit(request, join, permit)

    def _submit(self, request: Request, join: PairJoin, permit: Permit) -> None:
        started = time.perf_counter()
        if self.executor.accepts_bodies:
            # The worker decodes, runs and encodes: no payload parsing on the event loop.
            self.in_flight += 1
            answer = self.executor.submit_body(request.body, self.timeout_s)
            answer.add_done_callback(partial(self._body_answered, join, started, permit))
            return
        try:
            decoded = self.protocol.decode_request(request.body, self.executor.signature.inputs)
        except PayloadError as exc:
            self.breaker.release(permit)  # the request's fault: nothing learnt of the model
            self.input_invalid.labels(self.name, self.version, exc.reason).inc()
            self.stats.record("invalid", None)
            self._publish(join, "invalid", started, detail=f"input_invalid: {exc}")
            return
        self.in_flight += 1
        future = self.executor.submit(decoded.arrays, decoded.rows, self.timeout_s)
        # The answer echoes the request's own id (v2), if it has one, as production's and
        # the process executor's do.
        answered = partial(self._answered, join, started, permit, decoded.id, rows=decoded.rows)
        future.add_done_callback(answered)

    def _answered(
        self,
        join: PairJoin,
        started: float,
        permit: Permit,
        request_id: str | None,
        future: asyncio.Future[Inference] | asyncio.Future[BodyAnswer],
        *,
        rows: int | None = None,
    ) -> None:
        self.in_flight -= 1
        latency = time.perf_counter() - started
        if future.cancelled():
            self.breaker.release(permit)
            self.stats.drops["shutdown"] += 1
            self.stats.record("dropped", None)
            self._publish(join, "dropped", started, detail="shutdown")
            return
        exc = future.exception()
        if exc is not None:
            outcome: Outcome = exc.outcome if isinstance(exc, ExecutorError) else "error"
            if outcome == "dropped":
                # Never answered through no fault of the model: counted under a drop reason,
                # like an HTTP target's, and left out of the candidate's rates.
                reason = (isinstance(exc, ExecutorError) and exc.reason) or self._drop_reason()
                if reason == "starved":
                    # Its worker had no CPU: the breaker still sheds what follows, so a
                    # saturated replica stops queueing requests for a model it cannot run.
                    self.breaker.record(permit, False, self.loop.time())
                else:
                    self.breaker.release(permit)
                self.stats.dropped(reason)
            elif outcome == "invalid":
                # The model refused this request's inputs: the request's fault, as a
                # protocol refusal is, so no failure of the candidate's.
                self.breaker.release(permit)
                self.stats.record(outcome, latency)
                self.stats.pairs += 1
            else:
                self.stats.record(outcome, latency)
                self.stats.pairs += 1
                self.breaker.record(permit, False, self.loop.time())
            self._publish(join, outcome, started, detail=str(exc))
            return
        inference = future.result()
        assert isinstance(inference, Inference)
        try:
            body = self.protocol.encode_response(
                inference.outputs,
                model_name=self.name,
                model_version=self.version,
                request_id=request_id,
                rows=rows,
            )
        except PayloadError as exc:
            # Outputs the protocol cannot carry: the model's fault, so an error (as the
            # process executor's worker counts it), not an invalid input.
            self.stats.record("error", latency)
            self.stats.pairs += 1
            self.breaker.record(permit, False, self.loop.time())
            self._publish(join, "error", started, detail=f"output: {exc}")
            return
        # The model's service time: the wait for its batch to fill and for a worker is
        # shadowproxy's own, not the candidate's (see _service_time).
        latency = _service_time(latency, inference.queue_s, inference.cpu_wait_s)
        self.stats.record("ok", latency)
        self.stats.pairs += 1
        self.breaker.record(permit, True, self.loop.time())
        self._publish(
            join, "ok", started, status=200, body=body,
            cost=self.footprint.cost(inference), latency_s=latency,
        )  # fmt: skip

    def _body_answered(
        self, join: PairJoin, started: float, permit: Permit, future: asyncio.Future[BodyAnswer]
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            self._answered(join, started, permit, "", future)  # the same failure accounting
            return
        self.in_flight -= 1
        answer = future.result()
        latency = _service_time(time.perf_counter() - started, answer.queue_s, answer.cpu_wait_s)
        if answer.invalid_reason:
            self.breaker.release(permit)
            self.input_invalid.labels(self.name, self.version, answer.invalid_reason).inc()
            self.stats.record("invalid", None)
            detail = f"input_invalid: {answer.invalid_message}"
            self._publish(join, "invalid", started, detail=detail)
            return
        self.stats.record("ok", latency)
        self.stats.pairs += 1
        self.breaker.record(permit, True, self.loop.time())
        self._publish(
            join, "ok", started, status=200, body=answer.body,
            cost=self.footprint.cost(answer), latency_s=latency,
        )  # fmt: skip

    def _drop_reason(self) -> str:
        if self.executor.disabled:
            return "disabled"
        if not self.executor.ready:
            return "shutdown"  # the executor is stopping
        return "budget"  # its queue was full (executor.queue_rows)

    def _publish(
        self,
        join: PairJoin,
        outcome: Outcome,
        started: float,
        *,
        status: int | None = None,
        body: bytes = b"",
        detail: str = "",
        cost: Cost | None = None,
        latency_s: float | None = None,
    ) -> None:
        join.shadow_done(
            self.name,
            Exchange(
                role=self.role,
                name=self.name,
                version=self.version,
                outcome=outcome,
                status=status,
                latency_s=time.perf_counter() - started if latency_s is None else latency_s,
                body=body,
                content_type=JSON if body else "",
                detail=detail,
                cost=cost,
            ),
        )

    async def close(self) -> None:
        await self.executor.close()


def _service_time(elapsed_s: float, queue_s: float, cpu_wait_s: float) -> float:
    """A local candidate's latency as the pair records it: from its batch's send to the
    answer, less the time its worker waited for a CPU meanwhile; the model's run and the
    transfer around it, as on a core of its own.

    The rest of ``elapsed_s`` is how shadowproxy runs shadow traffic, not how fast the
    model answers: ``queue_s``, the wait for the batch to fill (``max_wait_ms``) and for a
    free worker, and ``cpu_wait_s``, the worker's wait for a CPU production kept busy
    (it runs under ``SCHED_IDLE``). Either would set a candidate's latency gates against
    the proxy's settings or its load. Both stay visible: ``cost.queue_s``,
    ``shadowproxy_model_queue_seconds_total`` and ``shadowproxy_model_cpu_wait_seconds_total``.
    """
    return max(0.0, elapsed_s - queue_s - cpu_wait_s)
