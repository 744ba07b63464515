"""Pooled keep-alive HTTP/1.1 connections to one upstream, on raw asyncio protocols.

This is the hot path's client: no task per request, no stream objects. A caller hands an
:class:`UpstreamConnection` the serialized request and a :class:`ResponseSink`, and the
parser callbacks drive the sink directly. Production relays the response to the client as
it arrives; shadows buffer it under a size cap.

A reused connection that the upstream closed while idle is retried once on a fresh
connection, but only for an idempotent method (RFC 9110 §9.2.2) and only when the upstream
sent no byte of a response. A silent close does not prove that the upstream did not act on
the request (it may have crashed while running it), so a POST is never sent twice: to keep
that race rare, an idle connection is reused only for ``REUSE_IDLE_S`` after its last
answer, well inside the keep-alive timeouts of common model servers.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import socket
from collections.abc import Sequence
from typing import Protocol, cast
from urllib.parse import unquote, urlsplit

import httptools

from shadowproxy.errors import UpstreamError
from shadowproxy.proxy.headers import ResponseHead, header_block

# An idle connection older than this is closed rather than reused: gunicorn closes idle
# keep-alive connections after 2 s, uvicorn after 5 s, and a request sent as the upstream
# closes is lost (only idempotent ones are retried).
REUSE_IDLE_S = 1.0
# Largest response head (status line and headers) read from an upstream: an answer with a
# larger one is refused as invalid, as Envoy's 60 KiB and nginx's proxy_buffer_size refuse.
MAX_RESPONSE_HEAD_BYTES = 128 * 1024
# Request-line starts of the idempotent methods (RFC 9110 §9.2.2), for one startswith.
_IDEMPOTENT = tuple(m + b" " for m in (b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


class ResponseSink(Protocol):
    """Receives one upstream response. Exactly one of complete/error is called."""

    @property
    def abandoned(self) -> bool:
        """The caller gave up on the answer (its deadline passed, its client left): a
        connection that opens after that is pooled without the request being sent."""

    def attach(self, conn: UpstreamConnection) -> None:
        """The connection now carrying the exchange (so a deadline can abort it)."""

    def on_head(self, status: int, reason: bytes, head: ResponseHead, framed: bool) -> None:
        """Status line and headers; ``framed`` is False for a close-delimited body."""

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self) -> None: ...

    def on_error(self, exc: UpstreamError) -> None: ...


class UpstreamTarget:
    """Where an upstream lives, parsed once from its configured base URL."""

    __slots__ = ("url", "host", "port", "path_prefix", "host_header", "headers", "header_names")

    def __init__(self, url: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise UpstreamError("unsupported upstream URL: expected http://host[:port]")
        pairs = list(headers)
        if parts.username is not None and not any(n.lower() == "authorization" for n, _ in pairs):
            # Credentials in the URL are sent as Basic auth, as any HTTP client would.
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            pairs.append(("Authorization", "Basic " + base64.b64encode(token).decode()))
        self.url = url
        self.headers = header_block(pairs)
        self.header_names = frozenset(n.lower().encode() for n, _ in pairs)
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path_prefix = parts.path.rstrip("/").encode()
        default_port = parts.port in (None, 80)
        self.host_header = (self.host if default_port else f"{self.host}:{self.port}").encode()

    def target_path(self, path: bytes) -> bytes:
        # "OPTIONS *" asks about the server as a whole: no prefix makes it a path.
        return self.path_prefix + path if self.path_prefix and path != b"*" else path


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection. Carries one exchange at a time (no pipelining)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._sink: ResponseSink | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._head_sent = False
        self._bytes_seen = 0
        self._head_request = False
        self._framed = True
        self._stray = False
        self._reading_paused = False
        self.reused = False
        self.closed = False
        self.idle_since = 0.0
        self._retry: tuple[bytes, ResponseSink, bool] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not a TCP socket (tests may use unix sockets)
                pass

    def data_received(self, data: bytes) -> None:
        if self._sink is None:
            # Bytes nobody asked for: the stream is out of sync, never reuse it.
            self.abort()
            return
        self._bytes_seen += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A 101 (or CONNECT answer) to a request that asked for no upgrade.
            self._fail(UpstreamError(f"{self._pool.name} switched protocols unasked", "invalid"))
        except httptools.HttpParserError as exc:
            self._fail(
                UpstreamError(f"malformed response from {self._pool.name}: {exc}", "invalid")
            )
        if self._sink is None:
            # The answer ended in this read (or the connection was dropped meanwhile).
            # Kept, the connection goes back to the pool only now that the rest of the
            # buffer was seen: bytes after the answer's end (more than its Content-Length,
            # a body on a 204) mean the next answer on it could be anybody's.
            if self._stray:
                self.abort()
            elif not self.closed:
                self._pool.release(self)
        elif not self._head_sent and self._bytes_seen > MAX_RESPONSE_HEAD_BYTES:
            # httptools holds a header line whole until it ends: cut an endless head here.
            self._fail(self._head_too_large())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        sink = self._sink
        if sink is None:
            return
        if self._head_sent and not self._framed:
            self._sink = None
            if exc is None:
                # A close-delimited body ends when the connection does (RFC 9112 §6.3).
                sink.on_complete()
            else:
                # A reset is not an end: the body may be cut short (RFC 9112 §8).
                sink.on_error(
                    UpstreamError(f"{self._pool.name} reset the connection mid-body", "error")
                )
            return
        if self._bytes_seen == 0 and self.reused and self._retry is not None:
            self._sink = None
            request, retry_sink, head = self._retry
            self._pool.resend(request, retry_sink, head)
            return
        self._fail(UpstreamError(f"{self._pool.name} closed the connection mid-response", "error"))

    def pause_writing(self) -> None:  # upstream slow to read our request: nothing to do
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ------------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        if self._sink is None:
            # A status line after the answer was complete. (Fewer stray bytes than a
            # status line break the next answer's parse instead: a 502, never a desync.)
            self._stray = True
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._sink is None:
            self._stray = True  # a stray answer after the one asked for (see data_received)
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # Interim responses (100 Continue, 103 Early Hints) are not relayed.
            self._raw_headers = []
            self._reason = b""
            return
        if (
            self._bytes_seen > MAX_RESPONSE_HEAD_BYTES
            and self._head_size() > MAX_RESPONSE_HEAD_BYTES
        ):
            self._fail(self._head_too_large())
            return
        head = ResponseHead(self._raw_headers)
        if head.other_coding and not self._head_request:
            coding = head.other_coding.decode("latin-1")
            self._fail(
                UpstreamError(
                    f"{self._pool.name} answered with transfer coding {coding!r}; "
                    "only chunked is supported",
                    "invalid",
                )
            )
            return
        self._head_sent = True
        no_body = self._head_request or status in (204, 304)
        # Without a length or chunked coding the body runs until the upstream closes.
        self._framed = no_body or head.has_length or head.chunked
        self._sink.on_head(status, self._reason, head, self._framed)
        if self._head_request and self._sink is not None:
            # llhttp cannot be told that a HEAD response has no body: finish it ourselves
            # and start a fresh parser for the next response on this connection (asked
            # whether to keep the connection first: a fresh parser has no answer to that).
            keep_alive = self._parser.should_keep_alive()
            self._parser = httptools.HttpResponseParser(self)
            self._complete(keep_alive)

    def on_body(self, body: bytes) -> None:
        if self._sink is not None:
            self._sink.on_body(body)

    def on_message_complete(self) -> None:
        if self._head_sent and self._sink is not None:
            self._complete(self._parser.should_keep_alive())

    def _head_size(self) -> int:
        return len(self._reason) + sum(len(n) + len(v) + 4 for n, v in self._raw_headers)

    def _head_too_large(self) -> UpstreamError:
        limit = MAX_RESPONSE_HEAD_BYTES
        return UpstreamError(
            f"{self._pool.name} sent a response head over {limit} bytes", "invalid"
        )

    # -- exchange -----------------------------------------------------------------------
    def send(self, request: bytes, sink: ResponseSink, head_request: bool = False) -> None:
        assert self.transport is not None and self._sink is None
        self._sink = sink
        self._raw_headers = []
        self._reason = b""
        self._head_sent = False
        self._bytes_seen = 0
        self._head_request = head_request
        self._framed = True
        # Only an idempotent request is sent again if the reused connection turns out to
        # be closed (see the module's docs). (No _stray to reset: a stray answer drops the
        # connection for good.)
        retry = self.reused and request.startswith(_IDEMPOTENT)
        self._retry = (request, sink, head_request) if retry else None
        sink.attach(self)
        self.transport.write(request)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection; any sink attached is no longer called."""
        self._sink = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _complete(self, keep_alive: bool) -> None:
        sink, self._sink = self._sink, None
        self._retry = None
        if keep_alive and self._framed and not self.closed:
            # Reading may have been paused for a slow client (ProductionRelay): the next
            # exchange on this connection must be able to read its answer.
            if self._reading_paused:
                self.resume_reading()
            # Always inside feed_data (a parser callback): data_received releases it.
        else:
            self.abort()
        assert sink is not None
        sink.on_complete()

    def _fail(self, exc: UpstreamError) -> None:
        sink = self._sink
        self.abort()
        if sink is not None:
            sink.on_error(exc)


