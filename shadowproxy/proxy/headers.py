"""Header rules of a transparent proxy (pure functions over ``(name, value)`` byte pairs).

What a proxy must change, and nothing more:

* hop-by-hop headers (RFC 9110 §7.6.1) and every header named in ``Connection`` are
  removed in both directions;
* ``X-Forwarded-For``, ``-Proto`` and ``-Host`` are rebuilt from the socket; no client
  ``X-Forwarded-*``, ``Forwarded`` or ``X-Real-IP`` value is passed on;
* ``X-Shadow-*`` headers are internal: a client cannot set them;
* framing (``Content-Length`` / ``Transfer-Encoding``) is re-derived by the proxy, because
  request bodies are buffered and response bodies may be re-chunked.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
FORWARDED: frozenset[bytes] = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-real-ip"}
)
# Prefixes of headers only the proxy may set: every X-Forwarded-* (Port and Prefix are
# trusted by web frameworks too) and the internal X-Shadow-* family.
_CLIENT_CANNOT_SET = (b"x-forwarded-", b"x-shadow-")
# Framing is recomputed from the buffered body; Expect is answered by the proxy itself.
REQUEST_FRAMING: frozenset[bytes] = frozenset({b"content-length", b"expect"})
REQUEST_ID = b"x-request-id"
_NOT_FORWARDED = HOP_BY_HOP | FORWARDED | REQUEST_FRAMING | {REQUEST_ID}
# CGI, WSGI and many frameworks read ``X_Forwarded_For`` as ``X-Forwarded-For`` (both
# become HTTP_X_FORWARDED_FOR): an underscore spelling of a header the proxy owns is
# dropped like the header itself, as nginx drops every underscored name by default.
_OWNED_WHEN_DASHED = _NOT_FORWARDED | {b"host"}
_NOT_RELAYED = HOP_BY_HOP | {REQUEST_ID}

_REQUEST_ID_OK = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
# RFC 9112 §3.2 and RFC 3986 §3.2.2: uri-host [":" port], where uri-host is a bracketed
# IP literal or a reg-name (which covers IPv4 addresses); empty is allowed.
_HOST_OK = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(:[0-9]*)?")


# A "." or ".." path segment, raw or percent-encoded (RFC 3986 §5.2.4 removes them).
_DOT_SEGMENT = re.compile(rb"(?:^|/)(?:\.|%2e){1,2}(?:/|$)", re.IGNORECASE)


def origin_target(target: bytes) -> bytes:
    """An origin-form target as forwarded: without a fragment, which RFC 9112 §3.2.1 does
    not allow in a request and which is the client's own business."""
    return target.partition(b"#")[0] if b"#" in target else target


def has_dot_segment(target: bytes) -> bool:
    """Whether the target's path has a ``.`` or ``..`` segment.

    Glued behind a configured path prefix, ``/a/../../x`` would leave it once an upstream
    normalises the path; a client that means a path sends it resolved.
    """
    path = target.partition(b"?")[0]
    if b"/." not in path and b"%" not in path:
        return False  # the usual path, decided without the expression
    return _DOT_SEGMENT.search(path) is not None


def valid_host(value: bytes) -> bool:
    """Whether a Host value is an authority; anything else is a 400 (RFC 9112 §3.2).

    A value such as ``a, b`` or ``a b`` would reach production, and its
    ``X-Forwarded-Host``, as a list that frameworks read in different ways.
    """
    return _HOST_OK.fullmatch(value) is not None


def valid_request_id(value: bytes) -> bool:
    """A client-sent request id is kept only if it is short and made of safe characters."""
    return _REQUEST_ID_OK.fullmatch(value) is not None


# A random per-process prefix plus a counter: unique across replicas and restarts without
# a random draw (a syscall) per request.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def pick_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-Id`` when it is well formed, else a fresh one."""
    return RequestHead(headers).resolve_request_id()


