"""Load generation: wrk for closed-loop throughput, a raw socket client for latency.

Both send the same request: ``POST /v2/models/m/infer`` with a small KServe v2 JSON body.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

PATH = "/v2/models/m/infer"
BODY = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'

LOAD_CPU = 0  # wrk, the latency client and the stub backends
PROXY_CPU = 1  # the proxy under test


class LoadError(RuntimeError):
    pass


def wrk_script() -> str:
    body = BODY.decode().replace("\\", "\\\\").replace('"', '\\"')
    return (
        'wrk.method = "POST"\n'
        f'wrk.body = "{body}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    latency_us: dict[str, float]  # p50, p75, p90, p99 as printed by --latency
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["errors"] = self.errors
        return out


_UNITS_US = {"us": 1.0, "ms": 1_000.0, "s": 1_000_000.0, "m": 60_000_000.0, "h": 3_600_000_000.0}
_RE_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_RE_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_RE_PCT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RE_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_RE_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(text: str) -> WrkResult:
    """Parse the text wrk 4.x prints with ``--latency``."""
    m_req, m_rps = _RE_REQUESTS.search(text), _RE_RPS.search(text)
    if m_req is None or m_rps is None:
        raise LoadError(f"cannot parse wrk output:\n{text}")
    latency = {
        f"p{m.group(1)}": float(m.group(2)) * _UNITS_US[m.group(3)] for m in _RE_PCT.finditer(text)
    }
    if set(latency) != {"p50", "p75", "p90", "p99"}:
        raise LoadError(f"wrk output has no latency distribution (--latency?):\n{text}")
    socket_errors: dict[str, int] = {}
    m_sock = _RE_SOCKET.search(text)
    if m_sock:
        socket_errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m_sock.groups()), strict=True)
        )
    m_non = _RE_NON2XX.search(text)
    return WrkResult(
        requests=int(m_req.group(1)),
        duration_s=float(m_req.group(2)) * _UNITS_US[m_req.group(3)] / 1e6,
        rps=float(m_rps.group(1)),
        latency_us=latency,
        non_2xx=int(m_non.group(1)) if m_non else 0,
        socket_errors=socket_errors,
    )


def die_with_parent() -> None:
    """``preexec_fn`` of every child: it gets SIGTERM if the harness dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LoadError(f"'{name}' is not installed; install it with: apt-get install -y nginx wrk")
    return path


def run_wrk(
    url: str,
    script: Path,
    *,
    duration_s: int,
    connections: int = 32,
    threads: int = 1,
    cpu: int = LOAD_CPU,
) -> WrkResult:
    """One closed-loop wrk run pinned to ``cpu``; bounded by a hard timeout."""
    cmd = [
        "taskset",
        "-c",
        str(cpu),
        require_binary("wrk"),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "2s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration_s + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish within {duration_s + 30}s") from exc
    if proc.returncode != 0:
        raise LoadError(f"wrk exited {proc.returncode}: {proc.stderr or proc.stdout}")
    return parse_wrk(proc.stdout)


# ---------------------------------------------------------------------------------------------
# Single-connection latency client


def request_bytes(host: str, port: int) -> bytes:
    head = (
        f"POST {PATH} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + BODY


class _Conn:
    """A keep-alive HTTP/1.1 connection that reads responses by hand (no client library)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise LoadError("server closed the keep-alive connection")
        self.buf += chunk

    def _take_until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            self._fill()
        out = bytes(self.buf[:i])
        del self.buf[: i + len(sep)]
        return out

    def _take(self, n: int) -> None:
        while len(self.buf) < n:
            self._fill()
        del self.buf[:n]

    def exchange(self, request: bytes) -> int:
        """Send one request, read the full response; returns the status code."""
        self.sock.sendall(request)
        head = self._take_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if "content-length" in headers:
            self._take(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while (size := int(self._take_until(b"\r\n").split(b";")[0], 16)) > 0:
                self._take(size + 2)
            while self._take_until(b"\r\n"):  # trailers end with an empty line
                pass
        else:
            raise LoadError("response has neither Content-Length nor chunked encoding")
        if headers.get("connection") == "close":
            raise LoadError("server asked to close the keep-alive connection")
        return status


@contextlib.contextmanager
def no_deep_idle(enabled: bool = True) -> Iterator[bool]:
    """Hold a PM QoS request of 0 µs on ``/dev/cpu_dma_latency`` (yields whether it took).

    While held, idle CPUs poll instead of entering an idle state, so a cross-CPU hop does not
    pay the wake-up exit latency (tens of µs on a virtual machine). The request ends when the
    file is closed, which the kernel also does if the process dies.
    """
    if not enabled:
        yield False
        return
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError:
        yield False
        return
    try:
        os.write(fd, struct.pack("i", 0))
        yield True
    finally:
        os.close(fd)


class LatencyProbe:
    """One keep-alive connection to a target; times sequential requests with perf_counter_ns."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.where = f"{host}:{port}"
        self.payload = request_bytes(host, port)
        self.conn = _Conn(host, port, timeout)
        self.samples: list[int] = []  # nanoseconds per exchange

    def send(self, n: int, *, keep: bool = True) -> None:
        """``n`` requests one after another; their times are kept unless ``keep`` is false."""
        exchange, payload, clock = self.conn.exchange, self.payload, time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            status = exchange(payload)
            t1 = clock()
            if status != 200:
                raise LoadError(f"latency client got HTTP {status} from {self.where}")
            if keep:
                self.samples.append(t1 - t0)

    def close(self) -> None:
        self.conn.close()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def interleaved_latency(
    probes: dict[str, LatencyProbe],
    *,
    requests: int,
    warmup: int,
    batch: int = 100,
    deadline_s: float = 120.0,
) -> dict[str, Exception]:
    """Collect ``requests`` samples on every probe, in batches taken from each probe in turn.

    Taking the targets in turns of ``batch`` requests spreads any slow spell of the machine
    over all of them instead of one. The first ``warmup`` exchanges of each probe are not
    kept. Stops early (with fewer samples) when ``deadline_s`` runs out. A probe that fails
    is left out from then on; the failures are returned by name.
    """
    failures: dict[str, Exception] = {}

    def turn(name: str, n: int, keep: bool) -> None:
        try:
            probes[name].send(n, keep=keep)
        except (OSError, LoadError) as exc:
            failures[name] = exc

    names = list(probes)
    if not names:
        return failures
    end = time.monotonic() + deadline_s
    with gc_paused():
        for name in names:
            turn(name, warmup, False)
        done, cycle = 0, 0
        while done < requests and time.monotonic() < end:
            n = min(batch, requests - done)
            k = cycle % len(names)
            for name in names[k:] + names[:k]:
                if name not in failures:
                    turn(name, n, True)
            done, cycle = done + n, cycle + 1
    return failures


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100], of an already sorted list."""
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_summary(samples_ns: list[int]) -> dict[str, float]:
    us = sorted(s / 1000 for s in samples_ns)
    return {
        "n": len(us),
        "p50_us": percentile(us, 50),
        "p99_us": percentile(us, 99),
        "mean_us": sum(us) / len(us),
    }