class UpstreamPool:
    """Idle keep-alive connections to one upstream, most recently used first.

    LIFO reuse keeps the hot set small so surplus connections idle out at the upstream.
    Opening a connection is the only awaited step; it runs in a task that the pool keeps a
    reference to until it finishes.
    """

    def __init__(
        self,
        name: str,
        target: UpstreamTarget,
        *,
        connect_timeout_s: float,
        max_idle: int,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self._loop = loop or asyncio.get_running_loop()
        self._time = self._loop.time
        self._idle: collections.deque[UpstreamConnection] = collections.deque()
        self._connecting: set[asyncio.Task[None]] = set()
        self._closed = False

    def request(self, request: bytes, sink: ResponseSink, head_request: bool = False) -> None:
        """Send ``request`` on an idle connection, or on a new one once it is open."""
        if self._closed:
            sink.on_error(UpstreamError(f"{self.name}: pool is closed", "error"))
            return
        oldest = self._time() - REUSE_IDLE_S
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < oldest:
                conn.abort()  # the upstream may be closing it right now
                continue
            conn.reused = True
            conn.send(request, sink, head_request)
            return
        self.resend(request, sink, head_request)

    def resend(self, request: bytes, sink: ResponseSink, head_request: bool) -> None:
        """Send on a brand-new connection (also the stale-connection retry path)."""
        task = self._loop.create_task(self._connect_and_send(request, sink, head_request))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect_and_send(self, request: bytes, sink: ResponseSink, head: bool) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self._loop.create_connection(
                    lambda: UpstreamConnection(self), self.target.host, self.target.port
                )
        except TimeoutError:
            sink.on_error(UpstreamError(f"{self.name}: connect timed out", "timeout"))
            return
        except OSError as exc:
            reason = exc.strerror or exc.__class__.__name__
            sink.on_error(UpstreamError(f"{self.name}: cannot connect: {reason}", "error"))
            return
        if self._closed:
            conn.abort()
            sink.on_error(UpstreamError(f"{self.name}: pool is closed", "error"))
            return
        if sink.abandoned:
            # Sent now, the request would reach the upstream after its caller was answered
            # (a 504, a shadow timeout), outside any in-flight budget, and a POST would be
            # run with nobody waiting. The fresh connection serves the next request instead.
            self.release(conn)
            return
        conn.send(request, sink, head)

    def release(self, conn: UpstreamConnection) -> None:
        if self._closed or len(self._idle) >= self.max_idle:
            conn.abort()
        else:
            conn.idle_since = self._time()
            self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    async def close(self) -> None:
        """Close idle connections and cancel pending connects."""
        self._closed = True
        while self._idle:
            self._idle.pop().abort()
        for task in list(self._connecting):
            task.cancel()
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)


_BODILESS_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"})


def build_request(
    method: bytes, path: bytes, host: bytes, header_block: bytes, body: bytes
) -> bytes:
    """Serialize an HTTP/1.1 request; ``header_block`` is ``Name: value\\r\\n`` lines."""
    if body or method not in _BODILESS_METHODS:
        return b"%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
            method, path, host, header_block, len(body), body,
        )  # fmt: skip
    return b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (method, path, host, header_block)
