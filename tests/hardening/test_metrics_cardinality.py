"""100,000 requests with random paths, methods and headers add no Prometheus series.

Nothing a client sends may become a label value, or every new path would be a new series
and the proxy's memory, and Prometheus's, would grow with traffic. The requests are
pipelined over a few raw connections to a real ``shadowproxy serve`` process (with a
mirrored candidate, so the shadow path's series are exercised too); the set of series on
``/metrics`` after a warm-up of 2,000 such requests and after the flood must be the same.
"""

from __future__ import annotations

import asyncio
import random
import string
from pathlib import Path

import httptools

from tests.hardening.backend import CountingBackend
from tests.hardening.harness import MiB, attacked, hardening_config, resident_bytes
from tests.proxy._util import request_bytes
from tests.support.served import Samples, Served
from tests.support.waiting import settle

REQUESTS = 100_000
CONNECTIONS = 8
BATCH = 500  # requests per write
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
TOKEN = string.ascii_letters + string.digits + "-_.~"
VALUE = string.ascii_letters + string.digits + " !#$%&'()*+,-./:;<=>?@[]^_`{|}~"


def random_requests(
    rng: random.Random, fragments: list[str], count: int, start: int
) -> list[bytes]:
    """Requests that differ in everything a client controls; ``start`` numbers them."""
    values = ["".join(rng.choices(VALUE, k=rng.randint(0, 40))) for _ in range(200)]
    requests = []
    for i in range(start, start + count):
        method = rng.choice(METHODS)
        path = f"/{rng.choice(fragments)}/{i}/{rng.choice(fragments)}?q={rng.choice(fragments)}"
        headers = [(f"X-{rng.choice(fragments)}-{i}", rng.choice(values)) for _ in range(3)]
        headers.append(("X-Request-Id", f"{rng.choice(fragments)}{i}"))
        headers.append(("Content-Type", f"application/{rng.choice(fragments)}"))
        body = rng.choice(values).encode() if method in ("POST", "PUT", "PATCH") else b""
        requests.append(request_bytes(method, path, headers, body))
    return requests


class Answers:
    """Counts the statuses of pipelined responses as they arrive (llhttp, not Python)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.statuses: dict[int, int] = {}

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.statuses[status] = self.statuses.get(status, 0) + 1

    @property
    def count(self) -> int:
        return sum(self.statuses.values())


async def pipeline(port: int, requests: list[bytes]) -> dict[int, int]:
    """Send ``requests`` in batches on one connection while reading the answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = Answers()

    async def write_all() -> None:
        for start in range(0, len(requests), BATCH):
            writer.write(b"".join(requests[start : start + BATCH]))
            await writer.drain()

    writing = asyncio.ensure_future(write_all())
    try:
        while answers.count < len(requests):
            data = await asyncio.wait_for(reader.read(1 << 18), 10)
            assert data, f"closed after {answers.count} answers"
            answers.parser.feed_data(data)
        await writing
    finally:
        writing.cancel()
        writer.close()
    return answers.statuses


async def flood(served: Served, requests: list[bytes]) -> dict[int, int]:
    share = len(requests) // CONNECTIONS
    results = await asyncio.gather(
        *(
            pipeline(served.traffic_port, requests[c * share : (c + 1) * share])
            for c in range(CONNECTIONS)
        )
    )
    total: dict[int, int] = {}
    for statuses in results:
        for status, n in statuses.items():
            total[status] = total.get(status, 0) + n
    return total


def series(samples: Samples) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(name, tuple(sorted(labels.items()))) for name, labels, _ in samples.samples}


async def settled_series(
    served: Served, candidate: CountingBackend
) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    await settle(lambda: candidate.count, quiet_s=0.3, timeout=20)
    return series(await served.metrics())


async def test_random_requests_add_no_series(
    production: CountingBackend, candidate: CountingBackend, tmp_path: Path
) -> None:
    production.record = candidate.record = False  # 100k records would only cost memory
    # One request in ten mirrored: the shadow path's series are exercised, and the flood
    # stays within a few seconds of the proxy's CPU on a 2-core machine.
    config = hardening_config(production, candidate, mirror_rate=0.1)
    async with attacked(config, tmp_path) as proxy:
        await flood_with_random_requests(proxy, production, candidate)


async def flood_with_random_requests(
    proxy: Served, production: CountingBackend, candidate: CountingBackend
) -> None:
    rng = random.Random(20240601)
    fragments = ["".join(rng.choices(TOKEN, k=rng.randint(6, 12))) for _ in range(200)]
    warmup = random_requests(rng, fragments, 2_000, 0)
    assert await flood(proxy, warmup) == {200: len(warmup)}
    before = await settled_series(proxy, candidate)
    rss_before = resident_bytes(proxy)

    requests = random_requests(rng, fragments, REQUESTS, len(warmup))
    assert await flood(proxy, requests) == {200: REQUESTS}
    after = await settled_series(proxy, candidate)

    assert production.count >= REQUESTS + len(warmup)  # and the readiness probes
    assert after == before, f"new series: {sorted(after - before)[:10]}"
    # Nothing the clients chose is a label value: no path, no header value, no id.
    values = {value for _, pairs in after for _, value in pairs}
    assert not any(value.startswith("/") or value in fragments for value in values)
    grown = (resident_bytes(proxy) - rss_before) / MiB
    assert grown < 32, f"RSS grew by {grown:.0f} MiB over {REQUESTS} requests"
