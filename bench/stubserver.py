"""A small HTTP/1.1 model server in Python, healthy or faulty, for the benchmark.

It answers every inference request with the stub KServe v2 response of the nginx backends
(:data:`bench.nginx.STUB_RESPONSE`), so the proxies and the comparator see the same answers
whichever server produced them. ``GET /_status`` answers ``{"requests": N}``, the inference
requests received so far, which is how the harness counts what reached a candidate.

Behaviours:

``answer``
    Answer after ``--delay-ms`` (0: at once). With ``--loop uvloop`` this is the model
    server of the ``python2ms`` backend profile: a realistic model latency, many
    connections, on uvloop. uvloop's timers tick in whole milliseconds, so there a delay of
    2 ms becomes 2 to 3 ms: never less than asked.
``hang``
    Accept and read every request, never answer (the connection stays open until the
    client gives up).
``crash``
    A server in a crash loop: it answers for ``--up-ms``, then "crashes": every open
    connection is reset (requests in flight are lost) and, for ``--down-ms`` while it
    "restarts", every new connection is reset as soon as it is accepted. Then again.

A candidate that is *down* needs no server: :func:`refusing_port` holds a port that
refuses connections.

``--loop select`` runs asyncio on a ``select`` selector: its timeout has microsecond
resolution, where epoll and libuv (uvloop) wait in whole milliseconds, so a delay of a few
hundred microseconds (10× a C-speed backend) is kept. ``select`` takes at most 1024 file
descriptors, so that loop refuses connections beyond :data:`SELECT_MAX_CONNECTIONS`.

    python -m bench.stubserver --port 9000 --behaviour answer --delay-ms 2 --loop uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator

import httptools

from .nginx import STUB_RESPONSE
from .openloop import lower_timer_slack

BEHAVIOURS = ("answer", "hang", "crash")
SELECT_MAX_CONNECTIONS = 900  # below select()'s 1024 descriptors, with room for the rest
UVLOOP_TIMER_TICK_S = 0.001  # libuv's timers count whole milliseconds
STATUS_PATH = b"/_status"

_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(STUB_RESPONSE),
    STUB_RESPONSE.encode(),
)
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() sends RST, not FIN


def _status_answer(requests: int) -> bytes:
    body = json.dumps({"requests": requests}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


def reset(transport: asyncio.BaseTransport) -> None:
    """Close ``transport``'s connection with a TCP reset, as a crashed process's kernel does."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    transport.abort()  # type: ignore[attr-defined]


class StubServer:
    """The state shared by every connection of one server."""

    def __init__(
        self,
        behaviour: str,
        *,
        delay_s: float = 0.0,
        up_s: float = 0.2,
        down_s: float = 0.1,
        max_connections: int | None = None,
        timer_tick_s: float = 0.0,
    ) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; known: {', '.join(BEHAVIOURS)}")
        self.behaviour = behaviour
        self.delay_s, self.up_s, self.down_s = delay_s, up_s, down_s
        self.max_connections = max_connections
        self.timer_tick_s = timer_tick_s  # resolution of the event loop's timers
        self.requests = 0  # inference requests received (not /_status)
        self.crashes = 0
        self.crashed = False  # crash behaviour: between a crash and the restart
        self.connections: set[_Connection] = set()

    def start_crash_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.behaviour == "crash":
            loop.call_later(self.up_s, self._crash, loop)

    def _crash(self, loop: asyncio.AbstractEventLoop) -> None:
        self.crashed = True
        self.crashes += 1
        for conn in list(self.connections):
            conn.reset()
        loop.call_later(self.down_s, self._restart, loop)

    def _restart(self, loop: asyncio.AbstractEventLoop) -> None:
        self.crashed = False
        loop.call_later(self.up_s, self._crash, loop)


class _Connection(asyncio.Protocol):
    """One client connection; requests are answered in order (no pipelining is expected)."""

    def __init__(self, server: StubServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        srv = self.server
        too_many = srv.max_connections is not None and len(srv.connections) >= srv.max_connections
        if srv.crashed or too_many:
            reset(transport)
            return
        srv.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)

    def reset(self) -> None:
        self.server.connections.discard(self)
        if self.transport is not None:
            reset(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.reset()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        srv = self.server
        if self.url == STATUS_PATH:
            self._write(_status_answer(srv.requests))
            return
        srv.requests += 1
        if srv.behaviour == "hang":
            return
        if srv.delay_s > 0:
            due = time.perf_counter() + srv.delay_s
            self.loop.call_later(srv.delay_s, self._answer_when_due, due)
        else:
            self._write(_ANSWER)

    def _answer_when_due(self, due: float) -> None:
        remaining = due - time.perf_counter()
        if remaining > 0:
            # A timer on a millisecond clock (uvloop's) may fire up to 1 ms early: wait again,
            # for at least one tick, rather than spin. The delay is then never short.
            self.loop.call_later(
                max(remaining, self.server.timer_tick_s), self._answer_when_due, due
            )
        else:
            self._write(_ANSWER)

    def _write(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)


async def serve(
    server: StubServer, host: str, port: int, ready: asyncio.Event | None = None
) -> None:
    """Serve until cancelled."""
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: _Connection(server), host, port, reuse_address=True, backlog=4096
    )
    server.start_crash_loop(loop)
    if ready is not None:
        ready.set()
    async with listener:
        await listener.serve_forever()


@contextlib.contextmanager
def refusing_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port where connections are refused: bound (so nobody else takes it), not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stubserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--behaviour", choices=BEHAVIOURS, default="answer")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer: delay per answer")
    parser.add_argument("--up-ms", type=float, default=200.0, help="crash: time between crashes")
    parser.add_argument("--down-ms", type=float, default=100.0, help="crash: time to restart")
    parser.add_argument("--loop", choices=("select", "uvloop"), default="select")
    args = parser.parse_args(argv)
    lower_timer_slack()
    server = StubServer(
        args.behaviour,
        delay_s=args.delay_ms / 1000,
        up_s=args.up_ms / 1000,
        down_s=args.down_ms / 1000,
        max_connections=SELECT_MAX_CONNECTIONS if args.loop == "select" else None,
        timer_tick_s=UVLOOP_TIMER_TICK_S if args.loop == "uvloop" else 0.0,
    )
    loop = _new_loop(args.loop)
    task = loop.create_task(serve(server, args.host, args.port))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
