"""Malformed requests and smuggling shapes, sent on raw sockets: 400 and nothing forwarded."""

from __future__ import annotations

import asyncio

import pytest

from shadowproxy.runtime import Runtime
from tests.proxy._util import connect, forwarded, read_all_until_close, read_response
from tests.support.proxy import metric_value
from tests.support.servers import Backend

MALFORMED: dict[str, bytes] = {
    "content_length_and_transfer_encoding": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer_encoding_then_content_length": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n0\r\n\r\n"
    ),
    "duplicate_content_length": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
    ),
    "differing_content_lengths": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"
    ),
    "content_length_list": b"POST /m HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx",
    "content_length_signed": b"POST /m HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
    "content_length_not_a_number": b"POST /m HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    "content_length_overflow": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999999\r\n\r\n"
    ),
    "duplicate_host": b"GET /m HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "duplicate_host_other_case": b"GET /m HTTP/1.1\r\nHost: a\r\nhOST: b\r\n\r\n",
    "missing_host_http11": b"GET /m HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "bare_lf_everywhere": b"GET /m HTTP/1.1\nHost: a\n\n",
    "bare_lf_between_headers": b"GET /m HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
    "nul_in_header_value": b"GET /m HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "cr_in_header_value": b"GET /m HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
    "obsolete_line_folding": b"GET /m HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "space_before_colon": b"GET /m HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
    "transfer_encoding_space_before_colon": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n"
    ),
    "obfuscated_transfer_encoding": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
    ),
    "chunked_not_last": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
    ),
    "invalid_chunk_size": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"
    ),
    "overflowing_chunk_size": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffff1\r\nab\r\n0\r\n\r\n"
    ),
    "chunk_size_bare_lf": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\na\r\n0\r\n\r\n"
    ),
    "malformed_trailer": (
        b"POST /m HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\nnot a trailer\r\n\r\n"
    ),
    "http_0_9_request_line": b"GET /m\r\n\r\n",
    "http_2_0_request_line": b"GET /m HTTP/2.0\r\nHost: a\r\n\r\n",
    "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "websocket_upgrade": (
        b"GET /m HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ),
    "expect_something_else": b"GET /m HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\n\r\n",
    # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means the framing is faulty.
    "http_1_0_with_transfer_encoding": (
        b"POST /m HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"
    ),
}


def assert_small_json_error(raw: bytes, status: int) -> dict[str, object]:
    import json

    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw[:200]!r}"
    status_line = head.split(b"\r\n")[0]
    assert status_line.startswith(b"HTTP/1.1 %d " % status), status_line
    lower = head.lower()
    assert b"\r\ncontent-type: application/json" in lower
    assert len(body) < 512
    data = json.loads(body)
    assert isinstance(data, dict) and data.get("error")
    return data


async def send_and_collect(port: int, data: bytes) -> bytes:
    async with connect(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        # A refused request is answered and the connection closed.
        return await read_all_until_close(reader, timeout=3)


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_request_is_refused(proxy: Runtime, backend: Backend, data: bytes) -> None:
    raw = await send_and_collect(proxy.traffic_port, data)
    assert_small_json_error(raw, 400)
    await asyncio.sleep(0.05)
    assert forwarded(backend.seen) == []
    assert (
        metric_value(proxy, "shadowproxy_client_errors_total", reason="malformed")
        + (metric_value(proxy, "shadowproxy_client_errors_total", reason="unsupported"))
        == 1
    )


async def test_smuggled_request_after_refusal_is_never_forwarded(
    proxy: Runtime, backend: Backend
) -> None:
    # The classic CL.TE shape: the bytes after a refused head must not be parsed as a request.
    data = (
        b"POST /m HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    raw = await send_and_collect(proxy.traffic_port, data)
    assert raw.count(b"HTTP/1.1 ") == 1
    assert_small_json_error(raw, 400)
    await asyncio.sleep(0.05)
    assert forwarded(backend.seen) == []


async def test_valid_requests_before_a_malformed_one_are_answered_in_order(
    proxy: Runtime, backend: Backend
) -> None:
    good = b"GET /ok HTTP/1.1\r\nHost: a\r\nX-Request-Id: first\r\n\r\n"
    bad = b"GET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    after = b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"
    async with connect(proxy.traffic_port) as (reader, writer):
        writer.write(good + bad + after)
        await writer.drain()
        first = await asyncio.wait_for(read_response(reader), 3)
        assert first.status == 200
        assert first.get("X-Request-Id") == "first"
        rest = await read_all_until_close(reader, timeout=3)
    assert_small_json_error(rest, 400)
    assert [s.path for s in forwarded(backend.seen)] == ["/ok"]


async def test_chunked_request_with_extension_and_trailer_is_forwarded_dechunked(
    proxy: Runtime, backend: Backend
) -> None:
    data = (
        b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with connect(proxy.traffic_port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        resp = await asyncio.wait_for(read_response(reader), 3)
    assert resp.status == 200
    [seen] = forwarded(backend.seen)
    assert seen.body == b"abcde"
