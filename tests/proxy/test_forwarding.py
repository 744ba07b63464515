"""Production forwarding: what reaches the backend and what comes back, byte for byte."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import os

import aiohttp
import pytest
from aiohttp import web

from shadowproxy.runtime import Runtime
from tests.proxy._util import (
    connect,
    exchange,
    fixed,
    forwarded,
    raw_upstream,
    read_all_until_close,
    read_response,
    request_bytes,
    seen_header,
    seen_headers,
    seen_names,
)
from tests.support.proxy import make_config, running_proxy
from tests.support.servers import Backend, Seen
from tests.support.waiting import wait_for


async def echo(request: web.Request) -> web.StreamResponse:
    """Answers with the request body and what the backend saw of the request line."""
    body = await request.read()
    return web.Response(
        body=body,
        headers={"X-Method": request.method, "X-Path": request.path_qs},
        content_type="application/octet-stream",
    )


def without_request_id(raw: bytes) -> bytes:
    """A client response with the proxy's own X-Request-Id line removed."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = [x for x in head.split(b"\r\n") if not x.lower().startswith(b"x-request-id:")]
    return b"\r\n".join(lines) + sep + body


# -- methods, statuses, bodies --------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
async def test_methods_are_forwarded(proxy: Runtime, backend: Backend, method: str) -> None:
    backend.handler = echo
    body = b"" if method in ("GET", "HEAD", "OPTIONS") else b"payload-" + method.encode()
    data = request_bytes(method, "/m/" + method.lower(), body=body)
    resp = await exchange(proxy.traffic_port, data, head_request=method == "HEAD")
    assert resp.status == 200
    assert resp.get("X-Method") == method
    [seen] = forwarded(backend.seen)
    assert (seen.method, seen.path, seen.body) == (method, "/m/" + method.lower(), body)
    assert resp.body == (b"" if method == "HEAD" else body)


async def test_head_response_keeps_its_content_length_and_is_not_waited_on(
    proxy: Runtime, backend: Backend
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 1234, content_type="text/plain")

    backend.handler = handler
    async with connect(proxy.traffic_port) as (reader, writer):
        writer.write(request_bytes("HEAD", "/h1"))
        head = await asyncio.wait_for(read_response(reader, head_request=True), 2)
        assert head.status == 200
        assert head.get("Content-Length") == "1234"
        # The same client connection and the pooled upstream connection both go on working.
        writer.write(request_bytes("GET", "/g1"))
        got = await asyncio.wait_for(read_response(reader), 2)
        assert got.status == 200 and got.body == b"x" * 1234
        writer.write(request_bytes("HEAD", "/h2") + request_bytes("GET", "/g2"))
        head2 = await asyncio.wait_for(read_response(reader, head_request=True), 2)
        got2 = await asyncio.wait_for(read_response(reader), 2)
    assert head2.get("Content-Length") == "1234" and got2.body == b"x" * 1234
    assert [s.path for s in forwarded(backend.seen)] == ["/h1", "/g1", "/h2", "/g2"]


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (200, {}, b"ok"),
        (201, {"Location": "/things/1"}, b'{"id": 1}'),
        (204, {}, b""),
        (301, {"Location": "http://elsewhere.test/moved"}, b""),
        (302, {"Location": "/redirect-target"}, b"see other"),
        (304, {"ETag": '"v1"'}, b""),
        (404, {}, b"not found"),
        (500, {}, b"boom"),
        (503, {"Retry-After": "7"}, b"busy"),
    ],
)
async def test_statuses_pass_through(
    proxy: Runtime, backend: Backend, status: int, headers: dict[str, str], body: bytes
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/redirect-target":
            return web.Response(text="followed")
        return web.Response(status=status, headers=headers, body=body or None)

    backend.handler = handler
    async with connect(proxy.traffic_port) as (reader, writer):
        writer.write(request_bytes("GET", "/status"))
        resp = await asyncio.wait_for(read_response(reader), 3)
        # The response was framed right: the connection carries a second exchange.
        writer.write(request_bytes("GET", "/status"))
        again = await asyncio.wait_for(read_response(reader), 3)
    assert resp.status == again.status == status
    assert resp.body == again.body == (b"" if status in (204, 304) else body)
    for name, value in headers.items():
        assert resp.get(name) == value
    assert [s.path for s in forwarded(backend.seen)] == ["/status", "/status"]  # not followed


async def test_custom_reason_phrase_and_exact_bytes_are_preserved() -> None:
    upstream_response = (
        b"HTTP/1.1 418 I'm a teapot\r\nContent-Type: text/x-tea\r\nX-Brew: Earl Grey HOT\r\n"
        b"Content-Length: 5\r\n\r\nshort"
    )
    async with (
        raw_upstream(fixed(upstream_response)) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
    ):
        async with connect(rt.traffic_port) as (reader, writer):
            writer.write(request_bytes("GET", "/tea"))
            resp = await asyncio.wait_for(read_response(reader), 3)
    assert resp.status == 418
    assert resp.reason == b"I'm a teapot"
    assert without_request_id(resp.raw) == upstream_response


async def test_response_headers_are_kept_with_case_order_and_repeats() -> None:
    headers = (
        b"Set-Cookie: a=1; Path=/; HttpOnly\r\n"
        b"X-Custom: MiXeD Case Value\r\n"
        b"Set-Cookie: b=2; Expires=Wed, 21 Oct 2026 07:28:00 GMT\r\n"
        b"x-lower-name: v\r\n"
        b"Cache-Control: no-store\r\n"
        b"Vary: Accept-Encoding\r\n"
        b"Content-Length: 2\r\n"
    )
    upstream_response = b"HTTP/1.1 200 OK\r\n" + headers + b"\r\nhi"
    async with (
        raw_upstream(fixed(upstream_response)) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
    ):
        resp = await exchange(rt.traffic_port, request_bytes("GET", "/cookies"))
    assert resp.get_all("Set-Cookie") == [
        "a=1; Path=/; HttpOnly",
        "b=2; Expires=Wed, 21 Oct 2026 07:28:00 GMT",
    ]
    assert without_request_id(resp.raw) == upstream_response


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00", bytes(range(256)), os.urandom(5 * 1024 * 1024)],
    ids=["empty", "one_byte", "all_byte_values", "5MB_random"],
)
async def test_bodies_round_trip_byte_identical(
    proxy: Runtime, backend: Backend, body: bytes
) -> None:
    backend.handler = echo
    resp = await exchange(
        proxy.traffic_port,
        request_bytes("POST", "/echo", [("Content-Type", "application/octet-stream")], body),
        timeout=10,
    )
    assert resp.status == 200
    [seen] = forwarded(backend.seen)
    assert hashlib.sha256(seen.body).hexdigest() == hashlib.sha256(body).hexdigest()
    assert hashlib.sha256(resp.body).hexdigest() == hashlib.sha256(body).hexdigest()
    assert resp.get("Content-Length") == str(len(body))