class RequestHead:
    """Classification of a request's headers, in one pass over the complete head.

    Headers to forward are kept (already serialized); the ones the proxy owns are
    remembered (Host, X-Request-Id, Content-Type, Expect, framing) or dropped (hop-by-hop,
    forwarded, X-Shadow-*). Headers named in ``Connection`` are removed when the block is
    built, since ``Connection`` may come after them.
    """

    __slots__ = (
        "forward", "forward_lows", "hosts", "host", "request_id", "content_type", "expect",
        "connection_tokens", "upgrade", "transfer_encoding", "content_length",
    )  # fmt: skip

    def __init__(self, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.forward: list[bytes] = []  # serialized "Name: value" lines
        self.forward_lows: list[bytes] = []  # their lower-case names
        self.hosts = 0
        self.host: bytes | None = None
        self.request_id: bytes | None = None
        self.content_type = b""
        self.expect: bytes | None = None
        self.connection_tokens: set[bytes] | None = None
        # Values of every Upgrade and Transfer-Encoding line, joined as one list.
        self.upgrade: bytes | None = None
        self.transfer_encoding: bytes | None = None
        self.content_length = -1
        # One loop over the head, not a call per header: this runs for every request.
        forward, lows = self.forward, self.forward_lows
        for name, value in headers:
            low = name.lower()
            if low in _NOT_FORWARDED or low == b"host":
                self._remember(low, value)
            elif b"_" in low and _owned_when_dashed(low):
                continue
            elif not low.startswith(_CLIENT_CANNOT_SET):
                if low == b"content-type":
                    self.content_type = value
                forward.append(name + b": " + value + b"\r\n")
                lows.append(low)

    def _remember(self, low: bytes, value: bytes) -> None:
        if low == b"host":
            self.hosts += 1
            self.host = value
        elif low == REQUEST_ID:
            if self.request_id is None:  # the first one wins if a client repeats it
                self.request_id = value
        elif low == b"expect":
            self.expect = value.lower()
        elif low == b"upgrade":
            self.upgrade = _joined(self.upgrade, value)
        elif low == b"transfer-encoding":
            self.transfer_encoding = _joined(self.transfer_encoding, value)
        elif low == b"content-length" and value.isdigit():
            # llhttp has already refused malformed and duplicate lengths.
            self.content_length = int(value)
        elif low == b"connection":
            tokens = _connection_options(value)
            if tokens:
                self.connection_tokens = (self.connection_tokens or set()) | tokens

    def resolve_request_id(self) -> str:
        rid = self.request_id
        if rid is not None and valid_request_id(rid):
            return rid.decode("ascii")
        return new_request_id()

    def forward_block(self, replaced: frozenset[bytes] = frozenset()) -> bytes:
        """The forwarded headers, serialized, without Connection-named ones.

        ``replaced`` lists (lower-case) names the upstream's configured headers set: the
        client's values for them are dropped, so a client credential never rides along to
        a service that was given its own.
        """
        drop = self.connection_tokens or replaced
        if self.connection_tokens and replaced:
            drop = self.connection_tokens | replaced
        if drop:
            pairs = zip(self.forward_lows, self.forward, strict=True)
            return b"".join(line for low, line in pairs if low not in drop)
        return b"".join(self.forward)


def _joined(previous: bytes | None, value: bytes) -> bytes:
    """Field lines of one list-valued header, combined as RFC 9110 §5.3 allows."""
    return value if previous is None else previous + b"," + value


def list_tokens(value: bytes) -> list[bytes]:
    """The lower-case elements of a comma-separated header list, empty ones dropped."""
    return [token for part in value.lower().split(b",") if (token := part.strip(b" \t"))]


def offers_only_h2c(upgrade: bytes) -> bool:
    """Whether an ``Upgrade`` offer names cleartext HTTP/2 and nothing else.

    A server may ignore an offer and answer in HTTP/1.1 (RFC 9110 §7.8), and an h2c
    client then simply carries on in HTTP/1.1. Java's HttpClient and Spring's RestClient,
    among others, attach this offer to ordinary requests to ``http://`` URLs by default.
    """
    tokens = list_tokens(upgrade)
    return bool(tokens) and all(token == b"h2c" for token in tokens)


# Connection options that are not header names (RFC 9110 §7.6.1).
_CONNECTION_KEYWORDS = frozenset({b"", b"keep-alive", b"close"})


def _connection_options(value: bytes) -> set[bytes] | None:
    """Header names a ``Connection`` value lists, beyond keep-alive and close."""
    low = value.lower()
    if low in _CONNECTION_KEYWORDS:
        return None  # the usual case, without building a set
    return set(list_tokens(low)) - _CONNECTION_KEYWORDS


def _owned_when_dashed(low: bytes) -> bool:
    dashed = low.replace(b"_", b"-")
    return dashed in _OWNED_WHEN_DASHED or dashed.startswith(_CLIENT_CANNOT_SET)


def proxy_headers_block(request_id: str, peer_ip: str, host: bytes | None, proto: bytes) -> bytes:
    """The headers the proxy sets itself, serialized."""
    block = (
        b"X-Request-Id: " + request_id.encode("ascii") + b"\r\n"
        b"X-Forwarded-For: " + peer_ip.encode("ascii", "replace") + b"\r\n"
        b"X-Forwarded-Proto: " + proto + b"\r\n"
    )
    if host:  # an empty Host (allowed when the target has no authority) says nothing
        block += b"X-Forwarded-Host: " + host + b"\r\n"
    return block


def upstream_request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    request_id: str,
    peer_ip: str,
    host: bytes | None,
    proto: bytes = b"http",
) -> Headers:
    """Headers to send upstream for a client request (without framing headers).

    The same rules as :class:`RequestHead`, as a list of pairs.

    Parameters
    ----------
    headers : iterable of (bytes, bytes)
        The client's headers as received.
    request_id : str
        The id the client sent (if valid) or the one the proxy assigned.
    peer_ip : str
        The socket peer address: the only trustworthy ``X-Forwarded-For``.
    host : bytes or None
        The client's ``Host``; becomes ``X-Forwarded-Host``.
    proto : bytes
        The scheme the client used on the traffic listener.
    """
    head = RequestHead(headers)
    block = head.forward_block() + proxy_headers_block(request_id, peer_ip, host, proto)
    return parse_block(block)


