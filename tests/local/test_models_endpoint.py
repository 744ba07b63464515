"""``/admin/models`` and the model resource metrics, for local and remote models."""

from __future__ import annotations

import os

import aiohttp
import orjson
import psutil
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from tests.local.test_local_candidate import candidate, post, v2_request
from tests.support.models import BuiltModel
from tests.support.proxy import make_config, metric_value, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import wait_for


async def test_models_endpoint_lists_local_and_remote_models_with_resources(
    backend: Backend, logreg_model: BuiltModel
) -> None:
    exporter = CollectorRegistry()
    ProcessCollector(registry=exporter)

    async def prom(request: web.Request) -> web.Response:
        if request.path == "/metrics":
            return web.Response(body=generate_latest(exporter), content_type="text/plain")
        return web.json_response({"outputs": [{"name": "p", "data": [0.25, 0.75]}]})

    backend.handler = prom
    config = make_config(backend.url, candidates=[candidate(logreg_model)])
    # Credentials in the scrape URL, as a user might give them: never shown by the admin API.
    scrape_url = backend.url.replace("http://", "http://scraper:s3cret@") + "/metrics"
    config["production"]["metrics_url"] = scrape_url
    config["production"]["metrics_interval_s"] = 0.1
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        await post(session, rt.traffic_port, v2_request())
        await wait_for(
            lambda: metric_value(
                rt, "shadowproxy_model_resident_memory_bytes",
                role="production", model="prod", version="1.0",
            ) > 0,
            what="production scraped",
        )  # fmt: skip
        await wait_for(
            lambda: metric_value(
                rt, "shadowproxy_requests_total",
                role="candidate", model="local", version="2", outcome="ok",
            ) == 1,
            what="the local candidate's answer",
        )  # fmt: skip
        async with session.get(f"http://127.0.0.1:{rt.admin_port}/admin/models") as resp:
            assert resp.status == 200
            models = {m["name"]: m for m in orjson.loads(await resp.read())["models"]}
    local = models["local"]
    assert local["source"] == "local" and local["role"] == "candidate"
    assert local["sha256"] == logreg_model.sha256
    assert [i["name"] for i in local["inputs"]] == ["X"]
    assert local["executor"]["kind"] == "process"
    assert local["resources"]["rss_bytes"] > 10e6 and local["resources"]["threads"] >= 1
    # Per request: the worker's CPU measured around its batches, as in pair records.
    assert 0 < local["resources"]["cpu_seconds_per_request"] < 0.5
    remote = models["prod"]
    assert remote["source"] == "remote" and remote["url"] == backend.url
    assert "s3cret" not in remote["metrics_url"]
    assert remote["metrics_url"] == scrape_url.replace("s3cret", "[redacted]")
    # The test process is the "remote model" here: its own figures must come back.
    me = psutil.Process(os.getpid())
    assert abs(remote["resources"]["rss_bytes"] - me.memory_info().rss) < 0.5 * me.memory_info().rss
    assert remote["resources"]["scrapes"] >= 1
