"""The traffic listener's per-connection protocol: strict parsing and client limits.

httptools (llhttp) already refuses the classic smuggling shapes: Content-Length together
with Transfer-Encoding, duplicate Content-Length, obfuscated Transfer-Encoding, bare LF,
NUL or CR in values, obsolete line folding and overflowing chunk sizes. On top of it this
module enforces what llhttp leaves to the application: the HTTP version, a single Host,
``chunked`` as the only transfer coding, header count and size, body size (declared or
chunked), and deadlines for slow clients.

A request is parsed completely, body included, before anything is forwarded: a request
that breaks a limit is answered here and never reaches production or a candidate.
Requests pipelined on one connection are answered strictly in order, and parsing stops
while ``limits.max_pipelined`` of them wait.

Protocol upgrades are never proxied. An offer of cleartext HTTP/2 (``Upgrade: h2c``) is
declined by serving the request in HTTP/1.1, as RFC 9110 §7.8 allows; any other offer
(WebSocket, ...) is refused with 400.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, Protocol, cast

import httptools
import orjson

from shadowproxy.config.model import Limits
from shadowproxy.proxy.headers import (
    RequestHead,
    has_dot_segment,
    list_tokens,
    offers_only_h2c,
    origin_target,
    pick_request_id,
    valid_host,
)

if TYPE_CHECKING:
    from shadowproxy.proxy.handler import Proxy

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


# SO_LINGER on, zero seconds: close() resets the connection (see ClientConnection.abort).
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


@dataclass(slots=True)
class Request:
    """A fully received client request."""

    method: bytes
    target: bytes
    http_11: bool
    head: RequestHead
    body: bytes
    keep_alive: bool


@dataclass(slots=True, frozen=True)
class Rejection:
    """A request refused by the proxy itself; answering it closes the connection."""

    status: int
    reason: str  # bounded metrics label
    message: str


class Answering(Protocol):
    """The exchange answering a connection's current request (the production relay)."""

    def pause(self) -> None:
        """The client stopped reading: stop reading the upstream too."""

    def resume(self) -> None: ...

    def client_gone(self) -> None:
        """The client hung up before the answer was complete."""


class _Refused(Exception):
    pass


class _Starting:
    """Stands in as the active exchange while ``Proxy.handle`` runs.

    An exchange can finish inside ``handle`` (a refused connection, a local model's
    health route); ``finished`` then moves on, and what ``handle`` returns is stale.
    """

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def client_gone(self) -> None:
        pass


_STARTING = _Starting()


_EMPTY_HEAD = RequestHead()  # placeholder until a head is complete; never mutated

# The parser is fed at most this many bytes at a time. llhttp parses all it is given, so
# one read of tiny pipelined requests (up to 256 KiB) would otherwise become thousands of
# queued requests, several times their size in memory, before reading could pause. Fed
# in slices, parsing stops within a slice of the queue filling; the rest waits as bytes.
_FEED_BYTES = 4096


def error_response(
    status: int, message: str, request_id: str, close: bool, *, head_only: bool = False
) -> bytes:
    """A small JSON error response written by the proxy itself; ``head_only`` (for a HEAD
    request) leaves the body out but keeps its length, as RFC 9110 §9.3.2 asks."""
    body = orjson.dumps({"error": message, "status": status, "request_id": request_id})
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
        b"Content-Type: application/json\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"X-Request-Id: " + request_id.encode() + b"\r\n",
    ]
    if close:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) if head_only else b"".join(head) + body