def parse_block(block: bytes) -> Headers:
    """``Name: value\\r\\n`` lines back into pairs."""
    pairs = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            pairs.append((name, value))
    return pairs


def client_response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Upstream response headers to relay to the client (without framing headers).

    ``Content-Length`` is kept: the proxy relays the body unchanged when the upstream
    declared its length.
    """
    return parse_block(ResponseHead(headers).relay_block())


class ResponseHead:
    """Classification of an upstream response's headers, in one pass.

    Keeps the relayable headers serialized, and remembers what framing and pairing need
    (the declared length, chunked coding, Content-Type).
    """

    __slots__ = (
        "lines", "lows", "connection_tokens", "content_type", "has_length", "content_length",
        "chunked", "other_coding",
    )  # fmt: skip

    def __init__(self, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.lines: list[bytes] = []
        self.lows: list[bytes] = []
        self.connection_tokens: set[bytes] | None = None
        self.content_type = b""
        self.has_length = False
        self.content_length = -1
        self.chunked = False
        # Transfer codings other than a single chunked: llhttp undoes only chunked (and
        # reads "gzip" alone as a body running to the close), so such a body would reach
        # the client still coded, with no header left to say so. The proxy refuses it.
        self.other_coding = b""
        codings: bytes | None = None
        lines, lows = self.lines, self.lows
        for name, value in headers:
            low = name.lower()
            if low in _NOT_RELAYED:
                if low == b"transfer-encoding":
                    codings = _joined(codings, value)
                    self.chunked = True
                elif low == b"connection":
                    tokens = _connection_options(value)
                    if tokens:
                        self.connection_tokens = (self.connection_tokens or set()) | tokens
                continue
            if low == b"content-length":
                self.has_length = True
                self.content_length = int(value) if value.isdigit() else -1
            elif low == b"content-type":
                self.content_type = value
            lines.append(name + b": " + value + b"\r\n")
            lows.append(low)
        if codings is not None and list_tokens(codings) != [b"chunked"]:
            self.other_coding = codings

    def relay_block(self, keep_length: bool = True) -> bytes:
        """The headers to relay, serialized, with Connection-named ones removed (and
        Content-Length too unless ``keep_length``)."""
        tokens = self.connection_tokens
        if not keep_length and self.has_length:
            tokens = (tokens or set()) | {b"content-length"}
        if tokens:
            if b"content-length" in tokens:
                self.has_length = False
            return b"".join(
                line for low, line in zip(self.lows, self.lines, strict=True) if low not in tokens
            )
        return b"".join(self.lines)


def header_block(headers: Iterable[tuple[str, str]]) -> bytes:
    """Configured ``(name, value)`` headers, serialized (validated by the config loader)."""
    return b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in headers)
