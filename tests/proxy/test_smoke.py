"""The shortest end-to-end path: a request through the proxy to production and a candidate."""

from __future__ import annotations

import aiohttp

from tests.support.proxy import make_config, metric_value, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import wait_for


async def test_forwards_and_mirrors(backend: Backend, candidate_backend: Backend) -> None:
    config = make_config(
        backend.url, candidates=[{"name": "cand", "version": "2", "url": candidate_backend.url}]
    )
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{rt.traffic_port}/v2/models/m/infer", data=b'{"x": 1}'
        ) as resp:
            assert resp.status == 200
            assert resp.headers["X-Request-Id"]
            body = await resp.json()
        assert body["outputs"][0]["data"] == [0.25, 0.75]
        await wait_for(lambda: bool(candidate_backend.seen), what="the mirror")
        assert candidate_backend.seen[-1].headers["X-Shadow-Request"] == "1"
        assert candidate_backend.seen[-1].body == b'{"x": 1}'
        assert metric_value(
            rt, "shadowproxy_requests_total",
            role="production", model="prod", version="1.0", outcome="ok",
        ) >= 1  # fmt: skip
