"""Pair records: production and every shadow answer joined by request id, complete.

Backends echo the request id they received, so a record whose bodies came from another
request would show. The pair log is checked through the proxy: complete after the drain,
readable with :func:`read_pair_log`, and redacted.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from shadowproxy.pairing.log import read_pair_log
from shadowproxy.pairing.record import PairRecord
from tests.shadow.helpers import echo_handler
from tests.support.proxy import make_config, metric_value, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import settle, wait_for

PATH = "/v2/models/churn/infer"
# The slow side; wide enough that the fast side answers first even on a loaded CI machine.
SLOW_S = 0.6


async def _fire(port: int, n: int, concurrency: int = 20) -> dict[str, bytes]:
    """POST ``n`` distinct bodies, half with a client id; return {request id: body}."""
    sent: dict[str, bytes] = {}
    queue = list(range(n))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            i = queue.pop()
            body = orjson.dumps({"i": i, "inputs": [i * 0.5]})
            headers = {"Content-Type": "application/json"}
            if i % 2 == 0:
                headers["X-Request-Id"] = f"pair-{i}"
            async with session.post(
                f"http://127.0.0.1:{port}{PATH}", data=body, headers=headers
            ) as resp:
                assert resp.status == 200
                answer = orjson.loads(await resp.read())
                rid = resp.headers["X-Request-Id"]
                assert answer["rid"] == rid
                if i % 2 == 0:
                    assert rid == f"pair-{i}"
                sent[rid] = body

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    assert len(sent) == n
    return sent


def _check_record(record: PairRecord, sent: dict[str, bytes], shadows: set[str]) -> None:
    rid = record.request_id
    assert record.method == "POST"
    assert record.path == PATH
    assert record.request_body == sent[rid]
    assert record.request_content_type == "application/json"
    assert record.started_at > 0
    assert record.production is not None
    exchanges = {"prod": record.production, **record.shadows}
    assert set(record.shadows) == shadows
    for who, exchange in exchanges.items():
        assert exchange.outcome == "ok", (who, exchange.detail)
        assert exchange.status == 200
        assert exchange.latency_s > 0
        assert exchange.content_type.startswith("application/json")
        echoed = orjson.loads(exchange.body)
        # Joined by request id: every body in the record answers this very request.
        assert echoed["who"] == who
        assert echoed["rid"] == rid
        assert echoed["body"].encode() == sent[rid]
    assert record.production.role == "production"
    assert all(e.role == "candidate" for e in record.shadows.values())


@pytest.fixture
async def echoes(backend: Backend) -> AsyncIterator[tuple[Backend, Backend, Backend]]:
    backend.handler = echo_handler("prod")
    c1 = await Backend(handler=echo_handler("c1")).start()
    c2 = await Backend(handler=echo_handler("c2")).start()
    yield backend, c1, c2
    await c1.stop()
    await c2.stop()


def _config(prod: Backend, c1: Backend, c2: Backend, **extra: object) -> dict[str, object]:
    return make_config(
        prod.url,
        candidates=[
            {
                "name": "c1",
                "version": "1",
                "url": c1.url,
                "timeout_ms": 2000,
                "connect_timeout_ms": 2000,
            },
            {
                "name": "c2",
                "version": "2",
                "url": c2.url,
                "timeout_ms": 2000,
                "connect_timeout_ms": 2000,
            },
        ],
        **extra,
    )


async def test_every_mirrored_request_gives_exactly_one_complete_record(
    echoes: tuple[Backend, Backend, Backend],
) -> None:
    n = 300
    prod, c1, c2 = echoes
    records: list[PairRecord] = []
    async with running_proxy(_config(prod, c1, c2)) as rt:
        rt.stream.subscribe(records.append)
        sent = await _fire(rt.traffic_port, n)
        await wait_for(lambda: len(records) >= n, what=f"{n} records")
        await settle(lambda: len(records))
        assert len(records) == n
        assert {r.request_id for r in records} == set(sent)
        for record in records:
            _check_record(record, sent, {"c1", "c2"})
        assert metric_value(rt, "shadowproxy_pairs_total", model="c1", version="1") == n
        assert metric_value(rt, "shadowproxy_pairs_total", model="c2", version="2") == n


@pytest.mark.parametrize("slow", ["production", "candidate"])
async def test_join_is_right_whichever_side_answers_first(
    echoes: tuple[Backend, Backend, Backend], slow: str
) -> None:
    n = 60
    prod, c1, c2 = echoes
    if slow == "production":
        prod.delay_s = SLOW_S
    else:
        c1.delay_s = c2.delay_s = SLOW_S
    records: list[PairRecord] = []
    async with running_proxy(_config(prod, c1, c2)) as rt:
        rt.stream.subscribe(records.append)
        sent = await _fire(rt.traffic_port, n, concurrency=30)
        await wait_for(lambda: len(records) >= n, what=f"{n} records")
        await settle(lambda: len(records))
        assert len(records) == n
        for record in records:
            _check_record(record, sent, {"c1", "c2"})
            assert record.production is not None
            fast = min(e.latency_s for e in record.shadows.values())
            if slow == "production":
                assert record.production.latency_s >= SLOW_S > fast
            else:
                assert fast >= SLOW_S > record.production.latency_s
        assert metric_value(rt, "shadowproxy_pairs_total", model="c1", version="1") == n


async def test_unsampled_requests_give_no_record(
    backend: Backend, candidate_backend: Backend
) -> None:
    config = make_config(
        backend.url,
        candidates=[{"name": "c", "version": "1", "url": candidate_backend.url}],
    )
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        url = f"http://127.0.0.1:{rt.traffic_port}{PATH}"
        async with session.get(url) as resp:  # GET is not mirrored by default
            assert resp.status == 200
        async with session.post(url, data=b"{}") as resp:
            assert resp.status == 200
        await wait_for(lambda: len(records) == 1, what="one record")
        await settle(lambda: len(records))
    assert len(records) == 1
    assert records[0].method == "POST"


async def test_pair_log_is_complete_readable_and_redacted(
    echoes: tuple[Backend, Backend, Backend], tmp_path: Path
) -> None:
    n = 200
    prod, c1, c2 = echoes
    secret = "4111-1111-1111-1111"
    for who, server in (("prod", prod), ("c1", c1), ("c2", c2)):
        server.handler = echo_handler(who, extra={"card": secret}, with_body=False)
    log_path = tmp_path / "pairs.jsonl"
    config = _config(prod, c1, c2, pair_log={"path": str(log_path), "redact": ["card"]})
    sent: dict[str, bytes] = {}
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        for i in range(n):
            body = orjson.dumps({"i": i, "card": secret})
            async with session.post(
                f"http://127.0.0.1:{rt.traffic_port}{PATH}",
                data=body,
                headers={"X-Request-Id": f"log-{i}", "Content-Type": "application/json"},
            ) as resp:
                assert resp.status == 200
            sent[f"log-{i}"] = body
        await wait_for(lambda: rt.stream.published >= n, what="every record published")
    # running_proxy drained the proxy: the log is flushed and closed.
    text = log_path.read_bytes()
    assert text.count(b"\n") == n
    assert secret.encode() not in text
    records = list(read_pair_log([log_path]))
    assert len(records) == n
    assert {r.request_id for r in records} == set(sent)
    for record in records:
        request = orjson.loads(record.request_body)
        assert request == {"i": int(record.request_id.split("-")[1]), "card": "[redacted]"}
        assert record.production is not None
        for who, exchange in {"prod": record.production, **record.shadows}.items():
            answer = orjson.loads(exchange.body)
            assert answer["who"] == who
            assert answer["rid"] == record.request_id
            assert answer["card"] == "[redacted]"
        assert set(record.shadows) == {"c1", "c2"}


@pytest.mark.parametrize("corrupt", [False, True])
async def test_a_gzip_production_answer_is_relayed_as_sent_and_paired_decoded(
    backend: Backend, candidate_backend: Backend, corrupt: bool
) -> None:
    answer = orjson.dumps(
        {"outputs": [{"name": "probabilities", "shape": [1, 2], "datatype": "FP32",
                      "data": [0.25, 0.75]}]}
    )  # fmt: skip
    sent = gzip.compress(answer)
    if corrupt:
        sent = sent[:-12]  # cut inside the stream and its trailer

    async def gzipped(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(
            body=sent, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    backend.handler = gzipped
    config = make_config(
        backend.url, candidates=[{"name": "cand", "version": "1", "url": candidate_backend.url}]
    )
    records: list[PairRecord] = []
    async with (
        running_proxy(config) as rt,
        aiohttp.ClientSession(auto_decompress=False) as session,
    ):
        rt.stream.subscribe(records.append)
        url = f"http://127.0.0.1:{rt.traffic_port}{PATH}"
        async with session.post(url, data=b'{"inputs": []}') as resp:
            assert resp.status == 200
            assert resp.headers["Content-Encoding"] == "gzip"
            assert await resp.read() == sent  # the client gets the bytes production sent
        await wait_for(lambda: len(records) == 1, what="the pair record")
    production = records[0].production
    assert production is not None and production.outcome == "ok"
    if corrupt:
        assert production.body == b""
        assert production.detail.startswith("production body not comparable: gzip body")
    else:
        assert production.body == answer  # what the comparator reads
        assert production.detail == ""
