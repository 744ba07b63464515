"""What reaches production of a client's request target and headers, and half-closed
clients: checked on the exact bytes an upstream receives."""

from __future__ import annotations

import asyncio

import pytest

from tests.proxy._util import (
    connect,
    exchange,
    fixed,
    raw_upstream,
    read_all_until_close,
    read_response,
    request_bytes,
)
from tests.support.proxy import make_config, running_proxy

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def request_line(raw: bytes) -> bytes:
    return raw.split(b"\r\n", 1)[0]


def header_names(raw: bytes) -> list[bytes]:
    head = raw.partition(b"\r\n\r\n")[0]
    return [line.partition(b":")[0].lower() for line in head.split(b"\r\n")[1:]]


def header(raw: bytes, name: bytes) -> list[bytes]:
    head = raw.partition(b"\r\n\r\n")[0]
    found = []
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.lower() == name:
            found.append(value.strip())
    return found


# -- half-closed clients -------------------------------------------------------------------


async def test_a_client_that_half_closes_after_its_requests_gets_every_answer() -> None:
    async with (
        raw_upstream(fixed(OK)) as up,
        running_proxy(make_config(up.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        writer.write(b"".join(request_bytes("GET", f"/n{i}") for i in range(3)))
        await writer.drain()
        writer.write_eof()  # shutdown(SHUT_WR): nothing more will come
        for _ in range(3):
            response = await asyncio.wait_for(read_response(reader), 5)
            assert (response.status, response.body) == (200, b"ok")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then the proxy closes
        assert [request_line(r) for r in up.requests] == [
            b"GET /n0 HTTP/1.1", b"GET /n1 HTTP/1.1", b"GET /n2 HTTP/1.1",
        ]  # fmt: skip


async def test_a_half_close_in_the_middle_of_a_request_closes_without_forwarding_it() -> None:
    async with (
        raw_upstream(fixed(OK)) as up,
        running_proxy(make_config(up.url)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        writer.write(b"POST /cut HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.write_eof()
        assert await read_all_until_close(reader, timeout=5) == b""
        assert up.requests == []


# -- headers the proxy owns ------------------------------------------------------------------


async def test_underscore_spellings_of_headers_the_proxy_owns_are_dropped() -> None:
    # WSGI and CGI read X_Forwarded_For as X-Forwarded-For: passed on, it would let a
    # client spoof its address, or mark a real request as a shadow copy.
    owned = [
        ("X_Forwarded_For", "6.6.6.6"), ("X_Real_IP", "6.6.6.6"), ("X_Forwarded_Host", "evil"),
        ("X_Shadow_Request", "1"), ("x_shadow_anything", "1"), ("X_Request_Id", "forged"),
        ("Transfer_Encoding", "chunked"), ("Proxy_Authorization", "secret"),
    ]  # fmt: skip
    kept = [("X_Custom_Thing", "kept"), ("Accept_Language", "fr")]
    async with (
        raw_upstream(fixed(OK)) as up,
        running_proxy(make_config(up.url)) as rt,
    ):
        response = await exchange(rt.traffic_port, request_bytes("GET", "/h", owned + kept))
        assert response.status == 200
    [seen] = up.requests
    names = header_names(seen)
    for name, _ in owned:
        assert name.lower().encode() not in names, name
    for name, value in kept:
        assert header(seen, name.lower().encode()) == [value.encode()]
    assert header(seen, b"x-forwarded-for") == [b"127.0.0.1"]


async def test_an_empty_host_sends_no_empty_forwarded_host() -> None:
    async with (
        raw_upstream(fixed(OK)) as up,
        running_proxy(make_config(up.url)) as rt,
    ):
        response = await exchange(rt.traffic_port, request_bytes("GET", "/e", host=""))
        assert response.status == 200
    [seen] = up.requests
    assert b"x-forwarded-host" not in header_names(seen)


# -- request targets --------------------------------------------------------------------------


async def test_an_absolute_form_target_with_an_ip_literal_keeps_its_brackets() -> None:
    async with (
        raw_upstream(fixed(OK)) as up,
        running_proxy(make_config(up.url)) as rt,
    ):
        data = b"GET http://[::1]:8080/x?q=1 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"
        response = await exchange(rt.traffic_port, data)
        assert response.status == 200
    [seen] = up.requests
    assert request_line(seen) == b"GET /x?q=1 HTTP/1.1"
    assert header(seen, b"host") == [b"[::1]:8080"]


async def test_a_declined_h2c_offer_keeps_the_authority_of_an_absolute_form_target() -> None:
    async with (
        raw_upstream(fixed(OK)) as up,
        running_proxy(make_config(up.url)) as rt,
    ):
        data = (
            b"GET http://other/y HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
        )
        response = await exchange(rt.traffic_port, data)
        assert response.status == 200
    [seen] = up.requests
    assert request_line(seen) == b"GET /y HTTP/1.1"
    assert header(seen, b"host") == [b"other"]  # RFC 9112 §3.2.2: the target's authority
    assert header(seen, b"x-forwarded-host") == [b"other"]


async def test_options_star_is_forwarded_as_is_even_behind_a_path_prefix() -> None:
    async with raw_upstream(fixed(OK)) as up:
        async with running_proxy(make_config(up.url + "/v2/models/churn")) as rt:
            response = await exchange(rt.traffic_port, request_bytes("OPTIONS", "*"))
            assert response.status == 200
            refused = await exchange(rt.traffic_port, request_bytes("GET", "*"))
            assert refused.status == 400  # RFC 9112 §3.2.4: * is for OPTIONS only
    assert [request_line(r) for r in up.requests] == [b"OPTIONS * HTTP/1.1"]


@pytest.mark.parametrize(
    "target",
    ["/a/../../etc/passwd", "/a/./b", "/..", "/a/%2e%2e/b", "/a/.%2E/b", "/a/%2E?x=1"],
)
async def test_dot_segments_are_refused_so_no_path_leaves_the_configured_prefix(
    target: str,
) -> None:
    async with raw_upstream(fixed(OK)) as up:
        async with running_proxy(make_config(up.url + "/v2/models/churn")) as rt:
            response = await exchange(rt.traffic_port, request_bytes("GET", target))
            assert response.status == 400
            assert b"dot-segments" in response.body
    assert up.requests == []


async def test_dots_inside_names_and_queries_are_ordinary_paths() -> None:
    targets = ["/a.b/..c/file.json", "/x/...", "/q?next=/../up", "/%2e%2e.json"]
    async with (
        raw_upstream(fixed(OK)) as up,
        running_proxy(make_config(up.url)) as rt,
    ):
        for target in targets:
            assert (await exchange(rt.traffic_port, request_bytes("GET", target))).status == 200
    assert [request_line(r) for r in up.requests] == [f"GET {t} HTTP/1.1".encode() for t in targets]
