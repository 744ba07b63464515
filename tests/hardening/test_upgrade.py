"""Protocol upgrades on a predict route, against a real ``shadowproxy serve`` process.

A model route is request/response JSON, and a switched connection would be a tunnel past
every check the proxy makes (parsing, limits, mirroring). So nothing is ever switched:

* an offer of cleartext HTTP/2 (``Upgrade: h2c``), which HTTP clients such as Java's
  attach to ordinary requests, is declined as RFC 9110 §7.8 allows: the request is served
  in HTTP/1.1, body intact, without the offer's headers. HTTP/2 bytes sent after it, as
  in h2c smuggling, are parsed as HTTP/1.1 and refused;
* any other offer (WebSocket, TLS, several at once) and ``CONNECT`` get a 400 and a close,
  and nothing is forwarded.

See docs/security.md.
"""

from __future__ import annotations

import asyncio
import itertools
import zlib

import orjson

from tests.hardening.backend import CountingBackend, Received
from tests.hardening.harness import (
    assert_refused_and_contained,
    assert_unaffected,
    bystander,
    memory_flat_over,
    read_until_close,
    served_at_least,
)
from tests.proxy._util import connect, read_response
from tests.support.served import Served
from tests.support.waiting import wait_for

ROUTE = b"/v2/models/churn/infer"
BODY = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
WEBSOCKET = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
H2C = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)
# The HTTP/2 connection preface and an empty SETTINGS frame: what an h2c client sends once
# it believes the connection switched.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
OFFER_HEADERS = {b"upgrade", b"http2-settings", b"connection", b"sec-websocket-key"}


def offer(method: bytes, tag: bytes, headers: bytes, body: bytes = b"") -> bytes:
    head = b"%s %s?attack=%s HTTP/1.1\r\nHost: a\r\n" % (method, ROUTE, tag)
    return (
        head + headers + (b"Content-Length: %d\r\n" % len(body) if body else b"") + b"\r\n" + body
    )


REFUSED_OFFERS = {
    "websocket": offer(b"GET", b"ws", b"Connection: Upgrade\r\nUpgrade: websocket\r\n" + WEBSOCKET),
    "websocket_with_body": offer(
        b"POST", b"ws-body", b"Connection: Upgrade\r\nUpgrade: websocket\r\n" + WEBSOCKET, BODY
    ),
    "websocket_keep_alive_upgrade": offer(
        b"GET", b"ws-ka", b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n" + WEBSOCKET
    ),
    "h2c_or_websocket": offer(
        b"GET", b"both", b"Connection: Upgrade\r\nUpgrade: h2c, websocket\r\n"
    ),
    "h2c_then_websocket_fields": offer(
        b"GET", b"two", b"Connection: Upgrade\r\nUpgrade: h2c\r\nUpgrade: websocket\r\n"
    ),
    "tls": offer(b"GET", b"tls", b"Connection: Upgrade\r\nUpgrade: TLS/1.2\r\n"),
    "connect": b"CONNECT attack.example:443 HTTP/1.1\r\nHost: attack.example:443\r\n\r\n",
    "websocket_then_frames": offer(
        b"GET", b"ws-frames", b"Connection: Upgrade\r\nUpgrade: websocket\r\n" + WEBSOCKET
    )
    + b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
}


async def test_upgrade_offers_other_than_h2c_are_refused(
    proxy: Served, production: CountingBackend, candidate: CountingBackend
) -> None:
    await assert_refused_and_contained(proxy, (production, candidate), REFUSED_OFFERS)


def h2c_requests(tag: bytes) -> list[tuple[bytes, bytes]]:
    """(path, bytes) of requests offering h2c, and the body each must arrive with."""
    path = ROUTE + b"?h2c=" + tag
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    return [
        (path + b"-get", b"GET %s-get HTTP/1.1\r\nHost: a\r\n%s\r\n" % (path, H2C)),
        (
            path + b"-post",
            b"POST %s-post HTTP/1.1\r\nHost: a\r\n%sContent-Length: %d\r\n\r\n%s"
            % (path, H2C, len(BODY), BODY),
        ),
        (
            path + b"-chunked",
            b"POST %s-chunked HTTP/1.1\r\nHost: a\r\n%sTransfer-Encoding: chunked\r\n\r\n%s"
            % (path, H2C, chunked),
        ),
        # Not an offer without "Connection: upgrade": the header is dropped like any
        # hop-by-hop one.
        (path + b"-bare", b"GET %s-bare HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n" % path),
    ]


async def declined_offers(served: Served, tag: bytes) -> list[bytes]:
    """Send every h2c offer pipelined on one connection, then HTTP/2 bytes as a smuggler.

    Each offer is answered 200 in HTTP/1.1 by production, to its own body; the HTTP/2
    preface after them is refused with a 400 and the connection closed.
    """
    requests = h2c_requests(tag)
    async with connect(served.traffic_port) as (reader, writer):
        writer.write(b"".join(data for _, data in requests) + H2_PREFACE)
        await writer.drain()
        for path, data in requests:
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.version == b"HTTP/1.1" and resp.status == 200, (path, resp.raw[:200])
            assert resp.get("Upgrade") is None
            answer = orjson.loads(resp.body)
            sent_body = BODY if b"POST" in data[:4] else b""
            assert answer["path"] == path.decode() and answer["crc32"] == zlib.crc32(sent_body)
        rest, closed = await read_until_close(reader, 3)
    assert closed and rest.startswith(b"HTTP/1.1 400 "), rest[:200]
    return [path for path, _ in requests]


def offers_seen(backend: CountingBackend) -> list[Received]:
    return [r for r in backend.from_clients() if b"?h2c=" in r.path]


async def test_h2c_offers_are_served_in_http_1_1_and_never_switch(
    proxy: Served, production: CountingBackend, candidate: CountingBackend
) -> None:
    numbers = itertools.count()

    async def one_round() -> list[bytes]:
        return await declined_offers(proxy, b"%d" % next(numbers))

    async with bystander(proxy) as load:
        rounds = await memory_flat_over(proxy, one_round, warmup=2, measured=30, mib=8)
        await served_at_least(load, 20)
    sent = [path for paths in rounds for path in paths]
    await wait_for(lambda: len(offers_seen(candidate)) == len(sent), what="every mirror")
    for backend in (production, candidate):
        seen = offers_seen(backend)
        assert sorted(r.path for r in seen) == sorted(sent)
        for received in seen:
            # The offer stops at the proxy: neither model sees an upgrade to accept.
            names = {name.lower() for name, _ in received.headers}
            assert not names & OFFER_HEADERS, (received.path, received.headers)
            assert received.body == (BODY if received.method == b"POST" else b"")
        assert backend.attacks() == [] and backend.anomalies == []
    refused = (await proxy.metrics()).value("shadowproxy_client_errors_total", reason="malformed")
    assert refused == len(rounds)  # one HTTP/2 preface per round
    assert_unaffected(load)
