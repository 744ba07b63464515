"""Report sources: the forms, DNS discovery with real resolution, and what is refused."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shadowproxy.compare.discovery import parse_dns_source, resolve, unique_addresses
from shadowproxy.compare.httpjson import fetch_json
from shadowproxy.compare.prometheus import parse_prometheus_source, state_query
from shadowproxy.compare.sources import read_snapshots, read_sources
from shadowproxy.config import config_from_dict
from shadowproxy.config.model import Config
from shadowproxy.errors import StateError
from tests.compare.test_comparator import fold, records
from tests.scaleout.replicas import dual_stack_port
from tests.support.proxy import free_port


def config() -> Config:
    return config_from_dict(
        {
            "production": {"name": "prod", "version": "1", "url": "http://127.0.0.1:9"},
            "candidates": [{"name": "cand", "version": "2", "url": "http://127.0.0.1:10"}],
            "compare": {"outputs": {"score": "probabilities", "label": "label"}, "seed": 7},
        }
    )


def snapshot(n: int, seed: int) -> dict:
    return fold(config(), records(n, seed=seed)).snapshot()


class Admin:
    """A loopback admin listener serving a fixed snapshot (a replica seen from outside)."""

    def __init__(self, document: dict, host: str = "127.0.0.1", port: int = 0) -> None:
        self.document = document
        self.host = host
        self.runner: web.AppRunner | None = None
        self.port = port

    async def __aenter__(self) -> Admin:
        async def serve(_: web.Request) -> web.Response:
            return web.json_response(self.document)

        app = web.Application()
        app.router.add_get("/admin/snapshot", serve)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def test_dns_sources_need_a_name_and_the_admin_port() -> None:
    ds = parse_dns_source("dns+http://shadowproxy-headless.ml.svc:9090/")
    assert (ds.host, ds.port, ds.path) == ("shadowproxy-headless.ml.svc", 9090, "")
    assert ds.replica_urls(["10.0.0.7", "fd00::7"]) == [
        "http://10.0.0.7:9090",
        "http://[fd00::7]:9090",
    ]
    for bad, message in (
        ("dns+http://headless.ml.svc", "needs the admin port"),
        ("dns+http://headless.ml.svc:99999", "port"),
        ("dns+http://:9090", "expected dns+http://NAME:PORT"),
        ("dns+http://headless:9090?x=1", "takes no user, query or fragment"),
    ):
        with pytest.raises(StateError, match=re.escape(message)) as info:
            parse_dns_source(bad)
        assert bad in str(info.value)


def test_addresses_are_distinct_and_in_a_stable_order() -> None:
    infos = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 9090, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", 9090)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 9090)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", 9090)),
    ]
    assert unique_addresses(infos) == ["127.0.0.1", "127.0.0.2", "::1"]
    assert unique_addresses(list(reversed(infos))) == ["127.0.0.1", "127.0.0.2", "::1"]


def test_resolution_is_real_and_a_name_without_addresses_is_named() -> None:
    assert "127.0.0.1" in resolve(parse_dns_source("dns+http://localhost:9090"))
    with pytest.raises(StateError) as info:
        resolve(parse_dns_source("dns+http://no-such-replica.invalid:9090"))
    assert "no-such-replica.invalid resolves to no address" in str(info.value)
    assert info.value.__cause__ is not None


async def test_every_address_of_the_name_is_read_and_merged() -> None:
    # localhost resolves to 127.0.0.1, and on many machines to ::1 too: a replica listens
    # on every address it has here, on one port. (tests/scaleout always has two.)
    addresses = resolve(parse_dns_source("dns+http://localhost:9090"))
    port = dual_stack_port() if "::1" in addresses else free_port()
    source = f"dns+http://localhost:{port}"
    async with contextlib.AsyncExitStack() as replicas:
        for i, address in enumerate(addresses):
            await replicas.enter_async_context(Admin(snapshot(10 + i, seed=i), address, port))
        merged = await asyncio.to_thread(read_sources, [source], config(), None)
    assert merged.kind == "snapshot" and merged.sources == (source,)
    assert merged.origins == tuple(
        f"http://[{a}]:{port}" if ":" in a else f"http://{a}:{port}" for a in addresses
    )
    assert merged.targets["cand"].requests == sum(10 + i for i in range(len(addresses)))


async def test_one_replica_that_does_not_answer_fails_the_source(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    source = f"dns+http://localhost:{port}"
    with pytest.raises(StateError) as info:
        await asyncio.to_thread(read_snapshots, source)
    message = str(info.value)
    assert message.startswith(source) and f"replica http://127.0.0.1:{port}" in message
    assert "cannot read" in message


async def test_an_admin_url_and_a_file_merge_exactly(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    from shadowproxy.compare.persist import write_snapshot

    write_snapshot(path, snapshot(40, seed=3))
    async with Admin(snapshot(25, seed=4)) as replica:
        url = f"http://127.0.0.1:{replica.port}"
        merged = await asyncio.to_thread(read_sources, [url, str(path)], config(), None)
    assert merged.origins == (url, str(path))
    assert merged.targets["cand"].requests == 65
    assert merged.describe() == {
        "kind": "snapshot",
        "sources": [url, str(path)],
        "replicas": 2,
        "origins": [url, str(path)],
    }


def test_a_prometheus_source_stands_alone_and_unknown_forms_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot be combined with other sources"):
        read_sources(["prometheus+http://127.0.0.1:9", str(tmp_path / "s.json")], config(), None)
    with pytest.raises(StateError, match="cannot be combined"):
        read_sources(["prometheus+http://a:9090", "prometheus+http://b:9090"], config(), None)
    with pytest.raises(StateError, match="not a source form"):
        read_sources(["ftp://host/snapshot.json"], config(), None)
    with pytest.raises(StateError, match="no source"):
        read_sources([], config(), None)


def test_prometheus_sources_name_the_api_and_label_matchers() -> None:
    ps = parse_prometheus_source(
        'prometheus+https://prom.example:9090/prometheus/?match=job="churn",namespace="ml"'
    )
    assert ps.base_url == "https://prom.example:9090/prometheus"
    assert ps.match == 'job="churn",namespace="ml"'
    assert parse_prometheus_source("prometheus+http://p:9090").match == ""
    for bad in (
        "prometheus+http://p:9090?match={job='x'}",
        "prometheus+http://p:9090?step=1",
        "prometheus+ftp://p:9090",
    ):
        with pytest.raises(StateError):
            parse_prometheus_source(bad)
    query = state_query('job="churn"')
    assert query.count('job="churn"') == 4  # every selector is restricted
    assert query.startswith("sum by (__name__, ") and " or on(__name__, " in query


def test_one_source_given_twice_is_refused(tmp_path: Path) -> None:
    from shadowproxy.compare.persist import write_snapshot

    path = tmp_path / "snapshot.json"
    write_snapshot(path, snapshot(10, seed=1))
    for twice in ([str(path), str(path)], [str(path), str(tmp_path / "." / "snapshot.json")],
                  ["http://127.0.0.1:9/", "http://127.0.0.1:9/admin/snapshot"]):  # fmt: skip
        with pytest.raises(StateError, match="given twice.*would count twice"):
            read_sources(twice, config(), None)


def test_an_admin_url_that_does_not_parse_is_a_source_error() -> None:
    for bad in ("http://[::1", "http://127.0.0.1:port", "http://"):
        with pytest.raises(StateError, match="is not a valid URL") as info:
            read_snapshots(bad)
        assert str(info.value).startswith(bad)


async def _raw_server(answer: Any) -> tuple[asyncio.Server, int]:
    """A loopback server that reads a request head, then runs ``answer(writer)``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await answer(writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_an_admin_listener_that_trickles_is_cut_at_the_whole_timeout() -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):  # one byte every 0.1 s: each read is quick, the whole is not
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.1)

    server, port = await _raw_server(trickle)
    async with server:
        started = time.monotonic()
        with pytest.raises(StateError, match="did not send its whole answer within 0.5 s"):
            await asyncio.to_thread(read_snapshots, f"http://127.0.0.1:{port}", 0.5)
        assert time.monotonic() - started < 5


async def test_an_answer_larger_than_the_cap_is_refused() -> None:
    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")  # no length: until the connection closes
        for _ in range(200):
            writer.write(b" " * 65536)
            await writer.drain()

    server, port = await _raw_server(endless)
    async with server:
        with pytest.raises(StateError, match="answered more than 1000000 bytes"):
            await asyncio.to_thread(
                fetch_json, f"http://127.0.0.1:{port}/admin/snapshot", "src", "the admin listener",
                timeout_s=10, max_bytes=1_000_000,
            )  # fmt: skip
