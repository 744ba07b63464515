"""Relaying the production response to the client as it arrives.

The relay is the :class:`~shadowproxy.proxy.upstream.ResponseSink` of a production
exchange. Status, reason and headers are passed through (hop-by-hop removed); the body is
passed byte for byte when the upstream declared its length, and re-chunked otherwise.
Back-pressure runs end to end: a client that reads slowly pauses the upstream socket.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from shadowproxy.errors import UpstreamError
from shadowproxy.pairing.record import Exchange, Outcome
from shadowproxy.proxy.connection import ClientConnection, Request, error_response
from shadowproxy.proxy.headers import ResponseHead
from shadowproxy.proxy.upstream import UpstreamConnection
from shadowproxy.shadow.encoding import CONTENT_ENCODING, content_coding, decoder_for

if TYPE_CHECKING:
    from shadowproxy.pairing.join import PairJoin
    from shadowproxy.proxy.handler import Proxy


class ProductionRelay:
    """Carries one production exchange from upstream to client."""

    __slots__ = (
        "proxy", "client", "request", "request_id", "join", "capture_limit", "upstream",
        "started", "head_written", "pending_head", "chunked", "keep_alive", "status",
        "content_type", "captured", "captured_size", "body_size", "progress", "done",
        "coding", "ends_at_close",
    )  # fmt: skip

    def __init__(
        self, proxy: Proxy, client: ClientConnection, request: Request, request_id: str
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.request = request
        self.request_id = request_id
        self.join: PairJoin | None = None
        self.capture_limit = 0  # bytes of the body kept for the pair record
        self.upstream: UpstreamConnection | None = None
        self.started = time.perf_counter()
        self.head_written = False
        self.pending_head = b""
        self.chunked = False
        self.keep_alive = request.keep_alive
        self.status = 0
        self.content_type = b""
        self.captured: list[bytes] = []
        self.captured_size = 0
        self.body_size = 0
        self.progress = 0
        self.done = False
        self.coding = b""  # the answer's Content-Encoding, when it is kept for a pair record
        self.ends_at_close = False  # the client reads the body until the connection closes

    # -- ResponseSink ---------------------------------------------------------------------
    @property
    def abandoned(self) -> bool:
        return self.done

    def attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        if self.client.write_paused:
            conn.pause_reading()

    def on_head(self, status: int, reason: bytes, head: ResponseHead, framed: bool) -> None:
        if self.done:
            return
        self.status = status
        if not self.proxy.has_answered:
            self.proxy.production_answered(status)
        # A 204 carries no Content-Length (RFC 9110 §8.6), whatever the upstream wrote.
        block = head.relay_block() if status != 204 else head.relay_block(keep_length=False)
        self.content_type = head.content_type
        if self.capture_limit and CONTENT_ENCODING in head.lows:
            self.coding = content_coding(head.lows, head.lines)
        framing = b""
        no_body = self.request.method == b"HEAD" or status in (204, 304)
        if not no_body and not head.has_length:
            if self.request.http_11:
                self.chunked = True
                framing = b"Transfer-Encoding: chunked\r\n"
            else:
                self.keep_alive = False  # an HTTP/1.0 client reads to end of stream
                self.ends_at_close = True
        if self.client.closing:
            self.keep_alive = False
        if not self.keep_alive:
            framing += b"Connection: close\r\n"
        elif not self.request.http_11:
            framing += b"Connection: keep-alive\r\n"
        # Held back until the first body bytes, so head and body leave in one write
        # (one syscall) and a failure before any body can still be a clean 502.
        self.pending_head = b"HTTP/1.1 %d %s\r\n%sX-Request-Id: %s\r\n%s\r\n" % (
            status, reason, block, self.request_id.encode(), framing,
        )  # fmt: skip

    def on_body(self, data: bytes) -> None:
        if self.done:
            return
        self.body_size += len(data)
        if self.body_size > self.proxy.limits.max_response_bytes:
            self._abort(UpstreamError("production response exceeds max_response_bytes", "invalid"))
            return
        if self.capture_limit and self.captured_size < self.capture_limit:
            self.captured.append(data)
            self.captured_size += len(data)
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self.pending_head:
            data = self.pending_head + data
            self.pending_head = b""
            self.head_written = True
        self.client.write(data)

    def on_complete(self) -> None:
        if self.done:
            return
        tail = b"0\r\n\r\n" if self.chunked else b""
        if self.pending_head:
            tail = self.pending_head + tail
            self.pending_head = b""
            self.head_written = True
        if tail:
            self.client.write(tail)
        outcome: Outcome = "ok" if 200 <= self.status < 300 else "error"
        self._finish(outcome, "")
        self.client.finished(self.keep_alive)

    def on_error(self, exc: UpstreamError) -> None:
        if self.done:
            return
        if self.head_written:
            # Part of the response is out: the only honest signal left is a cut connection.
            # When the close itself ends the body, only a reset tells a cut from the end.
            self._finish(exc.outcome, str(exc))
            if self.ends_at_close:
                self.client.abort()
            else:
                self.client.close()
            return
        self.pending_head = b""
        status = 504 if exc.outcome == "timeout" else 502
        if exc.outcome != "dropped":  # a client that is gone is sent nothing: no status
            self.status = status
        message = "production timed out" if status == 504 else "production unavailable"
        if self.client.closing:  # draining: every answer says so, this one too
            self.keep_alive = False
        response = error_response(
            status, message, self.request_id, not self.keep_alive,
            head_only=self.request.method == b"HEAD",
        )  # fmt: skip
        self.client.write(response)
        self._finish(exc.outcome, str(exc))
        self.client.finished(self.keep_alive)

    # -- client side --------------------------------------------------------------------
    def pause(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def client_gone(self) -> None:
        """The client hung up mid-exchange (or the drain's grace ran out): stop reading
        production, keep the record."""
        if not self.done:
            # Not production's failure: counted as dropped, kept out of error rates.
            why = (
                "cut at the end of the drain"
                if self.proxy.closing
                else "client closed the connection"
            )
            self._abort(UpstreamError(why, "dropped"))

    # -- internals ------------------------------------------------------------------------
    def expire(self) -> None:
        """``production.timeout_ms`` passed: for the head, or without body progress.

        Once the head is in, a slow *client* (reading paused for back-pressure) or a body
        still arriving earns another window; only a stalled upstream times out.
        """
        if self.status and (self.client.write_paused or self.body_size != self.progress):
            self.progress = self.body_size
            self.proxy.production_deadlines.add(self)
            return
        self._abort(UpstreamError("production timed out", "timeout"))

    def _decoded(self, body: bytes) -> tuple[bytes, str]:
        """The pair record's copy of a coded answer, decoded (the client got it as sent).

        Only for sampled requests, once the answer is complete, under the capture size:
        the comparator reads answers, not their gzip. An answer that cannot be decoded
        keeps nothing, and the record says why.
        """
        try:
            decoder = decoder_for(self.coding, self.capture_limit)
            if decoder is None:
                return body, ""
            decoded = decoder.feed(body)
            decoder.end()
        except UpstreamError as exc:
            return b"", f"production body not comparable: {exc}"
        return decoded, ""

    def _abort(self, exc: UpstreamError) -> None:
        if self.upstream is not None:
            self.upstream.abort()
        self.on_error(exc)

    def _finish(self, outcome: Outcome, detail: str) -> None:
        self.done = True
        latency = time.perf_counter() - self.started
        self.proxy.production_finished(outcome, latency)
        if self.join is not None:
            body = b"".join(self.captured)[: self.capture_limit]
            truncated = self.body_size > self.capture_limit
            if self.coding and outcome == "ok" and not truncated:
                body, detail = self._decoded(body)
            self.join.production_done(
                Exchange(
                    role="production",
                    name=self.proxy.production_name,
                    version=self.proxy.production_version,
                    outcome=outcome,
                    status=self.status or None,
                    latency_s=latency,
                    body=body,
                    content_type=self.content_type.decode("latin-1"),
                    detail=detail,
                    body_truncated=truncated,
                    cost=self.proxy.production_cost(),
                )
            )
