"""What every hardening test shares: a real proxy process, an attacker, a bystander.

Each test starts ``shadowproxy serve`` as its own process (its own Prometheus registry,
its own memory to measure) in front of two :class:`~tests.hardening.backend.CountingBackend`
servers: production, and a candidate that every request of every method is mirrored to,
so that a request smuggled into the shadow path is caught as well. During the attack a
well-behaved client (the bystander) keeps sending predictions and must be answered every
time; the proxy's resident memory is read from ``/proc`` before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from tests.hardening.backend import CountingBackend
from tests.support.load import SteadyLoad
from tests.support.proxy import make_config
from tests.support.served import Served, serving

MiB = 1024 * 1024
MIRRORED_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Client deadlines short enough for slow-client attacks to be cut within a test, long
# enough that a well-behaved client on a busy 2-core machine never meets them.
FAST_DEADLINES = {
    "header_timeout_s": 1.0,
    "body_timeout_s": 1.0,
    "keepalive_timeout_s": 5.0,
    "send_timeout_s": 1.0,
}
T = TypeVar("T")
Attacks = dict[str, bytes]  # a family of attacks, by name


def hardening_config(
    production: CountingBackend,
    candidate: CountingBackend,
    *,
    mirror_rate: float = 1.0,
    **limits: Any,
) -> dict[str, Any]:
    """Production plus one HTTP candidate mirroring requests of every method (by default
    all of them), with short client deadlines; ``limits`` override any limit."""
    return make_config(
        production.url,
        limits={**FAST_DEADLINES, **limits},
        candidates=[
            {
                "name": "mirror",
                "version": "1",
                "url": candidate.url,
                "sample_rate": mirror_rate,
                "methods": MIRRORED_METHODS,
                "timeout_ms": 2000,
                "max_in_flight": 512,
            }
        ],
    )


@contextlib.asynccontextmanager
async def attacked(config: dict[str, Any], folder: Path) -> AsyncIterator[Served]:
    """``shadowproxy serve`` with ``config``; when the block ends it must still be serving,
    with no error in its log: an attack must not reach an unexpected code path."""
    async with serving(config, folder) as served:
        yield served
        log = served.log_text()
        assert served.proc.poll() is None, f"the proxy died under attack:\n{log[-3000:]}"
        for marker in ("Traceback", "Exception in callback", " ERROR "):
            assert marker not in log, log[-3000:]


# -- memory ------------------------------------------------------------------------------


def resident_bytes(served: Served) -> int:
    """The proxy process's resident memory now (``VmRSS`` in ``/proc/<pid>/status``)."""
    status = Path(f"/proc/{served.proc.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


async def comparator_caught_up(served: Served, timeout_s: float = 30.0) -> None:
    """Wait until the comparator's inbox is empty (at once when it is off)."""

    async def backlog() -> float:
        return (await served.metrics()).value("shadowproxy_comparator_queued_records")

    deadline = asyncio.get_running_loop().time() + timeout_s
    while await backlog() > 0:
        assert asyncio.get_running_loop().time() < deadline, "the comparator never caught up"
        await asyncio.sleep(0.05)


async def memory_flat_over(
    served: Served, one_round: Callable[[], Awaitable[T]], *, warmup: int, measured: int, mib: float
) -> list[T]:
    """Run ``warmup`` rounds of an attack, read RSS, run ``measured`` more, read it again.

    The warm-up lets the allocator reach the high-water mark the attack's own in-flight
    buffers need; after it, RSS may move by allocator noise (``mib``, the stated
    tolerance) but not by anything the attack leaves behind per round.
    """
    results = []
    for _ in range(warmup):
        results.append(await one_round())
        await comparator_caught_up(served)
    before = resident_bytes(served)
    for _ in range(measured):
        results.append(await one_round())
        # The comparator runs on the CPU production leaves, so during a round its inbox
        # holds a bounded backlog of pair records: each round is compared with the
        # comparator caught up, or RSS would measure how far behind it is, not a leak.
        await comparator_caught_up(served)
    await asyncio.sleep(0.2)  # the last round's buffers are released
    after = resident_bytes(served)
    grown = (after - before) / MiB
    assert grown <= mib, (
        f"proxy RSS grew by {grown:.1f} MiB over {measured} rounds "
        f"({before / MiB:.1f} -> {after / MiB:.1f} MiB); tolerance {mib} MiB"
    )
    return results


# -- the attacker ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What an attacker got back: the first status (if any) and whether it was cut off."""

    status: int | None
    closed: bool
    raw: bytes

    @property
    def refused(self) -> bool:
        """A 4xx (or a 501 for an unsupported framing) and a close, or a bare close."""
        if not self.closed:
            return False
        return self.status is None or 400 <= self.status < 500 or self.status == 501


async def send_raw(port: int, data: bytes, timeout: float = 3.0) -> Outcome:
    """Send ``data`` on a fresh connection and read until the proxy closes it (or not)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        raw, closed = await read_until_close(reader, timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    status = int(raw[9:12]) if raw.startswith(b"HTTP/1.1 ") else None
    return Outcome(status, closed, raw)


async def read_until_close(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool]:
    """Everything the proxy sends within ``timeout``, and whether it closed (or reset)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except ConnectionError:
            return bytes(out), True
        except TimeoutError:
            break
        if not chunk:
            return bytes(out), True
        out += chunk
    return bytes(out), False


async def at_most(concurrency: int, jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``jobs``, ``concurrency`` at a time; their results in order."""
    gate = asyncio.Semaphore(concurrency)

    async def gated(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return await asyncio.gather(*(gated(job) for job in jobs))


# -- the bystander -----------------------------------------------------------------------


def answered_by(backend: str) -> Callable[[bytes, bytes], bool]:
    """Whether an answer is ``backend``'s, to exactly the request body that was sent."""

    def check(sent: bytes, got: bytes) -> bool:
        answer = orjson.loads(got)
        return bool(answer["who"] == backend and answer["crc32"] == zlib.crc32(sent))

    return check


@contextlib.asynccontextmanager
async def bystander(served: Served) -> AsyncIterator[SteadyLoad]:
    """A well-behaved keep-alive client sending predictions until the block ends."""
    load = SteadyLoad(
        {"proxy": served.traffic_url}, clients=1, check=answered_by("production"), pause_s=0.01
    )
    running = asyncio.ensure_future(load.run())
    try:
        yield load
    finally:
        load.stop.set()
        await running


async def served_at_least(load: SteadyLoad, answers: int, timeout_s: float = 10.0) -> None:
    """Keep the bystander going until it has had ``answers`` answers (however they went)."""
    deadline = time.monotonic() + timeout_s
    while len(load.of("proxy")) + len(load.errors) < answers:
        assert time.monotonic() < deadline, f"the bystander got {len(load.of('proxy'))} answers"
        await asyncio.sleep(0.01)


def assert_unaffected(load: SteadyLoad, at_least: int = 20) -> None:
    """Every one of the bystander's requests got production's answer to it."""
    failures = load.failures("proxy")
    assert not failures, f"a well-behaved client failed {len(failures)} times: {failures[:5]}"
    served = len(load.of("proxy"))
    assert served >= at_least, f"the bystander was served only {served} times"


# -- attacks that must all be refused ----------------------------------------------------


def every_attack(families: dict[str, Attacks]) -> Attacks:
    """The attacks of several families in one table, named ``family/attack``."""
    return {
        f"{family}/{name}": data
        for family, table in families.items()
        for name, data in table.items()
    }


async def assert_refused_and_contained(
    served: Served,
    backends: tuple[CountingBackend, CountingBackend],
    attacks: Attacks,
    *,
    rounds: int = 30,
    concurrency: int = 16,
    mib: float = 8.0,
) -> None:
    """Send every attack ``rounds`` times from fresh connections, during steady traffic.

    Every attack must be refused (a 4xx and a close, or a close) and never switch
    protocols; nothing of it may reach production or the mirrored candidate, neither as
    the attacking request nor as one smuggled inside it, and neither backend may receive
    a byte it cannot parse; each refusal is counted; RSS stays within ``mib`` after a
    warm-up round; the bystander is served every time.
    """

    async def one_round() -> None:
        jobs = [lambda data=data: send_raw(served.traffic_port, data) for data in attacks.values()]
        for name, outcome in zip(attacks, await at_most(concurrency, jobs), strict=True):
            assert outcome.refused, f"{name}: not refused: {outcome}"  # so never a 101

    async with bystander(served) as load:
        await memory_flat_over(served, one_round, warmup=1, measured=rounds - 1, mib=mib)
        await served_at_least(load, 20)
    for backend in backends:
        assert backend.attacks() == [], f"{backend.name} got {backend.attacks()[:3]}"
        assert backend.anomalies == [], backend.anomalies[:3]
    refused = (await served.metrics()).value("shadowproxy_client_errors_total")
    assert refused == len(attacks) * rounds
    assert_unaffected(load)
