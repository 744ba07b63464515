"""Open-loop load at a fixed rate, with latency counted from each request's scheduled time.

wrk is closed-loop: a connection sends its next request only once the previous answer is in,
so while the target stalls, wrk stalls with it and the requests it would have sent are never
timed (coordinated omission). Here request ``i`` is due at ``t0 + i / rate`` whatever happened
before. It goes out on a free connection as soon as it is due; if all connections are busy it
waits for the first one to free up (no pipelining: at most one request in flight per
connection). Its latency runs from the time it was *due* to the end of its response, so time
spent waiting because the target was slow is counted.

Built on raw non-blocking sockets and one epoll set, with httptools parsing the responses and
the request bytes built once. epoll waits in whole milliseconds, which would add up to 1 ms of
send jitter to every figure; the epoll set is instead waited on through ``select``, whose
timeout has microsecond resolution, with the process's timer slack at 1 ns. Even so a timer
wake-up on a virtual machine comes 30-100 µs late, so the last ``spin_us`` before a due time
are spent polling (yielding the CPU to the backends that share it).

    python -m bench.openloop --port 8080 --rate 2000 --duration 5   # prints the result as JSON
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import httptools

from .load import LOAD_CPU, LoadError, gc_paused, percentile, request_bytes
from .procs import run_module_pinned

Clock = Callable[[], int]
_RECV_BYTES = 65536
SPIN_US = 150.0  # poll, rather than sleep, this close to a due time


@dataclass
class OpenLoopResult:
    rate: float  # requests per second asked for
    duration_s: float  # the schedule's length: ``scheduled`` = rate × duration
    connections: int
    scheduled: int
    completed: int  # answered with a 2xx
    achieved_rps: float  # completed ÷ max(duration, time from t0 to the last answer)
    non_2xx: int = 0
    socket_errors: int = 0  # a connection failed with this request in flight or unsent
    unfinished: int = 0  # still unanswered when the drain time after the schedule ran out
    queued: int = 0  # requests that found every connection busy and waited for one
    latency_us: dict[str, float] = field(default_factory=dict)  # from the scheduled time
    service_us: dict[str, float] = field(default_factory=dict)  # from the actual send
    dispatch_lag_us: dict[str, float] = field(default_factory=dict)  # generator lateness

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors + self.unfinished

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["errors"] = self.errors
        return out


def summary_us(
    samples_ns: list[int], points: tuple[float, ...] = (50, 90, 99, 99.9)
) -> dict[str, float]:
    """Percentiles and max in µs of nanosecond samples; empty when there are none."""
    if not samples_ns:
        return {}
    us = sorted(s / 1000 for s in samples_ns)
    out = {f"p{q:g}".replace(".", "_"): percentile(us, q) for q in points}
    out["max"] = us[-1]
    out["n"] = len(us)
    return out


def due_times_ns(t0: int, rate: float, count: int) -> Iterator[int]:
    """When each of ``count`` requests is due: ``t0 + i / rate`` in integer nanoseconds."""
    period = 1e9 / rate
    for i in range(count):
        yield t0 + int(i * period)


class _Conn:
    """One keep-alive connection with at most one request in flight."""

    __slots__ = ("sock", "fd", "parser", "due", "sent", "complete", "status", "keep_alive")

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self.parser = httptools.HttpResponseParser(self)
        self.due: int | None = None  # scheduled time of the request in flight
        self.sent = 0
        self.complete = False
        self.status = 0
        self.keep_alive = True

    def on_message_complete(self) -> None:  # httptools callback
        # Read here: once the callback returns, the parser is reset for the next message.
        self.complete = True
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def close(self) -> None:
        self.sock.close()


def lower_timer_slack() -> None:
    """Ask the kernel to wake this process on time (default slack is 50 µs)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(29, 1)  # PR_SET_TIMERSLACK, 1 ns


