"""Production as a local model: shadowproxy serves the ONNX model itself.

With ``production.model`` there is no upstream: the traffic listener answers the payload
protocol's routes (inference, health, metadata) from a local executor, a thread executor
by default, with the same resource accounting as the candidates, so resource deltas
compare like with like. Sampled requests are still mirrored to every candidate.

Statuses: a body the model cannot take is a 400 in the protocol's error format; a call
past ``production.timeout_ms`` a 504; an executor that is full, disabled or stopping a
503; a model that fails while running a 500. Every answer carries ``X-Request-Id``.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING

from shadowproxy.errors import ExecutorError, PayloadError
from shadowproxy.executor import Inference, LocalExecutor
from shadowproxy.pairing.record import Cost, Exchange, Outcome
from shadowproxy.protocols import PayloadProtocol, Route, metadata, route
from shadowproxy.proxy.connection import ClientConnection, Request
from shadowproxy.shadow.local import JSON, Footprint

if TYPE_CHECKING:
    from shadowproxy.pairing.join import PairJoin
    from shadowproxy.proxy.handler import Proxy

_STATUS_LINES = {
    200: b"HTTP/1.1 200 OK\r\n",
    400: b"HTTP/1.1 400 Bad Request\r\n",
    404: b"HTTP/1.1 404 Not Found\r\n",
    405: b"HTTP/1.1 405 Method Not Allowed\r\n",
    500: b"HTTP/1.1 500 Internal Server Error\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\n",
    504: b"HTTP/1.1 504 Gateway Timeout\r\n",
}
_FAILURE_STATUS = {"timeout": 504, "dropped": 503, "invalid": 400, "error": 500}
# What a client is told of a failure that is not its request's: the details (a worker's
# stderr, onnxruntime's own words) go to the log and, for a mirrored request, the pair
# record; never to clients.
_FAILURE_MESSAGE = {
    "timeout": "the model did not answer in time",
    "dropped": "the model is not available",
    "error": "the model failed on this request",
}


def http_response(
    status: int,
    body: bytes,
    request_id: str,
    close: bool,
    *,
    head_only: bool = False,
    headers: bytes = b"",
) -> bytes:
    """A complete JSON response in one buffer (one write, one syscall).

    ``head_only`` answers a HEAD request: the same head, with the length the body would
    have, and no body (RFC 9110 §9.3.2). ``headers`` are extra header lines, CRLF-ended.
    """
    head = b"%sContent-Type: application/json\r\nContent-Length: %d\r\nX-Request-Id: %s\r\n" % (
        _STATUS_LINES[status], len(body), request_id.encode(),
    )  # fmt: skip
    head += headers + (b"Connection: close\r\n\r\n" if close else b"\r\n")
    return head if head_only else head + body


class LocalProduction:
    """The production model served in-process through an executor."""

    def __init__(
        self,
        proxy: Proxy,
        executor: LocalExecutor,
        protocol: PayloadProtocol,
        protocol_name: str,
    ) -> None:
        production = proxy.config.production
        self.proxy = proxy
        self.executor = executor
        self.footprint = Footprint(executor)
        self.protocol = protocol
        self.protocol_name = protocol_name
        self.name = production.name
        self.version = production.version
        self.timeout_s = production.timeout_ms / 1000

    def answer(self, request: Request, client: ClientConnection, request_id: str) -> LocalAnswer:
        """Start answering ``request``; the answer may already be complete on return."""
        answer = LocalAnswer(self, client, request, request_id)
        where = route(request.method, request.target, self.protocol_name, self.name, self.version)
        if where.kind == "infer":
            answer.inference = True
            self._infer(answer, request)
        elif where.kind == "method_not_allowed":
            allowed = ", ".join(where.allow)
            body = self.protocol.encode_error(f"method not allowed; use {allowed}")
            # RFC 9110 §15.5.6: a 405 lists the methods the route takes.
            answer.respond(405, body, None, headers=b"Allow: %s\r\n" % allowed.encode())
        else:
            status, body = self._route_answer(where)
            answer.respond(status, body, None)
        return answer

    def _route_answer(self, where: Route) -> tuple[int, bytes]:
        # The protocol's own readiness routes say what the admin port's /healthz/ready
        # says, so a probe aimed at either sees a drain, a missing worker or a loading model.
        ready = self.executor.ready and not self.proxy.not_ready()
        signature = self.executor.signature
        match where.kind:
            case "health_live":
                return 200, metadata.live()
            case "health_ready":
                return (200 if ready else 503), metadata.ready(ready)
            case "model_ready":
                return (200 if ready else 503), metadata.model_ready(self.name, ready)
            case "server_metadata":
                return 200, metadata.server_metadata()
            case "model_metadata":
                body = metadata.model_metadata(
                    self.name, self.version, signature.inputs, signature.outputs
                )
                return 200, body
            case _:
                return 404, self.protocol.encode_error("no such route or model")

    def _infer(self, answer: LocalAnswer, request: Request) -> None:
        proxy = self.proxy
        proxy.in_flight += 1
        signature = self.executor.signature
        try:
            decoded = self.protocol.decode_request(request.body, signature.inputs)
            unknown = set(decoded.outputs) - {o.name for o in signature.outputs}
            if unknown:
                raise PayloadError(f"outputs: the model has no {sorted(unknown)}", "bad_body")
        except PayloadError as exc:
            proxy.metrics.input_invalid.labels(self.name, self.version, exc.reason).inc()
            answer.respond(400, self.protocol.encode_error(str(exc)), "invalid", str(exc))
            return
        future = self.executor.submit(decoded.arrays, decoded.rows, self.timeout_s)
        answered = partial(self._answered, answer, decoded.outputs, decoded.id, rows=decoded.rows)
        future.add_done_callback(answered)

    def _answered(
        self,
        answer: LocalAnswer,
        wanted: tuple[str, ...],
        v2_id: str | None,
        future: asyncio.Future[Inference],
        *,
        rows: int | None = None,
    ) -> None:
        if future.cancelled():
            answer.respond(503, self.protocol.encode_error("shutting down"), "dropped", "shutdown")
            return
        exc = future.exception()
        if exc is not None:
            outcome: Outcome = exc.outcome if isinstance(exc, ExecutorError) else "error"
            status = _FAILURE_STATUS[outcome]
            told = str(exc) if outcome == "invalid" else _FAILURE_MESSAGE[outcome]
            answer.respond(status, self.protocol.encode_error(told), outcome, str(exc))
            return
        inference = future.result()
        outputs = inference.outputs
        if wanted:  # a v2 request may ask for some outputs only
            outputs = {name: outputs[name] for name in wanted}
        try:
            body = self.protocol.encode_response(
                outputs,
                model_name=self.name,
                model_version=self.version,
                # The protocol's own id, when the request gave one (the OIP echoes it);
                # the proxy's request id is in the X-Request-Id header either way.
                request_id=v2_id,
                rows=rows,
            )
        except PayloadError as exc:  # outputs the protocol cannot carry: the model's fault
            error_body = self.protocol.encode_error(_FAILURE_MESSAGE["error"])
            answer.respond(500, error_body, "error", str(exc))
            return
        answer.respond(200, body, "ok", "", self.footprint.cost(inference))


class LocalAnswer:
    """One request answered by the local production model (the connection's active exchange)."""

    __slots__ = (
        "production", "client", "request", "request_id", "join", "started", "inference",
        "done", "gone",
    )  # fmt: skip

    def __init__(
        self,
        production: LocalProduction,
        client: ClientConnection,
        request: Request,
        request_id: str,
    ) -> None:
        self.production = production
        self.client = client
        self.request = request
        self.request_id = request_id
        self.join: PairJoin | None = None
        self.started = time.perf_counter()
        self.inference = False  # an inference call, as opposed to a health or metadata route
        self.done = False
        self.gone = False

    # -- Answering: the whole answer is one write, so there is no upstream to pause ---------
    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def client_gone(self) -> None:
        self.gone = True

    def respond(
        self,
        status: int,
        body: bytes,
        outcome: Outcome | None,
        detail: str = "",
        cost: Cost | None = None,
        headers: bytes = b"",
    ) -> None:
        if self.done:
            return
        self.done = True
        keep_alive = self.request.keep_alive and not self.client.closing
        if not self.gone:
            response = http_response(
                status, body, self.request_id, not keep_alive,
                head_only=self.request.method == b"HEAD", headers=headers,
            )  # fmt: skip
            self.client.write(response)
        if outcome is not None:
            self._account(status, body, outcome, detail, cost)
        if not self.gone:
            self.client.finished(keep_alive)

    def _account(
        self, status: int, body: bytes, outcome: Outcome, detail: str, cost: Cost | None
    ) -> None:
        production = self.production
        proxy = production.proxy
        latency = time.perf_counter() - self.started
        if self.gone and outcome == "ok":
            outcome, detail = "dropped", "client closed the connection"
        proxy.production_finished(outcome, latency)
        if self.join is not None:
            self.join.production_done(
                Exchange(
                    role="production",
                    name=production.name,
                    version=production.version,
                    outcome=outcome,
                    status=status,
                    latency_s=latency,
                    body=body,
                    content_type=JSON,
                    detail=detail,
                    cost=cost,
                )
            )
