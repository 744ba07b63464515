"""Python cost of the proxy's hot path, without sockets: deterministic, for profiling.

The real protocol objects (client connection, production relay, upstream connections,
shadow calls, pairing) are driven with in-memory transports, so the figures exclude
syscalls and the event loop's I/O, and do not drift with the machine's load the way
wrk figures do. Use it to compare commits and to find what to optimise:

    python -m bench.hotpath                 # per-request cost, shadowing off and mirrored
    python -m bench.hotpath --profile       # the same under cProfile, top functions
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
from dataclasses import dataclass
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry

from shadowproxy.config import config_from_dict
from shadowproxy.observability.metrics import Metrics
from shadowproxy.pairing.join import PairStream
from shadowproxy.proxy.connection import ClientConnection
from shadowproxy.proxy.handler import Proxy
from shadowproxy.proxy.upstream import UpstreamConnection

BODY = b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}'
REQUEST = (
    b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: %d\r\n"
    b"Content-Type: application/json\r\n\r\n%s" % (len(BODY), BODY)
)
ANSWER = b'{"outputs":[{"name":"p","shape":[1,2],"datatype":"FP32","data":[0.2,0.8]}]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 13:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
    % (len(ANSWER), ANSWER)
)


class MemoryTransport:
    """Enough of an asyncio transport for the proxy: writes are kept, with a timestamp."""

    def __init__(self) -> None:
        self.writes = 0
        self.last_write_ns = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last_write_ns = time.perf_counter_ns()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


@dataclass
class Wired:
    """A proxy with one client connection and pre-pooled upstream connections."""

    client: ClientConnection
    production: UpstreamConnection
    candidate: UpstreamConnection | None
    client_transport: MemoryTransport
    production_transport: MemoryTransport

    def exchange(self) -> None:
        self.client.data_received(REQUEST)
        self.production.data_received(RESPONSE)
        if self.candidate is not None:
            self.candidate.data_received(RESPONSE)


def _wire(mirror: bool) -> Wired:
    config: dict[str, Any] = {"production": {"name": "prod", "url": "http://127.0.0.1:9"}}
    if mirror:
        config["candidates"] = [{"name": "cand", "url": "http://127.0.0.1:10"}]
    loop = asyncio.get_running_loop()
    proxy = Proxy(config_from_dict(config), Metrics(CollectorRegistry()), PairStream(), loop)
    client_transport, production_transport = MemoryTransport(), MemoryTransport()
    client = ClientConnection(proxy)
    client.connection_made(client_transport)  # type: ignore[arg-type]
    production = UpstreamConnection(proxy.production_pool)
    production.connection_made(production_transport)  # type: ignore[arg-type]
    proxy.production_pool.release(production)
    candidate = None
    if mirror:
        candidate = UpstreamConnection(proxy.targets[0].pool)
        candidate.connection_made(MemoryTransport())  # type: ignore[arg-type]
        proxy.targets[0].pool.release(candidate)
    return Wired(client, production, candidate, client_transport, production_transport)


async def per_request_us(mirror: bool, requests: int) -> float:
    wired = _wire(mirror)
    warmup = 2000
    for i in range(warmup + requests):
        if i == warmup:
            start = time.perf_counter()
        wired.exchange()
        if i % 50 == 0:
            await asyncio.sleep(0)  # let the deadline queues tick, as in a live loop
    elapsed = time.perf_counter() - start
    assert wired.client_transport.writes == warmup + requests, "every request is answered"
    return elapsed / requests * 1e6


async def critical_path_us(requests: int) -> tuple[float, float, float]:
    """Medians of client bytes in → upstream write, upstream bytes in → client write, and
    of the whole exchange including the work after both writes.

    Only this work adds latency to a request; bookkeeping done while production computes,
    or after the answer is written, does not.
    """
    wired = _wire(False)
    to_upstream, to_client, whole = [], [], []
    for i in range(requests):
        t0 = time.perf_counter_ns()
        wired.client.data_received(REQUEST)
        to_upstream.append(wired.production_transport.last_write_ns - t0)
        t1 = time.perf_counter_ns()
        wired.production.data_received(RESPONSE)
        to_client.append(wired.client_transport.last_write_ns - t1)
        whole.append(time.perf_counter_ns() - t0)
        if i % 50 == 0:
            await asyncio.sleep(0)
    skip = requests // 5
    return (
        statistics.median(to_upstream[skip:]) / 1000,
        statistics.median(to_client[skip:]) / 1000,
        statistics.median(whole[skip:]) / 1000,
    )


async def main(requests: int, profile: bool) -> None:
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await per_request_us(True, requests // 5)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        return
    for mirror in (False, True):
        cost = await per_request_us(mirror, requests)
        print(f"{'mirrored' if mirror else 'shadowing off':14s} {cost:6.2f} µs of Python/request")
    to_upstream, to_client, whole = await critical_path_us(requests)
    print(f"latency path   {to_upstream:6.2f} µs request → upstream write")
    print(f"               {to_client:6.2f} µs response → client write")
    print(f"               {whole:6.2f} µs whole exchange, bookkeeping included")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    uvloop.run(main(args.requests, args.profile))
