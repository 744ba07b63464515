"""1,000 requests pipelined in one write, against a real ``shadowproxy serve`` process.

Pipelining is legal, so nothing is refused here: every request must be answered, in
order, each answer carrying its own request's id and production's answer to its own
body, and each forwarded exactly once to production (in order) and to the mirror. The
proxy parses at most ``limits.max_pipelined`` requests ahead of the one it serves, so
several such connections at once cost it no memory that stays.
"""

from __future__ import annotations

import asyncio
import itertools
import zlib

import orjson

from tests.hardening.backend import CountingBackend
from tests.hardening.harness import (
    assert_unaffected,
    bystander,
    memory_flat_over,
    served_at_least,
)
from tests.proxy._util import connect, read_response, request_bytes
from tests.support.served import Served
from tests.support.waiting import wait_for

PIPELINED = 1000
CONNECTIONS = 4


def pipelined_requests(tag: str) -> list[tuple[str, bytes]]:
    """(request id, bytes) of 1,000 requests: GETs and POSTs with bodies, mixed."""
    requests = []
    for i in range(PIPELINED):
        rid = f"{tag}-{i:04d}"
        if i % 3:
            data = request_bytes("GET", f"/pipelined/{i}", [("X-Request-Id", rid)])
        else:
            body = orjson.dumps({"inputs": [i] * (i % 7)})
            data = request_bytes("POST", f"/pipelined/{i}", [("X-Request-Id", rid)], body)
        requests.append((rid, data))
    return requests


def pipelined_ids(backend: CountingBackend) -> list[str]:
    """Request ids of the pipelined requests ``backend`` received, in arrival order."""
    return [str(r.request_id) for r in backend.from_clients() if r.path.startswith(b"/pipelined/")]


async def one_pipelined_connection(served: Served, tag: str) -> list[str]:
    """Send 1,000 requests in one write; check each answer in order; their ids."""
    requests = pipelined_requests(tag)
    answered = []
    async with connect(served.traffic_port) as (reader, writer):
        writer.write(b"".join(data for _, data in requests))
        await writer.drain()
        for i, (rid, data) in enumerate(requests):
            resp = await asyncio.wait_for(read_response(reader), 10)
            answer = orjson.loads(resp.body)
            assert resp.status == 200, (rid, resp.status, resp.body)
            assert resp.get("X-Request-Id") == rid == answer["rid"], (rid, resp.headers)
            assert answer["who"] == "production" and answer["path"] == f"/pipelined/{i}"
            body = data.partition(b"\r\n\r\n")[2]
            assert answer["crc32"] == zlib.crc32(body), rid
            answered.append(rid)
    return answered


async def test_a_thousand_pipelined_requests_are_answered_in_order(
    proxy: Served, production: CountingBackend, candidate: CountingBackend
) -> None:
    rounds = 3
    numbers = itertools.count()

    async def one_round() -> list[list[str]]:
        r = next(numbers)
        return await asyncio.gather(
            *(one_pipelined_connection(proxy, f"r{r}c{c}") for c in range(CONNECTIONS))
        )

    async with bystander(proxy) as load:
        results = await memory_flat_over(proxy, one_round, warmup=1, measured=rounds - 1, mib=8)
        await served_at_least(load, 20)
    sent = [rid for round_ in results for ids in round_ for rid in ids]
    assert len(sent) == rounds * CONNECTIONS * PIPELINED
    forwarded = pipelined_ids(production)
    for tag in {rid.rsplit("-", 1)[0] for rid in sent}:
        # Production got each connection's requests once each, in the order sent.
        mine = [rid for rid in forwarded if rid.startswith(tag + "-")]
        assert mine == [f"{tag}-{i:04d}" for i in range(PIPELINED)]
    await wait_for(lambda: len(pipelined_ids(candidate)) == len(sent), what="every mirror")
    assert sorted(pipelined_ids(candidate)) == sorted(sent)
    assert production.anomalies == candidate.anomalies == []
    assert_unaffected(load)
