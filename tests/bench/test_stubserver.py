"""The benchmark's Python model server, healthy and faulty, against real loopback clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.load import LatencyProbe, request_bytes  # noqa: E402
from bench.nginx import STUB_RESPONSE  # noqa: E402
from bench.stubserver import StubServer, refusing_port, serve  # noqa: E402
from shadowproxy.devtools.ports import free_ports  # noqa: E402


@contextlib.asynccontextmanager
async def running(server: StubServer) -> AsyncIterator[int]:
    (port,) = free_ports(1)
    ready = asyncio.Event()
    task = asyncio.create_task(serve(server, "127.0.0.1", port, ready))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        yield port
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def exchange(port: int, request: bytes | None = None) -> tuple[bytes, bytes]:
    """One request on a new connection; the response head and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await ask(reader, writer, port, request)
    finally:
        writer.close()


async def ask(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    port: int,
    request: bytes | None = None,
) -> tuple[bytes, bytes]:
    writer.write(request or request_bytes("127.0.0.1", port))
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


def status_request(port: int) -> bytes:
    return f"GET /_status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


async def requests_seen(port: int) -> int:
    _, body = await exchange(port, status_request(port))
    return int(json.loads(body)["requests"])


async def test_answers_the_stub_response_after_the_delay_and_counts_requests() -> None:
    async with running(StubServer("answer", delay_s=0.03)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.perf_counter()
        head, body = await ask(reader, writer, port)
        elapsed = time.perf_counter() - started
        head2, _ = await ask(reader, writer, port)  # keep-alive: the same connection again
        writer.close()
        assert head.startswith(b"HTTP/1.1 200") and head2.startswith(b"HTTP/1.1 200")
        assert body == STUB_RESPONSE.encode()
        assert elapsed >= 0.03
        assert await requests_seen(port) == 2  # the status requests are not counted


async def test_a_hanging_server_reads_the_request_and_never_answers() -> None:
    async with running(StubServer("hang")) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes("127.0.0.1", port))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        assert await requests_seen(port) == 1
        writer.close()


async def test_a_crash_looping_server_resets_connections_then_comes_back() -> None:
    server = StubServer("crash", up_s=0.2, down_s=0.3)
    async with running(server) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head, _ = await ask(reader, writer, port)
        assert head.startswith(b"HTTP/1.1 200")
        # The open connection is reset by the crash, 0.2 s after the start.
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), 2)
        assert server.crashes == 1
        # While it restarts, a new connection is accepted and reset at once.
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await exchange(port)
        await asyncio.sleep(0.35)  # restarted
        head, _ = await exchange(port)
        assert head.startswith(b"HTTP/1.1 200")


def test_a_refusing_port_refuses_connections() -> None:
    with refusing_port() as port, pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_on_uvloop_a_delay_is_never_shorter_than_asked() -> None:
    """uvloop's timers tick in milliseconds and may fire up to one tick early."""
    (port,) = free_ports(1)
    cmd = [sys.executable, "-m", "bench.stubserver", f"--port={port}", "--delay-ms=2"]
    proc = subprocess.Popen([*cmd, "--loop=uvloop"], cwd=REPO)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                probe = LatencyProbe("127.0.0.1", port)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the stub server did not start"
                time.sleep(0.05)
        try:
            probe.send(100)
        finally:
            probe.close()
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    assert min(probe.samples) >= 2_000_000  # ns
    assert sorted(probe.samples)[50] < 4_000_000  # and not a tick or more late at the median