class _Generator:
    """The state of one open-loop run; :meth:`run` drives it to the end."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        rate: float,
        duration_s: float,
        connections: int,
        drain_s: float,
        spin_us: float,
        clock: Clock,
    ) -> None:
        if rate <= 0 or duration_s <= 0 or connections < 1:
            raise ValueError("rate, duration and connections must be positive")
        self.host, self.port = host, port
        self.rate, self.duration_s, self.drain_s, self.clock = rate, duration_s, drain_s, clock
        self.spin_us = spin_us
        self.count = max(1, round(rate * duration_s))
        self.payload = request_bytes(host, port)
        self.epoll = select.epoll()
        self.by_fd: dict[int, _Conn] = {}
        self.idle: deque[_Conn] = deque()  # FIFO, so the load spreads over every connection
        self.waiting: deque[int] = deque()  # due times of requests that found no free connection
        self.in_flight = 0
        self.latency: list[int] = []
        self.service: list[int] = []
        self.lag: list[int] = []
        self.result = OpenLoopResult(rate, duration_s, connections, self.count, 0, 0.0)
        self.last_answer = 0
        try:
            for _ in range(connections):
                self.idle.append(self._connect())
        except OSError:
            self.close()
            raise

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> _Conn:
        conn = _Conn(self.host, self.port, timeout_s=2.0)
        self.by_fd[conn.fd] = conn
        self.epoll.register(conn.fd, select.EPOLLIN)
        return conn

    def _drop(self, conn: _Conn) -> None:
        with contextlib.suppress(KeyError, OSError):
            self.epoll.unregister(conn.fd)
        self.by_fd.pop(conn.fd, None)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        conn.close()

    def _fail(self, conn: _Conn) -> None:
        """A connection broke: its request in flight is lost; a new connection replaces it."""
        if conn.due is not None:
            self.result.socket_errors += 1
            self.in_flight -= 1
            conn.due = None
        self._drop(conn)
        try:
            # Idle, not handed a waiting request here: run() does that, so a server that
            # keeps failing connections cannot make this recurse.
            self.idle.append(self._connect())
        except OSError:
            pass  # the pool shrinks; with no connection left, run() gives up

    def _free(self, conn: _Conn) -> None:
        """``conn`` can take a request: the oldest waiting one, else it goes idle."""
        if self.waiting:
            self._send(conn, self.waiting.popleft())
        else:
            self.idle.append(conn)

    # -- requests ------------------------------------------------------------------------

    def _send(self, conn: _Conn, due: int) -> None:
        conn.due, conn.sent = due, self.clock()
        self.in_flight += 1
        try:
            # One small request into an empty socket buffer: written whole or not at all.
            if conn.sock.send(self.payload) != len(self.payload):
                raise OSError("short write")
        except OSError:
            self._fail(conn)

    def _dispatch(self, due: int, now: int) -> None:
        self.lag.append(now - due)
        if self.idle:
            self._send(self.idle.popleft(), due)
        else:
            self.waiting.append(due)
            self.result.queued += 1

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            self._fail(conn)
            return
        if not data or conn.due is None:  # closed, or an answer nobody asked for
            self._fail(conn)
            return
        try:
            conn.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(conn)
            return
        if not conn.complete:
            return
        end = self.clock()
        due, conn.due, conn.complete = conn.due, None, False
        self.in_flight -= 1
        if 200 <= conn.status < 300:
            self.latency.append(end - due)
            self.service.append(end - conn.sent)
            self.result.completed += 1
            self.last_answer = end
        else:
            self.result.non_2xx += 1
        if conn.keep_alive:
            self._free(conn)
        else:  # the server will close it: replace it now rather than fail the next request
            self._fail(conn)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> OpenLoopResult:
        clock, epoll, by_fd = self.clock, self.epoll, self.by_fd
        wait_on = [epoll.fileno()]
        t0 = clock() + 10_000_000  # 10 ms to get into the loop before the first request
        dues = due_times_ns(t0, self.rate, self.count)
        next_due: int | None = next(dues)
        end_by = t0 + int((self.duration_s + self.drain_s) * 1e9)
        spin_s = self.spin_us / 1e6
        while True:
            now = clock()
            while self.waiting and self.idle:  # connections opened after a failure
                self._send(self.idle.popleft(), self.waiting.popleft())
            while next_due is not None and next_due <= now:
                self._dispatch(next_due, now)
                next_due = next(dues, None)
            if not by_fd:  # every connection failed and none could be opened again
                break
            if next_due is None and not self.in_flight and not self.waiting:
                break
            until = next_due if next_due is not None else end_by
            timeout = (until - clock()) / 1e9
            if next_due is None and timeout <= 0:
                break  # drain time is over
            if timeout > spin_s:
                # Sleep until shortly before the next request is due (or an answer comes in).
                if not select.select(wait_on, (), (), timeout - spin_s)[0]:
                    continue
            elif timeout > 0:
                # Close to the due time: poll instead of sleeping, since a timer wake-up comes
                # tens of µs late on a virtual machine. Yield so the backends on this CPU run.
                os.sched_yield()
            for fd, _ in epoll.poll(0):
                conn = by_fd.get(fd)
                if conn is not None:
                    self._readable(conn)
        return self._finish(t0, next_due, dues)

    def _finish(self, t0: int, next_due: int | None, rest: Iterator[int]) -> OpenLoopResult:
        res = self.result
        # Whatever was never answered: in flight or waiting at the deadline, or never sent
        # because every connection was gone.
        never_sent = (0 if next_due is None else 1) + sum(1 for _ in rest)
        if self.by_fd:
            res.unfinished = self.in_flight + len(self.waiting)
        else:
            res.socket_errors += len(self.waiting) + never_sent
        span_s = max(self.duration_s, (self.last_answer - t0) / 1e9)
        res.achieved_rps = res.completed / span_s if res.completed else 0.0
        res.latency_us = summary_us(self.latency)
        res.service_us = summary_us(self.service, (50, 99))
        res.dispatch_lag_us = summary_us(self.lag, (50, 99))
        return res

    def close(self) -> None:
        for conn in list(self.by_fd.values()):
            self._drop(conn)
        self.epoll.close()


def open_loop(
    host: str,
    port: int,
    *,
    rate: float,
    duration_s: float,
    connections: int = 32,
    drain_s: float = 2.0,
    spin_us: float = SPIN_US,
    clock: Clock = time.perf_counter_ns,
) -> OpenLoopResult:
    """Send ``rate × duration_s`` requests at fixed times over ``connections`` connections.

    Returns once every request is answered, or ``drain_s`` after the last one was due.
    Raises ``OSError`` if the connections cannot be opened.
    """
    gen = _Generator(
        host,
        port,
        rate=rate,
        duration_s=duration_s,
        connections=connections,
        drain_s=drain_s,
        spin_us=spin_us,
        clock=clock,
    )
    try:
        with gc_paused():
            return gen.run()
    finally:
        gen.close()


def run_pinned(
    port: int,
    *,
    rate: float,
    duration_s: float,
    connections: int = 32,
    drain_s: float = 2.0,
    cpu: int = LOAD_CPU,
    host: str = "127.0.0.1",
) -> OpenLoopResult:
    """One open-loop run in its own process pinned to ``cpu``, as wrk is; bounded in time."""
    args = [
        "bench.openloop",
        f"--host={host}",
        f"--port={port}",
        f"--rate={rate}",
        f"--duration={duration_s}",
        f"--connections={connections}",
        f"--drain={drain_s}",
    ]
    limit = duration_s + drain_s + 30
    stdout = run_module_pinned(args, cpu=cpu, timeout_s=limit, what="the open-loop generator")
    try:
        fields = json.loads(stdout)
        fields.pop("errors", None)  # derived
        return OpenLoopResult(**fields)
    except (ValueError, TypeError) as exc:
        raise LoadError(f"cannot parse the open-loop result: {stdout!r}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds of schedule")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--drain", type=float, default=2.0, help="seconds to wait at the end")
    parser.add_argument(
        "--spin-us", type=float, default=SPIN_US, help="poll instead of sleeping this close"
    )
    args = parser.parse_args(argv)
    lower_timer_slack()
    try:
        result = open_loop(
            args.host,
            args.port,
            rate=args.rate,
            duration_s=args.duration,
            connections=args.connections,
            drain_s=args.drain,
            spin_us=args.spin_us,
        )
    except OSError as exc:
        print(f"cannot connect to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
