"""Production failures: down, hung, garbage, resets, oversized bodies, and how they count."""

from __future__ import annotations

import asyncio
import time

from shadowproxy.runtime import Runtime
from tests.proxy._util import (
    RawResponse,
    connect,
    exchange,
    fixed,
    raw_upstream,
    read_all_until_close,
    read_response,
    request_bytes,
)
from tests.support.faulty_servers import send_reset
from tests.support.proxy import free_port, make_config, metric_value, running_proxy
from tests.support.servers import Backend

TIMEOUT_MS = 300


def outcome(rt: Runtime, name: str) -> float:
    return metric_value(
        rt,
        "shadowproxy_requests_total",
        role="production", model="prod", version="1.0", outcome=name,
    )  # fmt: skip


def outcomes(rt: Runtime) -> dict[str, float]:
    return {o: outcome(rt, o) for o in ("ok", "error", "timeout", "invalid")}


def assert_json_error(resp: RawResponse, status: int) -> None:
    assert resp.status == status
    assert (resp.get("Content-Type") or "").startswith("application/json")
    assert len(resp.body) < 512
    data = resp.json()
    assert isinstance(data, dict) and data["error"]
    rid = resp.get("X-Request-Id")
    assert rid and data.get("request_id") == rid


async def hang(_req: bytes, reader: asyncio.StreamReader, _w: asyncio.StreamWriter) -> bool:
    await reader.read()  # until the proxy gives up and closes
    return False


async def test_success_counts_ok(backend: Backend) -> None:
    async with running_proxy(make_config(backend.url)) as rt:
        for _ in range(3):
            resp = await exchange(rt.traffic_port, request_bytes("GET", "/ok"))
            assert resp.status == 200
        assert outcomes(rt) == {"ok": 3, "error": 0, "timeout": 0, "invalid": 0}


async def test_production_down_is_502_json_and_counted() -> None:
    config = make_config(f"http://127.0.0.1:{free_port()}")
    async with running_proxy(config, wait_ready=False) as rt:
        async with connect(rt.traffic_port) as (reader, writer):
            for i in range(2):  # the client connection stays usable after a 502
                writer.write(request_bytes("GET", f"/down{i}", [("X-Request-Id", f"down-{i}")]))
                resp = await asyncio.wait_for(read_response(reader), 3)
                assert_json_error(resp, 502)
                assert resp.get("X-Request-Id") == f"down-{i}"
        assert outcomes(rt) == {"ok": 0, "error": 2, "timeout": 0, "invalid": 0}


async def test_hung_production_is_504_within_the_timeout() -> None:
    async with (
        raw_upstream(hang) as upstream,
        running_proxy(make_config(upstream.url, production={"timeout_ms": TIMEOUT_MS})) as rt,
    ):
        started = time.monotonic()
        resp = await exchange(rt.traffic_port, request_bytes("POST", "/hang", body=b"{}"))
        elapsed = time.monotonic() - started
        assert_json_error(resp, 504)
        assert TIMEOUT_MS / 1000 * 0.9 <= elapsed < TIMEOUT_MS / 1000 + 1.0  # slack: CI load
        assert outcomes(rt) == {"ok": 0, "error": 0, "timeout": 1, "invalid": 0}
        assert len(upstream.requests) == 1  # a timed-out request is not retried