class ClientConnection(asyncio.Protocol):
    """One client connection on the traffic listener."""

    # Per-message parse state, (re)set by _reset_message.
    _in_message: bool
    _url: bytes

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.limits: Limits = proxy.limits
        self._host_seen = b""  # the last Host value found valid on this connection
        self._loop = proxy.loop
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[Request | Rejection] = collections.deque()
        self.active: Answering | None = None
        self._reading_paused = False
        self.write_paused = False
        self.closing = False  # finish the current response, then close
        self.peer_done = False  # the client half-closed: answer the queue, then close
        self.closed = False
        # One deadline at a time (head, body, keep-alive idle or send), checked by the
        # proxy's periodic sweep: cheaper than a timer armed and cancelled per request.
        self.deadline = 0.0
        self.deadline_reason = ""
        self._refusal: Rejection | None = None
        self._unparsed = b""  # read but not parsed: the queue filled up first
        self._declined_offer = False  # the head being parsed offered h2c
        self._reset_message()

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.proxy.connection_opened(self)
        # Opened during a drain: serve what comes, but ask the client to go elsewhere.
        self.closing = self.proxy.draining
        self._arm(self.limits.header_timeout_s, "header_timeout")

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # everything after a refused request is ignored
        if not self._in_message and self.deadline_reason != "header_timeout":
            self._arm(self.limits.header_timeout_s, "header_timeout")
        if self._unparsed:  # reading is paused, so only if the transport delivers late
            self._unparsed += data
        elif len(data) > _FEED_BYTES:
            self._parse(data)
        elif (replay := self._feed(data)) is not None:  # the usual case: a single feed
            self._parse(replay)

    def _parse(self, data: bytes) -> None:
        """Feed ``data`` slice by slice, keeping what is left when the queue fills."""
        view = memoryview(data)
        start = 0
        while start < len(view) and self._refusal is None:
            if self._reading_paused:
                self._unparsed = bytes(view[start:])
                return
            end = start + _FEED_BYTES
            replay = self._feed(view[start:end])
            start = end
            if replay is not None:
                view, start = memoryview(replay + view[start:]), 0

    def _feed(self, data: bytes | memoryview) -> bytes | None:
        """Parse ``data``; after a declined h2c offer, the bytes to parse next instead."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            self._refuse(self._refusal or Rejection(400, "malformed", "malformed request"))
        except httptools.HttpParserUpgrade as exc:
            if self._declined_offer:
                return self._head_without_offer() + data[exc.args[0] :]
            self._refuse(Rejection(400, "unsupported", "protocol upgrades are not proxied"))
        except httptools.HttpParserError as exc:
            self._refuse(Rejection(400, "malformed", f"malformed request: {exc}"))
        return None

    def _head_without_offer(self) -> bytes:
        """The head just parsed, without its ``Upgrade`` line, for a fresh parser.

        llhttp treats everything after an upgrade offer's head as another protocol, body
        included, and cannot be told to carry on. Parsed again without the offer, the
        request takes the usual path: limits, framing and body are checked as for any.
        ``Connection`` still names ``Upgrade`` and ``HTTP2-Settings``, so neither is
        forwarded.
        """
        parser = self._parser
        lines = [
            b"%s %s HTTP/%s\r\n"
            % (parser.get_method(), self._url, parser.get_http_version().encode())
        ]
        # Host as decided for this request: an absolute-form target's authority wins over
        # the Host line (RFC 9112 §3.2.2), and the target is already in origin form.
        host = self._head.host
        lines += [
            n + b": " + v + b"\r\n"
            for n, v in self._raw_headers
            if n.lower() not in (b"upgrade", b"host")
        ]
        if host is not None:
            lines.append(b"Host: " + host + b"\r\n")
        self._declined_offer = False
        self._reset_message()
        self._parser = httptools.HttpRequestParser(self)
        return b"".join(lines) + b"\r\n"

    def eof_received(self) -> bool:
        """The client sent its last byte (a half-close, ``shutdown(SHUT_WR)``).

        Requests already complete are still answered, pipelined ones included, and the
        connection closes after the last (HAProxy's default, where nginx cuts them); only
        a request cut short can never be answered. A client that closed altogether is
        found out when its answer is written. Returning False lets the transport close at
        once.
        """
        if self._in_message or self.idle:
            return False
        self.peer_done = True  # see _next: closed once the queue is answered
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self.proxy.connection_closed(self)
        active, self.active = self.active, None
        if active is not None:
            active.client_gone()

    def pause_writing(self) -> None:
        # The client reads slower than we write: stop reading the upstream too.
        self.write_paused = True
        if self.active is not None:
            self.active.pause()
        self._arm(self.limits.send_timeout_s, "send_timeout")

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.deadline_reason == "send_timeout":
            self._disarm()
        if self.active is not None:
            self.active.resume()

    # -- httptools callbacks ------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        # The first callback of every message, so it also marks the start (one callback
        # fewer per request than registering on_message_begin).
        if not self._in_message:
            self._in_message = True
            if self.deadline_reason != "header_timeout":
                # A message pipelined behind another in the same read: its own deadline.
                self._arm(self.limits.header_timeout_s, "header_timeout")
        self._url += url
        if len(self._url) > self.limits.max_header_bytes:
            self._stop(Rejection(414, "headers_too_large", "request target too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only collected here; classified once the head is complete (RequestHead). The
        # limits are checked as headers arrive, so an endless head is cut off early.
        self._raw_headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size + len(self._url) > self.limits.max_header_bytes:
            self._stop(Rejection(431, "headers_too_large", "request headers too large"))
        if len(self._raw_headers) > self.limits.max_headers:
            self._stop(Rejection(431, "headers_too_large", "too many request headers"))

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._stop(Rejection(400, "malformed", f"unsupported HTTP version {version}"))
        head = self._head = RequestHead(self._raw_headers)
        if head.hosts > 1:
            self._stop(Rejection(400, "malformed", "duplicate Host header"))
        if version == "1.1" and not head.hosts:
            self._stop(Rejection(400, "malformed", "missing Host header"))
        host = head.host
        if host is not None and host != self._host_seen:
            if not valid_host(host):
                self._stop(Rejection(400, "malformed", "invalid Host header"))
            self._host_seen = host  # a keep-alive client repeats it: checked once
        url = self._url
        if url[:1] != b"/":
            if url == b"*":
                if parser.get_method() != b"OPTIONS":  # RFC 9112 §3.2.4
                    self._stop(Rejection(400, "malformed", "the * target is for OPTIONS only"))
            else:
                self._to_origin_form(head)
            url = self._url
        elif b"#" in url:
            url = self._url = origin_target(url)
        # The functions only for a target that may need them: this runs for every request.
        if (b"/." in url or b"%" in url) and has_dot_segment(url):
            self._stop(Rejection(400, "malformed", "dot-segments (. or ..) in the request path"))
        if head.transfer_encoding is not None:
            self._check_transfer_codings(list_tokens(head.transfer_encoding), version)
        if parser.should_upgrade():
            if head.upgrade is None or not offers_only_h2c(head.upgrade):
                self._stop(Rejection(400, "unsupported", "protocol upgrades are not proxied"))
            # Declined: the head is parsed again without the offer (_head_without_offer),
            # and checked from here on then.
            self._declined_offer = True
            return
        if head.content_length > self.limits.max_body_bytes:
            self._stop(
                Rejection(413, "body_too_large", "request body exceeds limits.max_body_bytes")
            )
        expect = head.expect
        # An HTTP/1.0 client knows no expectations, nor 1xx answers (RFC 9110 §10.1.1).
        if expect is not None and version == "1.1":
            if expect != b"100-continue":
                self._stop(Rejection(400, "malformed", "unsupported Expect value"))
            elif self.transport is not None and not self._queue and self.active is None:
                # The body is buffered here before forwarding, so the proxy says continue.
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._arm(self.limits.body_timeout_s, "body_timeout")

    def _check_transfer_codings(self, codings: list[bytes], version: str) -> None:
        """Only ``chunked`` framing is accepted (RFC 9112 §6).

        llhttp accepts any list that ends in ``chunked`` and removes only that coding, so
        the body of ``gzip, chunked`` would go upstream still gzipped, with no header left
        to say so: other codings are a 501, as RFC 9112 §6.1 asks of a server that does
        not decode them.
        """
        if version == "1.0":
            # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
            self._stop(Rejection(400, "malformed", "Transfer-Encoding in an HTTP/1.0 request"))
        if codings.count(b"chunked") != 1 or codings[-1] != b"chunked":
            # RFC 9112 §6.3: without chunked once and last, the body length is unknown.
            self._stop(Rejection(400, "malformed", "Transfer-Encoding must end in chunked"))
        if len(codings) > 1:
            message = "transfer codings other than chunked are not supported"
            self._stop(Rejection(501, "unsupported", message))

    def _to_origin_form(self, head: RequestHead) -> None:
        """``GET http://host/path`` becomes ``GET /path`` with ``Host: host``.

        RFC 9112 §3.2.2: a server accepts the absolute form and takes the authority from
        it, not from Host. Forwarded as received, production would get a target naming
        one host and a Host header naming another, and a configured path prefix would be
        glued to the scheme.
        """
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            url = None
        if (
            url is None
            or url.host is None
            or url.userinfo is not None
            or url.schema.lower() not in (b"http", b"https")
        ):
            self._stop(Rejection(400, "malformed", "request target is neither a path nor a URL"))
        # The URL parser gives an IP literal without its brackets; Host must have them.
        name = b"[%s]" % url.host if b":" in url.host else url.host
        host = name if url.port is None else b"%s:%d" % (name, url.port)
        if not valid_host(host):
            self._stop(Rejection(400, "malformed", "invalid host in the request target"))
        head.host = host
        self._url = origin_target((url.path or b"/") + (b"?" + url.query if url.query else b""))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._body_size += len(body)
        if self._body_size > self.limits.max_body_bytes:
            self._stop(
                Rejection(413, "body_too_large", "request body exceeds limits.max_body_bytes")
            )

    def on_message_complete(self) -> None:
        if self._declined_offer:
            return  # llhttp ends an upgrade offer's message at its head; parsed again
        parser = self._parser
        request = Request(
            parser.get_method(),
            self._url,
            parser.get_http_version() == "1.1",
            self._head,
            b"".join(self._body),
            parser.should_keep_alive(),
        )
        self._disarm()
        self._queue.append(request)
        if len(self._queue) >= self.limits.max_pipelined and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._next()
        # After the hand-off, so it is off the latency path; the parser meets the next
        # pipelined message only once this callback returns.
        self._reset_message()

    # -- serving ------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def finished(self, keep_alive: bool) -> None:
        """The active exchange wrote its whole response."""
        self.active = None
        if not keep_alive or self.closing:
            self.close()
            return
        self._next()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Reset the connection: how a response cut short says so when its end would
        otherwise be the close itself (an HTTP/1.0 client, no declared length)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                # A zero linger time makes the close a TCP reset, not an orderly FIN the
                # client would read as the end of the body.
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                except OSError:
                    pass
            self.transport.abort()

    def close_when_idle(self) -> None:
        """Part of the drain: close now if idle, else after the current response."""
        self.closing = True
        if self.active is None and not self._queue and not self._in_message:
            self.close()

    @property
    def idle(self) -> bool:
        """Nothing to answer: no request being received, queued or served."""
        return self.active is None and not self._queue and not self._in_message

    def _next(self) -> None:
        if self.active is not None or self.closed:
            return
        if not self._queue:
            if self._reading_paused:
                self._reading_paused = False
                unparsed, self._unparsed = self._unparsed, b""
                if unparsed:
                    self._parse(unparsed)  # may queue and start requests, and pause again
                if not self._reading_paused and self.transport is not None and not self.closed:
                    self.transport.resume_reading()
                if self._queue or self.active is not None or self.closed:
                    return
            if self.closing or self.peer_done:
                self.close()
            elif not self._in_message:
                self._arm(self.limits.keepalive_timeout_s, "keepalive")
            return
        item = self._queue.popleft()
        if isinstance(item, Rejection):
            self._answer_refusal(item)
            return
        self.active = _STARTING
        answer = self.proxy.handle(item, self)
        if self.active is _STARTING:
            self.active = answer

    def _stop(self, rejection: Rejection) -> NoReturn:
        """Abort parsing from inside a parser callback."""
        self._refusal = rejection
        raise _Refused(rejection.message)

    def _refuse(self, rejection: Rejection) -> None:
        self._refusal = rejection
        self._disarm()
        if self.transport is not None:
            self.transport.pause_reading()
        self._queue.append(rejection)
        self._next()

    def _answer_refusal(self, rejection: Rejection) -> None:
        self.proxy.metrics.client_errors.labels(rejection.reason).inc()
        # Parsing stopped at the refused message, so what was read of its head is still
        # here: the client's own request id if it got that far and is well formed, else
        # a new one, as for any other answer.
        request_id = pick_request_id(self._raw_headers)
        head_only = self._in_message and self._parser.get_method() == b"HEAD"
        response = error_response(
            rejection.status, rejection.message, request_id, close=True, head_only=head_only
        )
        self.write(response)
        self.close()

    def _reset_message(self) -> None:
        self._in_message = False
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._head = _EMPTY_HEAD
        self._body: list[bytes] = []
        self._body_size = 0

    # -- deadlines ------------------------------------------------------------------------
    def _arm(self, delay: float, reason: str) -> None:
        self.deadline = self._loop.time() + delay
        self.deadline_reason = reason

    def _disarm(self) -> None:
        self.deadline = 0.0
        self.deadline_reason = ""

    def check_deadline(self, now: float) -> None:
        """Called by the proxy's sweep; acts on a deadline that has passed."""
        if self.deadline and now >= self.deadline:
            reason = self.deadline_reason
            self._disarm()
            self._expired(reason)

    def _expired(self, reason: str) -> None:
        if reason == "keepalive" or (reason == "header_timeout" and not self._in_message):
            self.close()  # an idle socket just goes away
        elif reason == "send_timeout":
            if self.transport is not None:
                self.transport.abort()
        elif self.active is None:
            # A slow client mid-request: answer 408 and hang up.
            message = "request head not received in time"
            if reason == "body_timeout":
                message = "request body not received in time"
            self._refuse(Rejection(408, reason, message))
        else:
            self.closing = True
