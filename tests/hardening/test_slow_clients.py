"""Slowloris and slow bodies, against a real ``shadowproxy serve`` process.

Debian's ``slowhttptest`` opens 200 connections per attack that send a request head (or,
with ``-B``, a body) a few bytes per second. The proxy must cut each one at its deadline
(``limits.header_timeout_s`` / ``body_timeout_s``, 1 s here), so open connections never
pile up, forward none of the slow requests, keep its memory flat and keep serving a
well-behaved client. A raw-socket version checks the same per connection: each trickling
client gets its 408 within the deadline plus the sweep's slack.
"""

from __future__ import annotations

import asyncio
import csv
import time
from pathlib import Path

from tests.hardening.backend import CountingBackend
from tests.hardening.harness import (
    FAST_DEADLINES,
    MiB,
    assert_unaffected,
    bystander,
    memory_flat_over,
    read_until_close,
    resident_bytes,
    served_at_least,
)
from tests.support.served import Served

CONNECTIONS = 200
SLOW_PATH = "/attack/slow"
DEADLINE_S = FAST_DEADLINES["header_timeout_s"]
assert FAST_DEADLINES["body_timeout_s"] == DEADLINE_S


async def slowhttptest(served: Served, mode: str, report: Path) -> tuple[str, list[dict[str, str]]]:
    """Run one bounded slowhttptest attack; its output and per-second CSV statistics."""
    process = await asyncio.create_subprocess_exec(
        "slowhttptest", mode,
        "-c", str(CONNECTIONS), "-r", "100", "-i", "1", "-x", "24", "-p", "2", "-l", "8",
        "-t", "POST", "-u", served.traffic_url + SLOW_PATH, "-g", "-o", str(report),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output
    with report.with_suffix(".csv").open() as rows:
        return output.decode(errors="replace"), list(csv.DictReader(rows))


async def test_slowhttptest_slowloris_and_slow_body_are_cut_at_the_deadlines(
    proxy: Served, production: CountingBackend, tmp_path: Path
) -> None:
    before = resident_bytes(proxy)
    peak_connections = 0.0
    async with bystander(proxy) as load:
        attacks = asyncio.gather(
            slowhttptest(proxy, "-H", tmp_path / "slow-head"),
            slowhttptest(proxy, "-B", tmp_path / "slow-body"),
        )
        while not attacks.done():
            open_now = (await proxy.metrics()).value("shadowproxy_client_connections")
            peak_connections = max(peak_connections, open_now)
            await asyncio.sleep(0.1)
        reports = await attacks
        await served_at_least(load, 50)
    after = resident_bytes(proxy)
    samples = await proxy.metrics()
    # Every slow connection was cut by the proxy's deadline, and counted under it.
    assert samples.value("shadowproxy_client_errors_total", reason="header_timeout") >= 195
    assert samples.value("shadowproxy_client_errors_total", reason="body_timeout") >= 195
    # With 1 s deadlines and 100 new connections a second per attack, about 200 are open
    # at once; had they not been cut, all 400 would be.
    assert peak_connections < 320, peak_connections
    for output, report in reports:
        # It stopped early, before its 8 s, because the proxy had closed every connection.
        assert "No open connections left" in output, output[-600:]
        # Its own probe found the proxy answering every second.
        assert report and all(int(row["Service Available"]) > 0 for row in report), report
    # The slow POSTs never reached production; only slowhttptest's GET probes did.
    slow = [r for r in production.from_clients() if r.path == SLOW_PATH.encode()]
    assert {r.method for r in slow} <= {b"GET"}, {r.method for r in slow}
    assert (after - before) / MiB < 16, f"RSS {before / MiB:.0f} -> {after / MiB:.0f} MiB"
    assert_unaffected(load)


async def trickle(port: int, data: bytes, at_once: bytes = b"") -> tuple[float, bytes]:
    """Send ``at_once``, then ``data`` a byte every 50 ms until the proxy answers; the
    seconds until it closed the connection, and what it sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = b""
    try:
        writer.write(at_once)
        for byte in data:
            writer.write(bytes([byte]))
            try:
                await writer.drain()
                # Stop writing as soon as the proxy answers: bytes sent after its close
                # would be answered with a reset that discards the answer.
                answer = await asyncio.wait_for(reader.read(65536), 0.05)
                break
            except TimeoutError:
                continue
            except ConnectionError:
                break
        rest, closed = await read_until_close(reader, 3.0)
        assert closed, f"still open after trickling: {answer + rest!r}"
        return time.monotonic() - started, answer + rest
    finally:
        writer.close()


async def test_trickling_heads_and_bodies_get_408_at_the_deadline(
    proxy: Served, production: CountingBackend
) -> None:
    head = b"POST /attack/trickle HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 200
    body_head = b"POST /attack/trickle HTTP/1.1\r\nHost: a\r\nContent-Length: 400\r\n\r\n"

    async def one_round() -> list[tuple[float, bytes]]:
        heads = [trickle(proxy.traffic_port, head) for _ in range(25)]
        bodies = [trickle(proxy.traffic_port, b"b" * 400, body_head) for _ in range(25)]
        return await asyncio.gather(*heads, *bodies)

    async with bystander(proxy) as load:
        rounds = await memory_flat_over(proxy, one_round, warmup=1, measured=2, mib=8)
        await served_at_least(load, 20)
    for elapsed, answer in (result for round_ in rounds for result in round_):
        # Cut at the deadline (checked every 0.1 s), however steadily the bytes came.
        assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + 1.5, elapsed  # slack: CI load
        assert answer.startswith(b"HTTP/1.1 408 ") or answer == b"", answer[:120]
    samples = await proxy.metrics()  # every connection was answered 408 (and counted)
    for reason in ("header_timeout", "body_timeout"):
        assert samples.value("shadowproxy_client_errors_total", reason=reason) == 25 * len(rounds)
    assert production.attacks() == []
    assert_unaffected(load)