async def test_a_head_request_to_hung_production_gets_a_504_head_only() -> None:
    async with (
        raw_upstream(hang) as upstream,
        running_proxy(make_config(upstream.url, production={"timeout_ms": TIMEOUT_MS})) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        writer.write(request_bytes("HEAD", "/hang", [("X-Request-Id", "head-1")]))
        resp = await asyncio.wait_for(read_response(reader, head_request=True), 3)
        assert resp.status == 504 and resp.get("X-Request-Id") == "head-1"
        assert int(resp.get("Content-Length") or 0) > 0  # what a GET's body would measure
        # No body follows the head: the next answer on the keep-alive connection is the
        # next request's, not the JSON of this one read as a response.
        writer.write(request_bytes("HEAD", "/hang", [("X-Request-Id", "head-2")]))
        resp = await asyncio.wait_for(read_response(reader, head_request=True), 3)
        assert resp.status == 504 and resp.get("X-Request-Id") == "head-2"


async def test_a_504_during_the_drain_says_connection_close() -> None:
    async with (
        raw_upstream(hang) as upstream,
        running_proxy(make_config(upstream.url, production={"timeout_ms": TIMEOUT_MS})) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/hang"))
        await writer.drain()
        await asyncio.sleep(0.05)  # in flight when the stop comes
        rt.request_stop()
        resp = await asyncio.wait_for(read_response(reader), 3)
        assert_json_error(resp, 504)
        assert (resp.get("Connection") or "").lower() == "close"
        assert await asyncio.wait_for(reader.read(), 3) == b""  # and the proxy closes


async def test_production_hanging_mid_body_cuts_the_client() -> None:
    async def head_then_hang(
        _req: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
        await writer.drain()
        await reader.read()
        return False

    async with (
        raw_upstream(head_then_hang) as upstream,
        running_proxy(make_config(upstream.url, production={"timeout_ms": TIMEOUT_MS})) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/partial"))
        raw = await read_all_until_close(reader, timeout=3)
        assert raw.startswith(b"HTTP/1.1 200 ")
        assert len(raw.partition(b"\r\n\r\n")[2]) < 1000
        assert outcomes(rt)["timeout"] == 1


async def test_garbage_from_production_is_502_and_counted_invalid() -> None:
    garbage = b"\x16\x03\x01\x02\x00 this is not HTTP at all\r\n\r\n"
    async with (
        raw_upstream(fixed(garbage, close=True)) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
    ):
        resp = await exchange(rt.traffic_port, request_bytes("GET", "/garbage"))
        assert_json_error(resp, 502)
        assert outcomes(rt) == {"ok": 0, "error": 0, "timeout": 0, "invalid": 1}


async def test_production_closing_before_any_byte_is_502() -> None:
    async def close_at_once(_req: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.transport.abort()
        return False

    async with (
        raw_upstream(close_at_once) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
    ):
        resp = await exchange(rt.traffic_port, request_bytes("GET", "/closed"))
        assert_json_error(resp, 502)
        assert outcomes(rt)["error"] == 1
        assert outcomes(rt)["ok"] == 0


async def test_reset_mid_body_cuts_the_client_connection() -> None:
    async def reset_mid_body(
        _req: bytes, _r: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"b" * 5000)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
        return False

    async with (
        raw_upstream(reset_mid_body) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/reset"))
        raw = await read_all_until_close(reader, timeout=3)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"content-length: 100000" in head.lower()
        assert len(body) < 100000  # cut, never a clean complete response
        assert outcomes(rt)["error"] == 1
        assert outcomes(rt)["ok"] == 0


async def test_reset_mid_chunked_body_does_not_end_the_chunked_stream() -> None:
    async def reset_mid_chunks(
        _req: bytes, _r: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
        return False

    async with (
        raw_upstream(reset_mid_chunks) as upstream,
        running_proxy(make_config(upstream.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/reset"))
        raw = await read_all_until_close(reader, timeout=3)
        assert raw.startswith(b"HTTP/1.1 200 ")
        assert not raw.endswith(b"0\r\n\r\n")  # no terminating chunk: the client sees a cut


async def test_response_over_max_response_bytes_is_cut(backend: Backend) -> None:
    from aiohttp import web

    limit = 100_000

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/chunked":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for _ in range(20):
                await resp.write(b"c" * 16384)
            await resp.write_eof()
            return resp
        return web.Response(body=b"d" * (limit * 3))

    backend.handler = handler
    config = make_config(backend.url, limits={"max_response_bytes": limit})
    async with running_proxy(config) as rt:
        for path in ("/declared", "/chunked"):
            async with connect(rt.traffic_port) as (reader, writer):
                writer.write(request_bytes("GET", path))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
                if head.startswith(b"HTTP/1.1 502 "):
                    # Refused before any byte of the body was relayed: also correct.
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    body = await asyncio.wait_for(reader.readexactly(length), 3)
                    assert b'"error"' in body and length < 512
                    continue
                assert head.startswith(b"HTTP/1.1 200 "), head
                body = await read_all_until_close(reader, timeout=3)
            assert len(body) <= limit + 16384, path
            assert not body.endswith(b"0\r\n\r\n"), path
        assert outcomes(rt)["invalid"] == 2
        assert outcomes(rt)["ok"] == 0


async def test_proxy_keeps_serving_after_upstream_failures() -> None:
    calls = 0

    async def flaky(req: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        nonlocal calls
        calls += 1
        if b"/hang" in req.split(b"\r\n")[0]:
            await reader.read()
            return False
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        return True

    async with (
        raw_upstream(flaky) as upstream,
        running_proxy(make_config(upstream.url, production={"timeout_ms": TIMEOUT_MS})) as rt,
    ):
        assert (await exchange(rt.traffic_port, request_bytes("GET", "/hang"))).status == 504
        assert (await exchange(rt.traffic_port, request_bytes("GET", "/fine"))).status == 200
        assert outcomes(rt) == {"ok": 1, "error": 0, "timeout": 1, "invalid": 0}
    assert calls == 2


async def test_a_client_that_leaves_is_recorded_without_a_status_it_never_got(
    candidate_backend: Backend,
) -> None:
    from shadowproxy.pairing.record import PairRecord
    from tests.support.waiting import wait_for

    records: list[PairRecord] = []
    config = make_config("http://unused", production={"timeout_ms": 5000},
                         candidates=[{"name": "c", "url": candidate_backend.url}])  # fmt: skip
    async with raw_upstream(hang) as upstream:
        config["production"]["url"] = upstream.url
        async with running_proxy(config, wait_ready=False) as rt:
            rt.stream.subscribe(records.append)
            async with connect(rt.traffic_port) as (_reader, writer):
                writer.write(request_bytes("POST", "/leave", body=b"{}"))
                await writer.drain()
                await asyncio.sleep(0.2)  # production is working on it; the client goes
                # A reset: a FIN alone could be a half-close, still waiting for the answer.
                send_reset(writer)
            await wait_for(lambda: len(records) == 1, what="the pair record")
    production = records[0].production
    assert production is not None
    assert production.outcome == "dropped" and production.status is None
    assert production.detail == "client closed the connection"
