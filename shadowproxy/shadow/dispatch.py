"""Mirroring requests to shadow targets (candidates and the baseline).

A shadow call is started after the production request is on the wire and is never
awaited by the production path. Each target has an in-flight budget, a deadline and a
circuit breaker; whatever happens to a call becomes one counted outcome and one entry in
the request's pair record. Calls in flight are kept in a set so shutdown can cancel them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from shadowproxy.config.model import Baseline, Candidate, Limits
from shadowproxy.errors import UpstreamError
from shadowproxy.observability.metrics import Metrics
from shadowproxy.pairing.join import PairJoin
from shadowproxy.pairing.record import Cost, Exchange, Outcome, Role, no_cost
from shadowproxy.proxy.connection import Request
from shadowproxy.proxy.deadlines import DeadlineQueue
from shadowproxy.proxy.headers import ResponseHead
from shadowproxy.proxy.upstream import (
    UpstreamConnection,
    UpstreamPool,
    UpstreamTarget,
    build_request,
)
from shadowproxy.shadow.breaker import Permit
from shadowproxy.shadow.encoding import CONTENT_ENCODING, CappedDecoder, content_coding, decoder_for
from shadowproxy.shadow.target import MirroredTarget

SHADOW_HEADER = b"X-Shadow-Request: 1\r\n"


class ShadowTarget(MirroredTarget):
    """One mirrored upstream with its budget, breaker and counters."""

    def __init__(
        self,
        config: Candidate | Baseline,
        role: Role,
        *,
        limits: Limits,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
        salt: bytes = b"",
    ) -> None:
        assert config.url is not None, "HTTP shadow targets need a url"
        self.calls: set[ShadowCall] = set()
        super().__init__(config, role, metrics=metrics, loop=loop, salt=salt)
        self.upstream = UpstreamTarget(config.url, config.headers)
        # Client headers left out of the copy: those the target's own headers replace, and
        # those it must not see.
        self.not_copied = self.upstream.header_names | frozenset(
            name.encode("latin-1") for name in config.drop_headers
        )
        self.pool = UpstreamPool(
            config.name,
            self.upstream,
            connect_timeout_s=config.connect_timeout_ms / 1000,
            max_idle=config.max_in_flight,
            loop=loop,
        )
        self.max_response_bytes = limits.shadow_max_response_bytes
        # The model's footprint for pair records; set when its metrics_url is scraped.
        self.cost: Callable[[], Cost | None] = no_cost
        self.deadlines = DeadlineQueue(loop, self.timeout_s)

    def outstanding(self) -> int:
        return len(self.calls)

    def mirror(self, request: Request, added: bytes, join: PairJoin, too_large: bool) -> None:
        """Send a copy of ``request``, or record why not. Never raises, never blocks.

        ``added`` is the forwarding header block production got; the copy also says
        ``X-Shadow-Request: 1`` and carries this target's own configured headers, and not
        the client headers listed in ``drop_headers``.
        """
        if too_large:
            self.drop(join, "body_too_large")
        elif len(self.calls) >= self.config.max_in_flight:
            self.drop(join, "budget")
        elif (permit := self.breaker.allow(self.loop.time())) is None:
            self.drop(join, "breaker_open")
        else:
            upstream = self.upstream
            data = build_request(
                request.method,
                upstream.target_path(request.target),
                upstream.host_header,
                request.head.forward_block(self.not_copied)
                + added + SHADOW_HEADER + upstream.headers,
                request.body,
            )  # fmt: skip
            ShadowCall(self, join, permit).start(data, request.method == b"HEAD")

    def finished(self, call: ShadowCall, outcome: Outcome, latency: float) -> None:
        self.calls.discard(call)
        if outcome == "dropped":
            self.stats.record(outcome, None)
            self.breaker.release(call.permit)
        else:
            self.stats.record(outcome, latency)
            self.stats.pairs += 1  # sent and answered (or failed): a pair for the comparator
            # A 4xx is the candidate judging the request (often as production does), not
            # the candidate failing: only 5xx, timeouts, resets and garbage count.
            status = call.status or 0
            success = outcome == "ok" or (outcome == "error" and 0 < status < 500)
            self.breaker.record(call.permit, success, self.loop.time())

    async def close(self) -> None:
        """Cancel every call in flight (counted as dropped: shutdown) and close the pool."""
        for call in list(self.calls):
            call.cancel()
        self.deadlines.close()
        await self.pool.close()


class ShadowCall:
    """One request mirrored to one target; the sink of its upstream exchange."""

    __slots__ = (
        "target", "join", "permit", "upstream", "started", "status", "content_type",
        "body", "size", "decoder", "done",
    )  # fmt: skip

    def __init__(self, target: ShadowTarget, join: PairJoin, permit: Permit) -> None:
        self.target = target
        self.join = join
        self.permit = permit
        self.upstream: UpstreamConnection | None = None
        self.started = 0.0
        self.status: int | None = None
        self.content_type = ""
        self.body: list[bytes] = []
        self.size = 0
        self.decoder: CappedDecoder | None = None
        self.done = False

    def start(self, request: bytes, head_request: bool = False) -> None:
        target = self.target
        target.calls.add(self)
        self.started = time.perf_counter()
        target.deadlines.add(self)
        target.pool.request(request, self, head_request)

    def cancel(self) -> None:
        if self.upstream is not None:
            self.upstream.abort()
        self.target.stats.drops["shutdown"] += 1
        self._finish("dropped", "shutdown")

    # -- ResponseSink ---------------------------------------------------------------------
    @property
    def abandoned(self) -> bool:
        return self.done

    def attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn

    def on_head(self, status: int, reason: bytes, head: ResponseHead, framed: bool) -> None:
        self.status = status
        self.content_type = head.content_type.decode("latin-1")
        if head.content_length > self.target.max_response_bytes:
            # Refused before a byte of it is read: an oversized answer costs nothing.
            self._too_large()
        elif CONTENT_ENCODING in head.lows:
            # Decoded as it arrives, under the same cap as the raw bytes (see .encoding).
            try:
                coding = content_coding(head.lows, head.lines)
                self.decoder = decoder_for(coding, self.target.max_response_bytes)
            except UpstreamError as exc:
                self._refuse(exc)

    def on_body(self, data: bytes) -> None:
        if self.done:
            return
        self.size += len(data)
        if self.size > self.target.max_response_bytes:
            self._too_large()
            return
        if self.decoder is not None:
            try:
                data = self.decoder.feed(data)
            except UpstreamError as exc:
                self._refuse(exc)
                return
        self.body.append(data)

    def _too_large(self) -> None:
        self._refuse(UpstreamError("response exceeds limits.shadow_max_response_bytes", "invalid"))

    def _refuse(self, exc: UpstreamError) -> None:
        """Stop reading an answer that cannot be used, and count it."""
        if self.upstream is not None:
            self.upstream.abort()
        self.body = []
        self._finish(exc.outcome, str(exc))

    def on_complete(self) -> None:
        if self.decoder is not None:
            try:
                self.decoder.end()
            except UpstreamError as exc:
                # The exchange is over (its connection already back in the pool): count it.
                self.body = []
                self._finish(exc.outcome, str(exc))
                return
        status = self.status or 0
        self._finish("ok" if 200 <= status < 300 else "error", "" if status < 300 else "status")

    def on_error(self, exc: UpstreamError) -> None:
        self._finish(exc.outcome, str(exc))

    # -- internals ------------------------------------------------------------------------
    def expire(self) -> None:
        """The shadow deadline (``timeout_ms``) passed before a complete answer."""
        if self.upstream is not None:
            self.upstream.abort()
        self._finish("timeout", f"no complete answer within {self.target.timeout_s * 1000:g} ms")

    def _finish(self, outcome: Outcome, detail: str) -> None:
        if self.done:
            return
        self.done = True
        latency = time.perf_counter() - self.started
        target = self.target
        if outcome in ("ok", "error") and latency > target.timeout_s:
            # Answered, but past the deadline: when the loop is busy an answer can be read
            # before the deadline's timer runs. The outcome follows the clock, not the order
            # of events.
            outcome = "timeout"
            detail = f"answered after {latency * 1000:.0f} ms, past {target.timeout_s * 1000:g} ms"
        target.finished(self, outcome, latency)
        self.join.shadow_done(
            target.name,
            Exchange(
                role=target.role,
                name=target.name,
                version=target.version,
                outcome=outcome,
                status=self.status,
                latency_s=latency,
                body=b"".join(self.body) if outcome in ("ok", "error") else b"",
                content_type=self.content_type,
                detail=detail,
                cost=target.cost(),
            ),
        )
