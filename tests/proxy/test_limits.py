"""Client limits: body and header sizes, Expect, and deadlines for slow clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from shadowproxy.runtime import Runtime
from tests.proxy._util import (
    connect,
    exchange,
    forwarded,
    read_all_until_close,
    read_response,
    request_bytes,
)
from tests.support.proxy import make_config, metric_value, running_proxy
from tests.support.servers import Backend

MAX_BODY = 1024
MAX_HEADER_BYTES = 4096
MAX_HEADERS = 20
SHORT = 0.5  # seconds, for every client deadline under test


@pytest.fixture
async def limited(backend: Backend) -> AsyncIterator[Runtime]:
    config = make_config(
        backend.url,
        limits={
            "max_body_bytes": MAX_BODY,
            "mirror_max_body_bytes": MAX_BODY,
            "max_header_bytes": MAX_HEADER_BYTES,
            "max_headers": MAX_HEADERS,
            "header_timeout_s": SHORT,
            "body_timeout_s": SHORT,
            "keepalive_timeout_s": SHORT,
        },
    )
    async with running_proxy(config) as runtime:
        yield runtime


def parse_error(raw: bytes, status: int) -> dict[str, object]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no response head in {raw[:200]!r}"
    assert head.split(b"\r\n")[0].startswith(b"HTTP/1.1 %d " % status), head[:80]
    assert b"\r\ncontent-type: application/json" in head.lower()
    assert len(body) < 512
    data = json.loads(body)
    assert data["error"] and data["status"] == status
    # Every answer carries a request id, the proxy's own refusals too.
    ids = [line[len(b"x-request-id: ") :] for line in head.lower().split(b"\r\n")
           if line.startswith(b"x-request-id: ")]  # fmt: skip
    assert len(ids) == 1 and ids[0] and data["request_id"] == ids[0].decode()
    return data


async def refused(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    async with connect(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        return await read_all_until_close(reader, timeout=timeout)


async def nothing_forwarded(backend: Backend) -> None:
    await asyncio.sleep(0.05)
    assert forwarded(backend.seen) == []


def client_errors(rt: Runtime, reason: str) -> float:
    return metric_value(rt, "shadowproxy_client_errors_total", reason=reason)


# -- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("sent_id", ["client-id-413", "bad id with spaces", None])
async def test_a_refusal_answers_under_the_clients_id_or_a_new_one(
    limited: Runtime, sent_id: str | None
) -> None:
    headers = [] if sent_id is None else [("X-Request-Id", sent_id)]
    data = request_bytes("POST", "/in", headers, body=b"x" * (MAX_BODY + 1))
    answer = parse_error(await refused(limited.traffic_port, data), 413)
    if sent_id == "client-id-413":
        assert answer["request_id"] == sent_id
    else:  # none sent, or one not well formed: a fresh one, as for any other request
        assert isinstance(answer["request_id"], str) and answer["request_id"] != sent_id
        assert len(answer["request_id"]) >= 16


async def test_a_refused_head_request_gets_a_head_without_a_body(limited: Runtime) -> None:
    long_target = "/" + "p" * MAX_HEADER_BYTES
    raw = await refused(limited.traffic_port, request_bytes("HEAD", long_target))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 ")  # RFC 9110 §15.5.15: the target is too long
    assert body == b""  # RFC 9110: never a body in answer to HEAD
    assert b"\r\ncontent-length: " in head.lower()  # the length a GET would have had


async def test_body_at_the_limit_is_forwarded(limited: Runtime, backend: Backend) -> None:
    body = bytes(range(256)) * (MAX_BODY // 256)
    resp = await exchange(limited.traffic_port, request_bytes("POST", "/in", body=body))
    assert resp.status == 200
    assert forwarded(backend.seen)[0].body == body


async def test_declared_content_length_over_limit_is_413(
    limited: Runtime, backend: Backend
) -> None:
    body = b"x" * (MAX_BODY + 1)
    raw = await refused(limited.traffic_port, request_bytes("POST", "/in", body=body))
    parse_error(raw, 413)
    await nothing_forwarded(backend)
    assert client_errors(limited, "body_too_large") == 1


async def test_declared_content_length_over_limit_is_413_before_the_body(
    limited: Runtime, backend: Backend
) -> None:
    head = b"POST /in HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n"
    raw = await refused(limited.traffic_port, head)  # the body is never sent
    parse_error(raw, 413)
    await nothing_forwarded(backend)


async def test_chunked_body_over_limit_is_413(limited: Runtime, backend: Backend) -> None:
    chunk = b"y" * 300
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    head = b"POST /in HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = await refused(limited.traffic_port, head + body)
    parse_error(raw, 413)
    await nothing_forwarded(backend)
    assert client_errors(limited, "body_too_large") == 1


async def test_chunked_body_under_limit_is_forwarded(limited: Runtime, backend: Backend) -> None:
    head = b"POST /in HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with connect(limited.traffic_port) as (reader, writer):
        writer.write(head + b"200\r\n" + b"z" * 512 + b"\r\n0\r\n\r\n")
        resp = await asyncio.wait_for(read_response(reader), 3)
    assert resp.status == 200
    assert forwarded(backend.seen)[0].body == b"z" * 512


async def test_oversized_header_block_is_431(limited: Runtime, backend: Backend) -> None:
    data = request_bytes("GET", "/h", [("X-Big", "v" * (MAX_HEADER_BYTES + 10))])
    raw = await refused(limited.traffic_port, data)
    parse_error(raw, 431)
    await nothing_forwarded(backend)
    assert client_errors(limited, "headers_too_large") == 1


async def test_many_small_headers_over_the_byte_limit_are_431(
    limited: Runtime, backend: Backend
) -> None:
    headers = [(f"X-H{i}", "v" * 400) for i in range(MAX_HEADERS - 5)]  # ~6 KB in total
    raw = await refused(limited.traffic_port, request_bytes("GET", "/h", headers))
    parse_error(raw, 431)
    await nothing_forwarded(backend)


async def test_oversized_request_line_is_431_or_414(limited: Runtime, backend: Backend) -> None:
    raw = await refused(limited.traffic_port, request_bytes("GET", "/" + "p" * MAX_HEADER_BYTES))
    status = int(raw.split(b" ", 2)[1])
    assert status in (414, 431)
    parse_error(raw, status)
    await nothing_forwarded(backend)


async def test_too_many_headers_is_431(limited: Runtime, backend: Backend) -> None:
    headers = [(f"X-H{i}", "1") for i in range(MAX_HEADERS + 1)]
    raw = await refused(limited.traffic_port, request_bytes("GET", "/h", headers))
    parse_error(raw, 431)
    await nothing_forwarded(backend)


async def test_headers_at_the_count_limit_are_forwarded(limited: Runtime, backend: Backend) -> None:
    headers = [(f"X-H{i}", str(i)) for i in range(MAX_HEADERS - 1)]  # plus Host
    resp = await exchange(limited.traffic_port, request_bytes("GET", "/h", headers))
    assert resp.status == 200
    [seen] = forwarded(backend.seen)
    assert seen.headers["X-H18"] == "18"


# -- Expect --------------------------------------------------------------------------------


async def test_expect_100_continue_gets_interim_then_final_response(
    limited: Runtime, backend: Backend
) -> None:
    body = b'{"x": 1}'
    head = (
        b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    async with connect(limited.traffic_port) as (reader, writer):
        writer.write(head)
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert interim.startswith(b"HTTP/1.1 100 ")
        assert forwarded(backend.seen) == []  # nothing goes upstream before the body
        writer.write(body)
        await writer.drain()
        resp = await asyncio.wait_for(read_response(reader), 3)
    assert resp.status == 200
    [seen] = forwarded(backend.seen)
    assert seen.body == body
    assert "expect" not in {k.lower() for k in seen.headers}


async def test_expect_100_continue_with_body_over_limit_is_413_without_continue(
    limited: Runtime, backend: Backend
) -> None:
    head = b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    raw = await refused(limited.traffic_port, head)
    assert not raw.startswith(b"HTTP/1.1 100")
    parse_error(raw, 413)
    await nothing_forwarded(backend)


# -- slow clients --------------------------------------------------------------------------


async def test_half_a_head_then_stall_is_cut_at_header_timeout(
    limited: Runtime, backend: Backend
) -> None:
    async with connect(limited.traffic_port) as (reader, writer):
        started = time.monotonic()
        writer.write(b"POST /slow HTTP/1.1\r\nHost: a\r\nX-Half: ")
        await writer.drain()
        raw = await read_all_until_close(reader, timeout=SHORT + 2)
        elapsed = time.monotonic() - started
    assert SHORT * 0.8 <= elapsed < SHORT + 1.5
    if raw:  # a 408 is optional; silence and a close are fine too
        parse_error(raw, 408)
    await nothing_forwarded(backend)


async def test_trickling_head_is_cut_at_header_timeout(limited: Runtime, backend: Backend) -> None:
    """Sending a byte at a time does not extend the deadline (classic slowloris)."""
    head = b"GET /trickle HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 100
    async with connect(limited.traffic_port) as (reader, writer):
        started = time.monotonic()
        closed_at = None
        for byte in head:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.05)
            if reader.at_eof() or writer.is_closing():
                break
            if time.monotonic() - started > SHORT + 2:
                break
        await read_all_until_close(reader, timeout=2)
        closed_at = time.monotonic() - started
    assert closed_at < SHORT + 1.5
    await nothing_forwarded(backend)


async def test_head_then_half_body_then_stall_is_408(limited: Runtime, backend: Backend) -> None:
    async with connect(limited.traffic_port) as (reader, writer):
        started = time.monotonic()
        writer.write(
            b"POST /slow HTTP/1.1\r\nHost: a\r\nX-Request-Id: slow-body-1\r\n"
            b"Content-Length: 100\r\n\r\n" + b"b" * 50
        )
        await writer.drain()
        raw = await read_all_until_close(reader, timeout=SHORT + 2)
        elapsed = time.monotonic() - started
    assert SHORT * 0.8 <= elapsed < SHORT + 1.5
    assert parse_error(raw, 408)["request_id"] == "slow-body-1"  # the client's own id
    await nothing_forwarded(backend)
    assert client_errors(limited, "body_timeout") == 1


async def test_idle_keepalive_connection_is_closed(limited: Runtime, backend: Backend) -> None:
    async with connect(limited.traffic_port) as (reader, writer):
        writer.write(request_bytes("GET", "/ka"))
        resp = await asyncio.wait_for(read_response(reader), 3)
        assert resp.status == 200
        idle_from = time.monotonic()
        rest = await read_all_until_close(reader, timeout=SHORT + 2)
        idle = time.monotonic() - idle_from
    assert rest == b""
    assert SHORT * 0.8 <= idle < SHORT + 1.5


async def test_keepalive_connection_used_within_the_timeout_stays_open(
    limited: Runtime, backend: Backend
) -> None:
    async with connect(limited.traffic_port) as (reader, writer):
        for i in range(4):  # 4 x 0.3 s > the keep-alive timeout, but never idle that long
            writer.write(request_bytes("GET", f"/ka{i}"))
            resp = await asyncio.wait_for(read_response(reader), 3)
            assert resp.status == 200
            await asyncio.sleep(SHORT * 0.6)
    assert len(forwarded(backend.seen)) == 4


async def test_other_clients_are_served_during_slowloris(backend: Backend) -> None:
    config = make_config(backend.url, limits={"header_timeout_s": 10.0})
    async with running_proxy(config) as rt:
        stalled = []
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", rt.traffic_port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Part: ")
            stalled.append(writer)
        await asyncio.sleep(0.1)
        try:
            started = time.monotonic()
            for i in range(5):
                resp = await exchange(rt.traffic_port, request_bytes("GET", f"/fast{i}"), timeout=2)
                assert resp.status == 200
            per_request = (time.monotonic() - started) / 5
        finally:
            for writer in stalled:
                writer.close()
    assert per_request < 0.2
    assert [s.path for s in forwarded(backend.seen)] == [f"/fast{i}" for i in range(5)]
