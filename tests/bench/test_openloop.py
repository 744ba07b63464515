"""The open-loop generator against real loopback servers: schedule, latency, errors."""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.openloop import due_times_ns, open_loop, run_pinned  # noqa: E402


@dataclass
class Behaviour:
    delay_s: float = 0.0  # before each answer, per connection (connections run in parallel)
    status: int = 200
    hang_up: bool = False  # close the connection instead of answering


class LoopbackServer:
    """A small HTTP/1.1 keep-alive server on 127.0.0.1, on its own event loop in a thread."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.port = 0

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        fut.result(timeout=5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        b = self.behaviour
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                if b.hang_up:
                    break
                if b.delay_s:
                    await asyncio.sleep(b.delay_s)
                body = b'{"outputs":[]}'
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (b.status, len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[LoopbackServer]:
    behaviour = getattr(request, "param", Behaviour())
    with LoopbackServer(behaviour) as srv:
        yield srv


def test_due_times_follow_the_rate_exactly() -> None:
    assert list(due_times_ns(1_000, rate=4, count=5)) == [
        1_000,
        250_001_000,
        500_001_000,
        750_001_000,
        1_000_001_000,
    ]
    # No drift: the 10,000th request of a 3 req/s schedule is due exactly 3,333.33 s later.
    *_, last = due_times_ns(0, rate=3, count=10_001)
    assert last == 3_333_333_333_333


def test_every_request_is_sent_on_schedule_and_answered(server: LoopbackServer) -> None:
    res = open_loop("127.0.0.1", server.port, rate=400, duration_s=0.5, connections=4)
    assert res.scheduled == 200
    assert res.completed == 200 and res.errors == 0
    assert server.requests == 200 and server.connections == 4
    assert res.achieved_rps == pytest.approx(400, rel=0.25)
    assert res.latency_us["n"] == res.dispatch_lag_us["n"] == 200
    assert 0 < res.latency_us["p50"] <= res.latency_us["p99"] <= res.latency_us["max"]
    # Latency from the due time includes the service time and any lateness of the send.
    assert res.latency_us["p50"] >= res.service_us["p50"]


@pytest.mark.parametrize("server", [Behaviour(delay_s=0.02)], indirect=True)
def test_latency_runs_from_the_scheduled_time_when_the_server_falls_behind(
    server: LoopbackServer,
) -> None:
    """One connection, 100 req/s due, 20 ms per answer: the server manages 50/s.

    The k-th request leaves only when the k-1 before it are answered, about 20·k ms in, but
    was due at 10·k ms: its latency is about 20 + 10·k ms, though each exchange takes 20 ms.
    A closed-loop client would report 20 ms throughout (coordinated omission).
    """
    res = open_loop("127.0.0.1", server.port, rate=100, duration_s=0.5, connections=1)
    assert res.completed == 50 and res.errors == 0
    assert res.queued > 40  # nearly every request found the one connection busy
    assert res.service_us["p50"] >= 20_000  # each exchange: the server's delay
    assert res.latency_us["p50"] > 150_000  # ≈ 20 + 10·25 ms
    assert res.latency_us["max"] > 400_000  # ≈ 20 + 10·49 ms
    assert res.latency_us["max"] > 8 * res.service_us["p50"]
    assert res.achieved_rps < 70  # ≈ 50/s: the rate asked for was not achieved


@pytest.mark.parametrize("server", [Behaviour(delay_s=0.02)], indirect=True)
def test_with_enough_connections_nothing_waits(server: LoopbackServer) -> None:
    """Same server and rate, 16 connections: about 2 requests in flight, no queueing."""
    res = open_loop("127.0.0.1", server.port, rate=100, duration_s=0.5, connections=16)
    assert res.completed == 50 and res.errors == 0
    assert res.queued == 0
    assert 20_000 <= res.latency_us["p50"] < 100_000
    assert res.achieved_rps == pytest.approx(100, rel=0.25)


@pytest.mark.parametrize("server", [Behaviour(status=503)], indirect=True)
def test_non_2xx_answers_are_errors(server: LoopbackServer) -> None:
    res = open_loop("127.0.0.1", server.port, rate=200, duration_s=0.25, connections=2)
    assert res.scheduled == 50 and res.non_2xx == 50
    assert res.completed == 0 and res.errors == 50 and res.latency_us == {}


@pytest.mark.parametrize("server", [Behaviour(hang_up=True)], indirect=True)
def test_a_connection_closed_mid_request_is_an_error_and_replaced(
    server: LoopbackServer,
) -> None:
    res = open_loop("127.0.0.1", server.port, rate=200, duration_s=0.25, connections=2)
    assert res.scheduled == 50
    assert res.socket_errors == 50 and res.completed == 0
    assert server.connections > 2  # the generator opened new connections and went on


@pytest.mark.parametrize("server", [Behaviour(delay_s=30.0)], indirect=True)
def test_unanswered_requests_are_counted_after_the_drain_time(server: LoopbackServer) -> None:
    started = time.monotonic()
    res = open_loop("127.0.0.1", server.port, rate=100, duration_s=0.2, connections=3, drain_s=0.3)
    assert time.monotonic() - started < 2.0  # bounded: does not wait for the 30 s answers
    assert res.scheduled == 20 and res.completed == 0
    assert res.unfinished == 20  # 3 in flight + 17 waiting for a connection
    assert server.requests == 3  # never more than one request per connection


def test_refused_connections_raise() -> None:
    with LoopbackServer(Behaviour()) as srv:
        port = srv.port
    with pytest.raises(OSError):
        open_loop("127.0.0.1", port, rate=10, duration_s=0.1, connections=1)


def test_the_pinned_command_line_run(server: LoopbackServer) -> None:
    if shutil.which("taskset") is None:
        pytest.fail("taskset is missing (apt-get install -y util-linux)")
    res = run_pinned(server.port, rate=200, duration_s=0.3, connections=2)
    assert res.scheduled == 60 and res.completed == 60 and res.errors == 0
    assert set(res.latency_us) >= {"p50", "p99", "max"}
