"""Production as a local model: shadowproxy serves the protocol's routes itself."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import numpy as np
import onnxruntime as ort
import orjson
import psutil
import pytest

from shadowproxy.pairing.record import PairRecord
from tests.local.test_local_candidate import ROWS, v2_request
from tests.proxy._util import connect, read_response, request_bytes
from tests.support.models import BuiltModel
from tests.support.proxy import make_config, metric_value, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import wait_for


def local_production(model: BuiltModel, **extra: object) -> dict[str, object]:
    config = make_config("http://unused", **extra)
    config["production"] = {
        "name": "prod", "version": "1.0", "model": model.config(),
        "executor": {"kind": "thread", "warmup_runs": 1}, "timeout_ms": 2000,
    }  # fmt: skip
    return config


async def test_serves_inference_health_and_metadata(logreg_model: BuiltModel) -> None:
    async with (
        running_proxy(local_production(logreg_model)) as rt,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{rt.traffic_port}"
        async with session.post(
            base + "/v2/models/prod/infer", data=v2_request(), headers={"X-Request-Id": "r-1"}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["X-Request-Id"] == "r-1"
            answer = orjson.loads(await resp.read())
        expected = ort.InferenceSession(str(logreg_model.path)).run(None, {"X": ROWS})
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert outputs["label"]["data"] == expected[0].tolist()
        assert outputs["label"]["datatype"] == "INT64"
        probabilities = np.array(outputs["probabilities"]["data"], dtype=np.float32)
        np.testing.assert_array_equal(probabilities.reshape(2, 2), expected[1])
        assert answer["model_name"] == "prod" and answer["model_version"] == "1.0"

        async with session.get(base + "/v2/health/ready") as resp:
            assert resp.status == 200
        async with session.get(base + "/v2/models/prod") as resp:
            meta = orjson.loads(await resp.read())
            assert resp.status == 200
            assert [i["name"] for i in meta["inputs"]] == ["X"]
            assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
        async with session.get(base + "/v2/models/other") as resp:
            assert resp.status == 404
        assert metric_value(
            rt, "shadowproxy_requests_total",
            role="production", model="prod", version="1.0", outcome="ok",
        ) == 1  # fmt: skip


async def test_head_and_wrong_methods_get_proper_heads_on_one_connection(
    logreg_model: BuiltModel,
) -> None:
    async with (
        running_proxy(local_production(logreg_model)) as rt,
        connect(rt.traffic_port) as (reader, writer),
    ):
        # HEAD on the health route and on the inference route (405), then a GET, all on
        # one keep-alive connection: a body after a HEAD answer would desynchronise it.
        for method, target, status in (
            ("HEAD", "/v2/health/ready", 200),
            ("HEAD", "/v2/models/prod/infer", 405),
            ("DELETE", "/v2/health/ready", 405),
            ("GET", "/v2/models/prod/infer", 405),
            ("GET", "/v2/health/live", 200),
        ):
            writer.write(request_bytes(method, target))
            head_only = method == "HEAD"
            resp = await asyncio.wait_for(read_response(reader, head_request=head_only), 3)
            assert resp.status == status, (method, target)
            if status == 405:  # RFC 9110 §15.5.6
                allowed = "POST" if target.endswith("/infer") else "GET, HEAD"
                assert resp.get("Allow") == allowed, resp.headers
            if not head_only:
                assert len(resp.body) == int(resp.get("Content-Length") or -1)


async def test_a_bad_body_is_a_400_in_the_protocol_format_and_serving_goes_on(
    logreg_model: BuiltModel,
) -> None:
    async with (
        running_proxy(local_production(logreg_model)) as rt,
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/prod/infer"
        for body in (b"{", v2_request(ROWS[:, :2]), b'{"inputs": []}'):
            async with session.post(url, data=body) as resp:
                assert resp.status == 400
                assert "error" in orjson.loads(await resp.read())
        async with session.post(url, data=v2_request()) as resp:
            assert resp.status == 200
        assert metric_value(
            rt, "shadowproxy_requests_total",
            role="production", model="prod", version="1.0", outcome="invalid",
        ) == 3  # fmt: skip


async def test_local_production_is_mirrored_to_a_remote_candidate(
    logreg_model: BuiltModel, candidate_backend: Backend
) -> None:
    config = local_production(
        logreg_model,
        candidates=[{"name": "remote", "url": candidate_backend.url, "timeout_ms": 2000}],
    )
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/prod/infer"
        async with session.post(url, data=v2_request()) as resp:
            assert resp.status == 200
            body = await resp.read()
        await wait_for(lambda: len(records) == 1, what="one pair record")
        record = records[0]
        assert record.production is not None and record.production.body == body
        assert record.production.cost is not None and record.production.cost.cpu_s
        assert record.shadows["remote"].outcome == "ok"
        seen = candidate_backend.seen[-1]
        assert seen.headers["X-Shadow-Request"] == "1" and seen.body == v2_request()


async def test_a_v2_request_can_ask_for_some_outputs_and_gets_its_id_back(
    logreg_model: BuiltModel,
) -> None:
    request = orjson.loads(v2_request())
    async with (
        running_proxy(local_production(logreg_model)) as rt,
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/prod/infer"
        wanted = {**request, "id": "abc", "outputs": [{"name": "label"}]}
        async with session.post(url, data=orjson.dumps(wanted)) as resp:
            assert resp.status == 200
            answer = orjson.loads(await resp.read())
        assert answer["id"] == "abc"
        assert [o["name"] for o in answer["outputs"]] == ["label"]
        unknown = {**request, "outputs": [{"name": "nope"}]}
        async with session.post(url, data=orjson.dumps(unknown)) as resp:
            assert resp.status == 400
            assert "nope" in orjson.loads(await resp.read())["error"]


async def test_a_v1_production_model_answers_predictions_per_row(
    logreg_model: BuiltModel,
) -> None:
    config = local_production(logreg_model, protocol="v1")
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{rt.traffic_port}/v1/models/prod:predict"
        body = orjson.dumps({"instances": ROWS.tolist()})
        async with session.post(url, data=body) as resp:
            assert resp.status == 200, await resp.text()
            predictions = orjson.loads(await resp.read())["predictions"]
        expected = ort.InferenceSession(str(logreg_model.path)).run(None, {"X": ROWS})
        assert [p["label"] for p in predictions] == expected[0].tolist()
        np.testing.assert_array_equal(
            np.array([p["probabilities"] for p in predictions], dtype=np.float32), expected[1]
        )
        async with session.get(f"http://127.0.0.1:{rt.traffic_port}/v1/models/prod") as resp:
            assert resp.status == 200 and orjson.loads(await resp.read())["ready"] is True


async def test_the_protocols_readiness_routes_follow_the_replicas_readiness(
    logreg_model: BuiltModel,
) -> None:
    # An Open Inference Protocol probe aimed at the traffic port must see a drain just as
    # /healthz/ready on the admin port does.
    config = local_production(logreg_model)
    config["shutdown"] = {"drain_delay_s": 5, "grace_s": 5}
    async with (
        running_proxy(config) as rt,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{rt.traffic_port}"
        for path in ("/v2/health/ready", "/v2/models/prod/ready"):
            async with session.get(base + path) as resp:
                assert resp.status == 200, path
        rt.request_stop()
        for path in ("/v2/health/ready", "/v2/models/prod/ready"):
            async with session.get(base + path) as resp:
                assert resp.status == 503, path
                assert orjson.loads(await resp.read())["ready"] is False
        async with session.post(base + "/v2/models/prod/infer", data=v2_request()) as resp:
            assert resp.status == 200  # the drain still serves


async def test_a_model_failure_tells_the_client_no_internals(
    logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from shadowproxy.executor.faults import ENV_VAR

    monkeypatch.setenv(ENV_VAR, orjson.dumps({"crash_on_call": 1}).decode())
    config = local_production(logreg_model)
    config["production"]["executor"] = {"kind": "process", "warmup_runs": 0}
    async with (
        running_proxy(config) as rt,
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/prod/infer"
        async with session.post(url, data=v2_request()) as resp:
            assert resp.status == 500
            body = orjson.loads(await resp.read())
    # The worker's stderr is for operators, in the log; the client learns only the kind.
    assert body == {"error": "the model failed on this request"}
    assert "crash_on_call=1" in caplog.text


async def test_production_process_workers_run_at_the_proxys_priority(
    logreg_model: BuiltModel,
) -> None:
    """Production's model serves the clients: its workers are neither niced nor idle-class,
    even when the config gives its executor only a kind."""
    config = local_production(logreg_model)
    config["production"]["executor"] = {"kind": "process", "warmup_runs": 0}
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        assert rt.proxy.local_production is not None
        executor = rt.proxy.local_production.executor
        pids = executor.worker_pids  # type: ignore[attr-defined]
        assert pids
        for pid in pids:
            for thread in psutil.Process(pid).threads():
                assert os.sched_getscheduler(thread.id) == os.SCHED_OTHER
                assert psutil.Process(thread.id).nice() == os.nice(0)
        url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/prod/infer"
        async with session.post(url, data=v2_request()) as resp:
            assert resp.status == 200
