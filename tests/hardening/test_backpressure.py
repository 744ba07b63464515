"""Clients that send requests and never read the answers, against a real proxy process.

The proxy must stop reading from such a client instead of buffering for it: answers wait
in the socket until the client reads, the next requests wait unparsed, and after
``limits.send_timeout_s`` without progress the client is cut off. Its memory stays flat
and a well-behaved client alongside is served throughout.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from tests.hardening.backend import CountingBackend
from tests.hardening.harness import (
    FAST_DEADLINES,
    MiB,
    assert_unaffected,
    bystander,
    memory_flat_over,
    resident_bytes,
    served_at_least,
)
from tests.proxy._util import request_bytes
from tests.support.served import Served

ANSWER_BYTES = 256 * 1024
SEND_TIMEOUT_S = FAST_DEADLINES["send_timeout_s"]


@dataclass(frozen=True)
class NeverRead:
    sent: int  # bytes the kernel took from the attacker
    cut_after_s: float | None  # when the proxy reset the connection, if it did


async def open_never_reading(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer, so unread answers back up at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def send_without_reading(port: int, data: bytes, seconds: float) -> NeverRead:
    """Write ``data`` over and over, never reading, until the proxy cuts the connection."""
    sock = await open_never_reading(port)
    started = time.monotonic()
    sent = 0
    try:
        while time.monotonic() - started < seconds:
            try:
                sent += sock.send(data)
            except BlockingIOError:  # the proxy is not reading: wait and try again
                await asyncio.sleep(0.02)
            except (ConnectionResetError, BrokenPipeError):
                return NeverRead(sent, time.monotonic() - started)
    finally:
        sock.close()
    return NeverRead(sent, None)


async def test_clients_that_never_read_large_answers_are_paused_then_cut(
    proxy: Served, production: CountingBackend, candidate: CountingBackend
) -> None:
    production.response_bytes = ANSWER_BYTES
    attackers = 10
    pipelined = request_bytes("POST", "/attack/never-read", body=b'{"inputs": []}') * 50

    async def one_round() -> list[NeverRead]:
        return await asyncio.gather(
            *(send_without_reading(proxy.traffic_port, pipelined, 4.0) for _ in range(attackers))
        )

    async with bystander(proxy) as load:
        rounds = await memory_flat_over(proxy, one_round, warmup=1, measured=2, mib=24)
        await served_at_least(load, 20)
    results = [result for round_ in rounds for result in round_]
    for result in results:
        # Cut by the send deadline (checked every 0.1 s), not by the end of the attack.
        assert result.cut_after_s is not None, result
        assert result.cut_after_s < SEND_TIMEOUT_S + 1.5, result
        # Only kernel socket buffers took bytes: the proxy stopped reading. Had it kept
        # reading, 4 seconds of writing would have been hundreds of MiB.
        assert result.sent < 32 * MiB, result
    forwarded = [r for r in production.from_clients() if r.path == b"/attack/never-read"]
    # One answer in progress plus what the socket buffers took, per attacker: far fewer
    # than the attackers sent (thousands each).
    assert len(forwarded) <= 64 * len(results), len(forwarded)
    assert production.anomalies == candidate.anomalies == []
    assert_unaffected(load)


async def test_a_pipelined_flood_that_is_never_read_is_parsed_only_as_it_is_served(
    proxy: Served, production: CountingBackend
) -> None:
    """100 clients each write 256 KiB of tiny pipelined requests at once and never read.

    The proxy parses at most a slice ahead of ``limits.max_pipelined`` waiting requests;
    the rest waits as the bytes they are. Parsed all at once, these 25 MiB would be about
    2.5 million parsed requests several times their size, and would hold the event loop
    for seconds.
    """
    attackers = 100
    tiny = b"GET /flood HTTP/1.1\r\nHost: a\r\n\r\n"
    burst = tiny * (256 * 1024 // len(tiny))

    async def flood_without_reading() -> None:
        sock = await open_never_reading(proxy.traffic_port)
        try:
            await asyncio.get_running_loop().sock_sendall(sock, burst)
            await asyncio.sleep(2.0)
        finally:
            sock.close()

    async with bystander(proxy) as load:
        await served_at_least(load, 5)
        before = resident_bytes(proxy)
        flood = asyncio.gather(*(flood_without_reading() for _ in range(attackers)))
        peak = before
        while not flood.done():
            peak = max(peak, resident_bytes(proxy))
            await asyncio.sleep(0.05)
        await flood
        await served_at_least(load, 40)
    grown_mib = (peak - before) / MiB
    sent_mib = attackers * len(burst) / MiB
    assert grown_mib < 48, f"RSS grew by {grown_mib:.0f} MiB for {sent_mib:.0f} MiB sent"
    flooded = [r for r in production.from_clients() if r.path == b"/flood"]
    assert 0 < len(flooded) <= attackers * (len(burst) // len(tiny))
    assert_unaffected(load)