async def test_request_line_and_query_string_are_preserved() -> None:
    target = b"/v2/models/m%20x/infer?a=1&b=%2F%3F&c=&d=%E2%9C%93&a=2#frag"
    async with (
        raw_upstream(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
    ):
        resp = await exchange(rt.traffic_port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 200
    [request] = upstream.requests
    # Byte for byte, but for the fragment: RFC 9112 §3.2.1 has none in a request target.
    assert request.split(b"\r\n")[0] == b"GET " + target.partition(b"#")[0] + b" HTTP/1.1"


async def test_gzip_body_is_passed_through_compressed(proxy: Runtime, backend: Backend) -> None:
    plain = b'{"outputs": [0.25, 0.75]}' * 200
    compressed = gzip.compress(plain)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=compressed,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    backend.handler = handler
    resp = await exchange(
        proxy.traffic_port, request_bytes("GET", "/gz", [("Accept-Encoding", "gzip")])
    )
    assert resp.get("Content-Encoding") == "gzip"
    assert resp.body == compressed
    assert resp.get("Content-Length") == str(len(compressed))
    [seen] = forwarded(backend.seen)
    assert seen_header(seen, "Accept-Encoding") == "gzip"


# -- hop-by-hop -----------------------------------------------------------------------------


async def test_hop_by_hop_request_headers_never_reach_the_backend(
    proxy: Runtime, backend: Backend
) -> None:
    headers = [
        ("Connection", "keep-alive, X-Foo"),
        ("Connection", "x-bar"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),  # without "Connection: upgrade": just a header to strip
        ("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA=="),
        ("Proxy-Connection", "keep-alive"),
        ("X-Foo", "1"),
        ("X-Bar", "2"),
        ("X-Keep", "3"),
        ("Authorization", "Bearer end-to-end"),
    ]
    resp = await exchange(proxy.traffic_port, request_bytes("GET", "/hop", headers))
    assert resp.status == 200
    [seen] = forwarded(backend.seen)
    names = seen_names(seen)
    for stripped in (
        "keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection",
        "x-foo", "x-bar",
    ):  # fmt: skip
        assert stripped not in names, stripped
    # A Connection header may be added by the proxy's own upstream hop, never the client's.
    assert all("x-foo" not in v.lower() for v in seen_headers(seen, "Connection"))
    assert seen_header(seen, "X-Keep") == "3"
    assert seen_header(seen, "Authorization") == "Bearer end-to-end"


async def test_hop_by_hop_response_headers_never_reach_the_client() -> None:
    upstream_response = (
        b"HTTP/1.1 200 OK\r\nConnection: x-secret, X-Other\r\nX-Secret: 1\r\nX-Other: 2\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic realm=x\r\nTrailer: X-Sum\r\n"
        b"Upgrade: h2c\r\nX-Public: yes\r\nContent-Length: 2\r\n\r\nok"
    )
    async with (
        raw_upstream(fixed(upstream_response)) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
    ):
        resp = await exchange(rt.traffic_port, request_bytes("GET", "/hop"))
    assert resp.status == 200 and resp.body == b"ok"
    names = resp.names()
    for stripped in (
        "x-secret",
        "x-other",
        "keep-alive",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    ):
        assert stripped not in names, stripped
    assert all("secret" not in v.lower() for v in resp.get_all("Connection"))
    assert resp.get("X-Public") == "yes"


async def test_response_framing_survives_a_connection_header_naming_content_length() -> None:
    """Content-Length listed in Connection is dropped, but the response must stay framed."""
    upstream_response = (
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"
    )
    async with (
        raw_upstream(fixed(upstream_response)) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/one") + request_bytes("GET", "/two"))
        first = await asyncio.wait_for(read_response(reader), 2)
        assert first.body == b"hello"
        assert not first.close_delimited
        second = await asyncio.wait_for(read_response(reader), 2)
        assert second.body == b"hello"


# -- forwarding headers, shadow headers, request ids ------------------------------------------


async def test_forwarded_headers_are_rebuilt_from_the_socket(
    proxy: Runtime, backend: Backend
) -> None:
    headers = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.test"),
        ("x-forwarded-for", "7.7.7.7"),
        ("Forwarded", "for=6.6.6.6;proto=https"),
    ]
    resp = await exchange(
        proxy.traffic_port, request_bytes("GET", "/xff", headers, host="client.example:8443")
    )
    assert resp.status == 200
    [seen] = forwarded(backend.seen)
    assert seen_headers(seen, "X-Forwarded-For") == ["127.0.0.1"]
    assert seen_headers(seen, "X-Forwarded-Proto") == ["http"]
    assert seen_headers(seen, "X-Forwarded-Host") == ["client.example:8443"]
    assert all("6.6.6.6" not in v for v in seen_headers(seen, "Forwarded"))
    assert seen_headers(seen, "Host") == ["client.example:8443"]


async def test_client_shadow_headers_never_reach_production(
    proxy: Runtime, backend: Backend
) -> None:
    headers = [("X-Shadow-Request", "1"), ("X-Shadow-Anything", "x"), ("x-shadow-", "y")]
    resp = await exchange(proxy.traffic_port, request_bytes("POST", "/s", headers, b"{}"))
    assert resp.status == 200
    [seen] = forwarded(backend.seen)
    assert not [n for n in seen_names(seen) if n.startswith("x-shadow")]


async def test_valid_client_request_id_is_kept_forwarded_and_echoed(
    proxy: Runtime, backend: Backend
) -> None:
    rid = "client-id_01.A:b@c/d+e=f"
    resp = await exchange(proxy.traffic_port, request_bytes("GET", "/id", [("X-Request-Id", rid)]))
    assert resp.get_all("X-Request-Id") == [rid]
    [seen] = forwarded(backend.seen)
    assert seen_headers(seen, "X-Request-Id") == [rid]


@pytest.mark.parametrize(
    "bad_id", ["x" * 129, "has space", "<script>", "semi;colon", 'quote"d', "ü-latin1"]
)
async def test_invalid_client_request_id_is_replaced(
    proxy: Runtime, backend: Backend, bad_id: str
) -> None:
    resp = await exchange(
        proxy.traffic_port, request_bytes("GET", "/id", [("X-Request-Id", bad_id)])
    )
    [echoed] = resp.get_all("X-Request-Id")
    assert echoed and echoed != bad_id
    [seen] = forwarded(backend.seen)
    assert seen_headers(seen, "X-Request-Id") == [echoed]


async def test_missing_request_id_is_generated_unique_and_echoed(
    proxy: Runtime, backend: Backend
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        # A backend echoing its own id must not produce a second X-Request-Id.
        return web.Response(text="ok", headers={"X-Request-Id": "from-backend"})

    backend.handler = handler
    ids = []
    async with connect(proxy.traffic_port) as (reader, writer):
        for _ in range(3):
            writer.write(request_bytes("GET", "/id"))
            resp = await asyncio.wait_for(read_response(reader), 2)
            [rid] = resp.get_all("X-Request-Id")
            ids.append(rid)
    assert len(set(ids)) == 3 and "from-backend" not in ids
    assert [seen_header(s, "X-Request-Id") for s in forwarded(backend.seen)] == ids


# -- framing of relayed bodies ----------------------------------------------------------------

CHUNKS = [bytes(range(256)), b"\r\n0\r\n\r\n", os.urandom(70000), b"z"]
CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in CHUNKS)
    + b"0\r\n\r\n"
)


async def test_chunked_upstream_response_is_rechunked_for_http11_client() -> None:
    async with (
        raw_upstream(fixed(CHUNKED_RESPONSE)) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/chunked"))
        resp = await asyncio.wait_for(read_response(reader), 3)
        assert resp.chunked
        assert resp.body == b"".join(CHUNKS)
        assert resp.get("Content-Length") is None
        writer.write(request_bytes("GET", "/chunked"))  # still framed right: reuse works
        again = await asyncio.wait_for(read_response(reader), 3)
        assert again.body == b"".join(CHUNKS)


async def test_chunked_upstream_response_is_close_delimited_for_http10_client() -> None:
    async with (
        raw_upstream(fixed(CHUNKED_RESPONSE)) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
    ):
        resp = await exchange(rt.traffic_port, request_bytes("GET", "/c", version="HTTP/1.0"))
    assert resp.status == 200
    assert not resp.chunked and resp.close_delimited
    assert "transfer-encoding" not in resp.names()
    assert resp.body == b"".join(CHUNKS)


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_close_delimited_upstream_response_is_relayed_completely(version: str) -> None:
    body = os.urandom(300_000)
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + body
    async with (
        raw_upstream(fixed(response, close=True)) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
    ):
        resp = await exchange(rt.traffic_port, request_bytes("GET", "/eof", version=version))
    assert resp.status == 200
    assert hashlib.sha256(resp.body).digest() == hashlib.sha256(body).digest()
    if version == "HTTP/1.1":
        assert resp.chunked


# -- connections ----------------------------------------------------------------------------


async def test_keepalive_client_connection_and_pooled_upstream() -> None:
    async with (
        raw_upstream(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        for i in range(50):
            writer.write(request_bytes("GET", f"/k{i}"))
            resp = await asyncio.wait_for(read_response(reader), 2)
            assert resp.status == 200 and resp.body == b"abc"
        assert not reader.at_eof()
    assert len(upstream.requests) == 50
    assert upstream.connections <= 2  # the readiness probe's connection, reused


async def test_stale_pooled_connection_does_not_cause_502() -> None:
    """The backend closes each connection right after answering, without saying so."""
    async with (
        raw_upstream(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=True)) as up,
        running_proxy(make_config(up.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        statuses = []
        for i in range(20):
            writer.write(request_bytes("GET", f"/stale{i}"))
            resp = await asyncio.wait_for(read_response(reader), 3)
            statuses.append(resp.status)
            if i % 2:
                await asyncio.sleep(0.02)  # sometimes the close arrives before the reuse
    assert statuses == [200] * 20
    assert len(up.requests) == 20


async def test_pipelined_requests_are_answered_in_order(proxy: Runtime, backend: Backend) -> None:
    count = 1000
    data = b"".join(
        request_bytes("GET", f"/p{i}", [("X-Request-Id", f"pipe-{i:04d}")]) for i in range(count)
    )
    ids = []
    async with connect(proxy.traffic_port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        for _ in range(count):
            resp = await asyncio.wait_for(read_response(reader), 5)
            assert resp.status == 200
            ids.append(resp.get("X-Request-Id"))
    assert ids == [f"pipe-{i:04d}" for i in range(count)]
    assert [s.path for s in forwarded(backend.seen)] == [f"/p{i}" for i in range(count)]


async def test_http10_client_without_keepalive_gets_close(proxy: Runtime) -> None:
    async with connect(proxy.traffic_port) as (reader, writer):
        writer.write(request_bytes("GET", "/old", version="HTTP/1.0"))
        resp = await asyncio.wait_for(read_response(reader), 2)
        assert resp.status == 200
        assert await read_all_until_close(reader, timeout=2) == b""


# -- back-pressure ----------------------------------------------------------------------------


class Streamer:
    """A backend handler streaming ``total`` bytes and counting what it managed to write."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total = total
        self.chunk = os.urandom(chunk)
        self.written = 0
        self.finished = asyncio.Event()
        self.failed = False

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.path != "/big":
            return web.Response(text="small")
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = self.total
        await resp.prepare(request)
        try:
            while self.written < self.total:
                await resp.write(self.chunk)
                self.written += len(self.chunk)
        except (ConnectionError, RuntimeError):
            self.failed = True
            raise
        finally:
            self.finished.set()
        return resp


async def test_client_that_never_reads_pauses_upstream_and_others_are_served(
    backend: Backend,
) -> None:
    import psutil

    total = 50 * 1024 * 1024
    streamer = Streamer(total)
    backend.handler = streamer
    config = make_config(backend.url, production={"timeout_ms": 30000})
    process = psutil.Process()
    async with (
        running_proxy(config) as rt,
        connect(rt.traffic_port, rcvbuf=16384) as (_reader, writer),
    ):
        rss_before = process.memory_info().rss
        writer.write(request_bytes("GET", "/big"))
        await asyncio.sleep(1.0)
        stalled_at = streamer.written
        await asyncio.sleep(0.5)
        # Upstream reading is paused: the backend's writes block well short of the body.
        assert streamer.written < total // 2
        assert streamer.written - stalled_at <= 1024 * 1024
        assert process.memory_info().rss - rss_before < 30 * 1024 * 1024
        resp = await exchange(rt.traffic_port, request_bytes("GET", "/other"), timeout=2)
        assert resp.status == 200 and resp.body == b"small"


async def test_stuck_client_is_dropped_after_send_timeout(backend: Backend) -> None:
    streamer = Streamer(50 * 1024 * 1024)
    backend.handler = streamer
    config = make_config(
        backend.url, production={"timeout_ms": 30000}, limits={"send_timeout_s": 0.5}
    )
    async with running_proxy(config) as rt:
        async with connect(rt.traffic_port, rcvbuf=16384) as (reader, writer):
            writer.write(request_bytes("GET", "/big"))
            await asyncio.sleep(0.2)
            assert len(rt.proxy.connections) == 1
            # Dropped: the proxy forgets the connection and stops reading production.
            await wait_for(lambda: not rt.proxy.connections, 3, what="the stuck client dropped")
            assert await asyncio.wait_for(streamer.finished.wait(), 3) is True
            assert streamer.written < streamer.total
        resp = await exchange(rt.traffic_port, request_bytes("GET", "/other"), timeout=2)
        assert resp.status == 200


async def test_slow_reading_client_still_gets_the_whole_body(backend: Backend) -> None:
    """A client that pauses longer than production.timeout_ms but keeps reading is not cut:
    production answered promptly, only the client is slow (send_timeout_s is the client's)."""
    total = 8 * 1024 * 1024
    streamer = Streamer(total)
    backend.handler = streamer
    config = make_config(backend.url, production={"timeout_ms": 300})
    async with (
        running_proxy(config) as rt,
        connect(rt.traffic_port, rcvbuf=16384) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/big"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200 ")
        await asyncio.sleep(1.0)  # the client is busy; production is not at fault
        received = 0
        while received < total:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 3)
            if not chunk:
                break
            received += len(chunk)
    assert received == total


async def test_url_credentials_become_basic_auth_and_replace_the_clients(
    backend: Backend, candidate_backend: Backend
) -> None:
    """``http://user:pass@host`` is sent as Basic auth; the client's own value is replaced."""
    prod_url = backend.url.replace("http://", "http://svc:s%3Dcret@")
    cand_url = candidate_backend.url.replace("http://", "http://tok3n@")
    config = make_config(prod_url, candidates=[{"name": "c", "url": cand_url}])
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{rt.traffic_port}/infer",
            data=b"{}",
            headers={"Authorization": "Bearer client-token"},
        ) as resp:
            assert resp.status == 200
        await wait_for(lambda: bool(candidate_backend.seen), what="the mirror")

    def auth_values(seen: list[Seen]) -> list[bytes]:
        posted = [s for s in seen if s.method == "POST"]
        assert len(posted) == 1
        return [v for n, v in posted[0].raw_headers if n.lower() == b"authorization"]

    assert auth_values(backend.seen) == [b"Basic " + base64.b64encode(b"svc:s=cret")]
    assert auth_values(candidate_backend.seen) == [b"Basic " + base64.b64encode(b"tok3n:")]
