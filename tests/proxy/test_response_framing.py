"""Upstream answers that test the response path: their framing, their end, and whether the
connection that carried them may carry another client's request."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from shadowproxy.proxy import upstream as upstream_module
from shadowproxy.runtime import Runtime
from tests.proxy._util import (
    connect,
    exchange,
    raw_upstream,
    read_all_until_close,
    read_response,
    request_bytes,
)
from tests.support.faulty_servers import send_reset
from tests.support.proxy import make_config, metric_value, running_proxy


def path_of(request: bytes) -> bytes:
    return request.split(b" ", 2)[1]


def peer(writer: asyncio.StreamWriter) -> int:
    """The proxy's port of an upstream connection: which connection carried a request."""
    return int(writer.get_extra_info("peername")[1])


def outcome(rt: Runtime, name: str) -> float:
    return metric_value(
        rt, "shadowproxy_requests_total",
        role="production", model="prod", version="1.0", outcome=name,
    )  # fmt: skip


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


# -- bytes beyond the end of an answer --------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        ok(b"ok") + ok(b"STALE"),  # more than the declared length
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nSTALE",  # a body on a 204
    ],
    ids=["past-content-length", "body-on-204"],
)
async def test_bytes_after_an_answer_never_reach_the_next_request(answer: bytes) -> None:
    connections: list[tuple[bytes, int]] = []

    async def respond(request: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        connections.append((path_of(request), peer(w)))
        if path_of(request) == b"/extra":
            w.write(answer)
        else:
            w.write(ok(path_of(request)[1:]))
        await w.drain()
        return True

    async with (
        raw_upstream(respond) as up,
        running_proxy(make_config(up.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        # Pipelined: the second request is sent upstream as soon as the first is answered.
        writer.write(request_bytes("GET", "/extra") + request_bytes("GET", "/second"))
        first = await asyncio.wait_for(read_response(reader), 5)
        second = await asyncio.wait_for(read_response(reader), 5)
        assert first.status in (200, 204) and b"STALE" not in first.raw
        assert (second.status, second.body) == (200, b"second")
        if first.status == 204:
            assert first.get("content-length") is None  # RFC 9110 §8.6
        # The connection that carried the extra bytes was not used again.
        (extra_conn,) = [c for p, c in connections if p == b"/extra"]
        (second_conn,) = [c for p, c in connections if p == b"/second"]
        assert second_conn != extra_conn
        other = await exchange(rt.traffic_port, request_bytes("GET", "/third"))
        assert (other.status, other.body) == (200, b"third")


# -- an upstream connection paused for a slow client -------------------------------------


async def test_a_connection_paused_for_a_slow_client_can_read_the_next_answer() -> None:
    big = 4 * 1024 * 1024
    connections: list[int] = []

    async def respond(request: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        connections.append(peer(w))
        w.write(ok(b"x" * big if path_of(request) == b"/big" else b"small"))
        await w.drain()
        return True

    async with raw_upstream(respond) as up:
        config = make_config(up.url, production={"timeout_ms": 1000})
        async with (
            running_proxy(config) as rt,
            connect(rt.traffic_port) as (reader, writer),
        ):
            writer.write(request_bytes("GET", "/big"))
            await asyncio.sleep(0.3)  # the client reads late: the proxy pauses production
            received = 0
            while received < big:  # then slowly, so the last body bytes pause it again
                received += len(await asyncio.wait_for(reader.read(65536), 10))
                await asyncio.sleep(0.001)
            started = time.monotonic()
            small = await exchange(rt.traffic_port, request_bytes("GET", "/small"), timeout=5)
            assert (small.status, small.body) == (200, b"small")
            assert time.monotonic() - started < 0.9  # not a 504 after production's timeout
            assert connections[-1] == connections[-2]  # on the connection that was paused


# -- the end of a body that runs to the close --------------------------------------------


async def _cut_close_delimited(
    _req: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter
) -> bool:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ")
    await w.drain()
    await asyncio.sleep(0.05)
    send_reset(w)
    return False


async def test_a_reset_in_a_body_that_runs_to_the_close_is_no_end_for_http11() -> None:
    async with (
        raw_upstream(_cut_close_delimited) as up,
        running_proxy(make_config(up.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/cut"))
        raw = await read_all_until_close(reader, timeout=3)
        assert raw.startswith(b"HTTP/1.1 200 ") and b"hello " in raw
        assert not raw.endswith(b"0\r\n\r\n")  # no last chunk: the client sees the cut
        assert outcome(rt, "error") == 1 and outcome(rt, "ok") == 0


async def _chunked_cut(_req: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await w.drain()
    await asyncio.sleep(0.05)
    w.transport.close()  # an orderly close, before the last chunk
    return False


@pytest.mark.parametrize("respond", [_cut_close_delimited, _chunked_cut], ids=["reset", "close"])
async def test_an_http10_client_gets_a_reset_for_a_body_cut_short(respond: object) -> None:
    # An HTTP/1.0 client reads the body until the close: an orderly close would read as
    # the whole answer, only a reset says it was cut.
    async with (
        raw_upstream(respond) as up,  # type: ignore[arg-type]
        running_proxy(make_config(up.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/cut", version="HTTP/1.0"))
        received = b""
        with pytest.raises(ConnectionResetError):
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                received += chunk
        assert not received or received.startswith(b"HTTP/1.1 200 ")
        assert outcome(rt, "ok") == 0


async def test_an_orderly_close_still_ends_a_body_that_runs_to_the_close() -> None:
    async def to_the_close(_req: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello world")
        await w.drain()
        return False

    async with (
        raw_upstream(to_the_close) as up,
        running_proxy(make_config(up.url)) as rt,
    ):
        response = await exchange(rt.traffic_port, request_bytes("GET", "/eof"))
        assert response.chunked and response.body == b"hello world"
        assert outcome(rt, "ok") == 1


# -- answers the proxy cannot relay faithfully -------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: "
        + b"a" * (upstream_module.MAX_RESPONSE_HEAD_BYTES + 10)
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["gzip-chunked", "gzip", "chunked-twice", "unasked-101", "endless-head"],
)
async def test_answers_that_cannot_be_relayed_are_502_and_the_proxy_serves_on(head: bytes) -> None:
    async def respond(request: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if path_of(request) == b"/bad":
            w.write(head + b"5\r\nhello\r\n0\r\n\r\n")
        else:
            w.write(ok(b"fine"))
        await w.drain()
        return True

    async with (
        raw_upstream(respond) as up,
        running_proxy(make_config(up.url)) as rt,
    ):
        bad = await exchange(rt.traffic_port, request_bytes("GET", "/bad"))
        assert bad.status == 502 and b"hello" not in bad.raw
        assert outcome(rt, "invalid") == 1
        fine = await exchange(rt.traffic_port, request_bytes("GET", "/fine"))
        assert (fine.status, fine.body) == (200, b"fine")


async def test_an_http10_client_expecting_100_continue_is_not_sent_a_1xx() -> None:
    async def echo(request: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(ok(request.rpartition(b"\r\n\r\n")[2]))
        await w.drain()
        return True

    async with (
        raw_upstream(echo) as up,
        running_proxy(make_config(up.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        head = request_bytes(
            "POST", "/echo", [("Expect", "100-continue"), ("Content-Length", "5")],
            version="HTTP/1.0", content_length=False,
        )  # fmt: skip
        writer.write(head)
        with contextlib.suppress(TimeoutError):
            early = await asyncio.wait_for(reader.read(100), 0.3)
            assert early == b"", early  # RFC 9110 §15.2: no 1xx to an HTTP/1.0 client
        writer.write(b"hello")
        response = await asyncio.wait_for(read_response(reader), 5)
        assert (response.status, response.body, response.interim) == (200, b"hello", [])


# -- reusing upstream connections ------------------------------------------------------


def _closes_silently_on_the_second_request() -> tuple[list[bytes], object]:
    seen: list[bytes] = []

    async def respond(request: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        seen.append(request.split(b"\r\n", 1)[0])
        if path_of(request) == b"/warm":
            w.write(ok(b"warm"))
            await w.drain()
            return True
        if len([s for s in seen if b"/act" in s]) == 1:
            return False  # acted on the request, then closed without a byte of answer
        w.write(ok(b"again"))
        await w.drain()
        return True

    return seen, respond


@pytest.mark.parametrize(("method", "retried"), [("POST", False), ("PUT", True), ("GET", True)])
async def test_only_idempotent_requests_are_retried_after_a_silent_close(
    method: str, retried: bool
) -> None:
    seen, respond = _closes_silently_on_the_second_request()
    async with (
        raw_upstream(respond) as up,  # type: ignore[arg-type]
        running_proxy(make_config(up.url)) as rt,
    ):
        warm = await exchange(rt.traffic_port, request_bytes("GET", "/warm"))
        assert warm.status == 200
        # Sent on the pooled connection, which the upstream closes after reading it.
        response = await exchange(rt.traffic_port, request_bytes(method, "/act", body=b"{}"))
        acted = [s for s in seen if b"/act" in s]
        if retried:
            assert (response.status, response.body) == (200, b"again")
            assert len(acted) == 2
        else:
            # RFC 9110 §9.2.2: a POST the upstream may have run is never sent twice.
            assert response.status == 502
            assert len(acted) == 1


async def test_head_answers_keep_the_upstream_connection() -> None:
    connections: list[int] = []

    async def respond(request: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        connections.append(peer(w))
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        if not request.startswith(b"HEAD "):
            w.write(b"x" * 1234)
        await w.drain()
        return True

    async with (
        raw_upstream(respond) as up,
        running_proxy(make_config(up.url)) as rt,
    ):
        for method in ("HEAD", "HEAD", "GET"):
            response = await exchange(
                rt.traffic_port, request_bytes(method, "/h"), head_request=method == "HEAD"
            )
            assert response.status == 200 and response.get("content-length") == "1234"
        assert len(set(connections)) == 1


async def test_a_connection_idle_past_the_reuse_window_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream_module, "REUSE_IDLE_S", 0.2)
    connections: list[int] = []

    async def respond(request: bytes, _r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        connections.append(peer(w))
        w.write(ok(b"ok"))
        await w.drain()
        return True

    async with (
        raw_upstream(respond) as up,
        running_proxy(make_config(up.url)) as rt,
    ):
        for pause in (0.0, 0.0, 0.4):
            await asyncio.sleep(pause)
            assert (await exchange(rt.traffic_port, request_bytes("POST", "/p"))).status == 200
        assert connections[0] == connections[1] != connections[2]
