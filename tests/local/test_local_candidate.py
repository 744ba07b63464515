"""A local ONNX candidate behind the real proxy: pairing, costs, bad inputs, faults."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from shadowproxy.pairing.record import PairRecord
from tests.support.cpu import busy_core
from tests.support.models import BuiltModel
from tests.support.proxy import make_config, metric_value, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import wait_for

ROWS = np.array([[0.5, -1.0, 2.0, 0.1], [-0.3, 0.2, 0.0, 1.5]], dtype=np.float32)


def v2_request(rows: np.ndarray = ROWS, name: str = "X") -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": name, "shape": list(rows.shape), "datatype": "FP32",
                     "data": rows.ravel().tolist()}]}
    )  # fmt: skip


def from_backend(body: bytes) -> bool:
    """The test backend's own answer, relayed untouched."""
    return bool(orjson.loads(body)["outputs"][0]["data"] == [0.25, 0.75])


def candidate(model: BuiltModel, **extra: object) -> dict[str, object]:
    return {
        "name": "local",
        "version": "2",
        "model": model.config(),
        "executor": {"kind": "process", "max_wait_ms": 1, "warmup_runs": 1,
                     "restart_backoff_s": 0.05},
        "timeout_ms": 2000,
        **extra,
    }  # fmt: skip


async def post(session: aiohttp.ClientSession, port: int, body: bytes) -> tuple[int, bytes]:
    async with session.post(
        f"http://127.0.0.1:{port}/v2/models/prod/infer",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.read()


async def test_local_candidate_answers_are_paired_with_their_cost(
    backend: Backend, logreg_model: BuiltModel
) -> None:
    config = make_config(backend.url, candidates=[candidate(logreg_model)])
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        status, body = await post(session, rt.traffic_port, v2_request())
        assert status == 200 and from_backend(body)  # production's answer, untouched
        await wait_for(lambda: len(records) == 1, what="one pair record")
        shadow = records[0].shadows["local"]
        assert shadow.outcome == "ok" and shadow.status == 200, shadow.detail
        answer = json.loads(shadow.body)
        outputs = {o["name"]: o for o in answer["outputs"]}
        expected = ort.InferenceSession(str(logreg_model.path)).run(None, {"X": ROWS})
        assert outputs["label"]["data"] == expected[0].tolist()
        got = np.array(outputs["probabilities"]["data"], dtype=np.float32).reshape(2, 2)
        np.testing.assert_array_equal(got, expected[1])
        cost = shadow.cost
        assert cost is not None and cost.cpu_s is not None and cost.cpu_s > 0
        assert cost.compute_s is not None and 0 < cost.compute_s < shadow.latency_s
        assert cost.rss_bytes and cost.rss_bytes > 10e6  # a Python process with onnxruntime
        assert cost.threads and cost.threads >= 1 and cost.child_processes == 0
        assert metric_value(
            rt, "shadowproxy_requests_total",
            role="candidate", model="local", version="2", outcome="ok",
        ) == 1  # fmt: skip


async def test_a_body_the_candidate_cannot_take_is_counted_invalid_with_its_reason(
    backend: Backend, logreg_model: BuiltModel
) -> None:
    config = make_config(backend.url, candidates=[candidate(logreg_model)])
    bad = [
        v2_request(ROWS[:, :3]),  # three features where the model takes four
        b'{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2]}]}',
        b"not json at all",
    ]
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        for body in bad:
            status, answer = await post(session, rt.traffic_port, body)
            assert status == 200 and from_backend(answer)
        await wait_for(lambda: len(records) == len(bad), what="three pair records")
        assert [r.shadows["local"].outcome for r in records] == ["invalid"] * 3
        assert all(r.shadows["local"].detail.startswith("input_invalid") for r in records)
        family = rt.metrics.registry.get_sample_value
        invalid = sum(
            v.value
            for m in rt.metrics.registry.collect()
            if m.name == "shadowproxy_input_invalid"
            for v in m.samples
            if v.name.endswith("_total")
        )
        assert invalid == 3
        assert family("shadowproxy_breaker_open", {"model": "local", "version": "2"}) == 0


async def test_a_crashing_candidate_never_reaches_production(
    backend: Backend, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHADOWPROXY_TEST_FAULTS", json.dumps({"crash_on_call": 1}))
    config = make_config(
        backend.url,
        candidates=[
            candidate(
                logreg_model,
                executor={"kind": "process", "warmup_runs": 0, "max_restarts": 2,
                          "restart_backoff_s": 0.05, "max_wait_ms": 0},
            )
        ],
    )  # fmt: skip
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        for _ in range(12):
            status, body = await post(session, rt.traffic_port, v2_request())
            assert status == 200 and from_backend(body)
        await wait_for(lambda: len(records) == 12, what="twelve pair records")
        outcomes = [r.shadows["local"].outcome for r in records]
        assert "ok" not in outcomes and outcomes.count("error") >= 1
        assert set(outcomes) <= {"error", "dropped"}, outcomes
        await wait_for(
            lambda: metric_value(rt, "shadowproxy_model_disabled",
                                 role="candidate", model="local", version="2") == 1,
            what="the candidate disabled after repeated crashes",
        )  # fmt: skip
        assert (
            metric_value(
                rt, "shadowproxy_model_crashes_total", role="candidate", model="local", version="2"
            )
            >= 2
        )
        assert rt.not_ready_reasons() == []  # production carries on, the replica stays in
        status, body = await post(session, rt.traffic_port, v2_request())
        assert status == 200 and from_backend(body)


async def test_a_full_executor_queue_is_a_counted_drop_with_its_reason(
    backend: Backend, slow_model: BuiltModel
) -> None:
    import asyncio

    config = make_config(
        backend.url,
        candidates=[{
            "name": "local", "version": "2", "model": slow_model.config(), "timeout_ms": 5000,
            "executor": {"kind": "process", "warmup_runs": 0, "max_wait_ms": 0, "max_batch": 1,
                         "queue_rows": 1},
        }],
    )  # fmt: skip
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        answers = await asyncio.gather(
            *(post(session, rt.traffic_port, v2_request(name="x")) for _ in range(12))
        )
        assert all(status == 200 and from_backend(body) for status, body in answers)
        await wait_for(lambda: len(records) == 12, timeout=20, what="twelve pair records")
        dropped = [r for r in records if r.shadows["local"].outcome == "dropped"]
        assert dropped, [r.shadows["local"].outcome for r in records]
        assert metric_value(
            rt, "shadowproxy_shadow_dropped_total", model="local", version="2", reason="budget"
        ) == len(dropped)  # fmt: skip


async def test_a_candidate_starved_of_cpu_is_dropped_as_starved_not_timed_out(
    backend: Backend, slow_model: BuiltModel
) -> None:
    """A replica whose core is saturated leaves its idle-priority worker no CPU: what it
    cannot answer in time is the proxy's shortage, not the candidate's timeout rate."""
    cpu = max(os.sched_getaffinity(0))
    executor = {"kind": "process", "max_wait_ms": 0, "warmup_runs": 1, "cpus": [cpu]}
    config = make_config(
        backend.url,
        # The model takes about 20 ms of CPU a call: beyond a trickle of CPU.
        candidates=[candidate(slow_model, timeout_ms=100, executor=executor,
                              breaker={"failures": 1000})],
    )  # fmt: skip
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        with busy_core(cpu):
            await asyncio.sleep(0.3)  # the sampler has seen the worker asleep
            for _ in range(3):
                status, body = await post(session, rt.traffic_port, v2_request(name="x"))
                assert status == 200 and from_backend(body)
            await wait_for(lambda: len(records) == 3, timeout=10, what="three pair records")
        shadows = [r.shadows["local"] for r in records]
        assert [s.outcome for s in shadows] == ["dropped"] * 3, [s.detail for s in shadows]
        assert all("ms for a CPU" in s.detail for s in shadows)

        def count(name: str, **labels: str) -> float:
            return metric_value(rt, name, model="local", version="2", **labels)

        assert count("shadowproxy_shadow_dropped_total", reason="starved") == 3
        # What a busy core denied the model, for operators: the three requests went out
        # together, so at least half of one 100 ms deadline.
        waited = count("shadowproxy_model_cpu_wait_seconds_total", role="candidate")
        assert waited >= 0.05
        assert count("shadowproxy_requests_total", role="candidate", outcome="timeout") == 0
        # With its core free again, the same worker answers.
        status, body = await post(session, rt.traffic_port, v2_request(name="x"))
        assert status == 200 and from_backend(body)
        await wait_for(lambda: len(records) == 4, timeout=10, what="the fourth record")
        assert records[-1].shadows["local"].outcome == "ok"


@pytest.mark.parametrize(
    ("max_wait_ms", "timeout_ms", "waited_s"),
    [(200, 2000, 0.2), (5000, 300, 0.15)],  # the window; half the deadline when shorter
)
async def test_a_local_candidates_latency_is_its_service_time_not_the_batching_wait(
    backend: Backend, logreg_model: BuiltModel, max_wait_ms: int, timeout_ms: int,
    waited_s: float,
) -> None:  # fmt: skip
    """A lone request waits for its batch to fill; that wait is the proxy's way of running
    shadow traffic, kept in ``cost.queue_s``, not the model's latency."""
    executor = {"kind": "process", "max_wait_ms": max_wait_ms, "warmup_runs": 1}
    config = make_config(
        backend.url,
        candidates=[candidate(logreg_model, executor=executor, timeout_ms=timeout_ms)],
    )
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        status, _ = await post(session, rt.traffic_port, v2_request())
        assert status == 200
        await wait_for(lambda: len(records) == 1, timeout=10, what="the pair record")
    shadow = records[0].shadows["local"]
    assert shadow.outcome == "ok", shadow.detail
    assert shadow.cost is not None and shadow.cost.queue_s is not None
    assert waited_s - 0.005 <= shadow.cost.queue_s < waited_s + 0.1
    assert shadow.cost.compute_s is not None
    assert shadow.cost.compute_s <= shadow.latency_s < 0.1  # the run and the transfer only


async def test_a_local_candidates_latency_leaves_out_its_wait_for_a_busy_core(
    backend: Backend, slow_model: BuiltModel
) -> None:
    """Its worker kept off its core for 300 ms (production's load, here a spinner) answers
    late; the pair records what the model took, not the wait."""
    cpu = max(os.sched_getaffinity(0))
    executor = {"kind": "process", "max_wait_ms": 0, "warmup_runs": 1, "cpus": [cpu]}
    config = make_config(
        backend.url, candidates=[candidate(slow_model, executor=executor, timeout_ms=5000)]
    )
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        with busy_core(cpu):
            await asyncio.sleep(0.2)
            sent = asyncio.get_running_loop().time()
            status, _ = await post(session, rt.traffic_port, v2_request(name="x"))
            assert status == 200
            await asyncio.sleep(0.3)
        await wait_for(lambda: len(records) == 1, timeout=10, what="the pair record")
        took = asyncio.get_running_loop().time() - sent
    shadow = records[0].shadows["local"]
    assert shadow.outcome == "ok", shadow.detail
    assert took >= 0.3 and shadow.latency_s < 0.15, (took, shadow.latency_s, shadow.cost)


def _ragged_answer_model(folder: Path, with_rows: bool) -> BuiltModel:
    """``ReduceSum(X)`` (one row whatever N), beside ``X`` itself (N rows) or alone, which no
    per-row protocol can answer. Valid ONNX; a defect of the model, not of the input."""
    from onnx import TensorProto, helper

    from tests.support.models import _save

    nodes = [helper.make_node("ReduceSum", ["X"], ["total"], keepdims=1)]
    outputs = [helper.make_tensor_value_info("total", TensorProto.FLOAT, [1, 1])]
    if with_rows:
        nodes.append(helper.make_node("Identity", ["X"], ["same"]))
        outputs.append(helper.make_tensor_value_info("same", TensorProto.FLOAT, ["N", 4]))
    graph = helper.make_graph(
        nodes, "ragged", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        outputs,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return _save(model, folder / f"ragged_{with_rows}.onnx")


@pytest.mark.parametrize("with_rows", [True, False])
@pytest.mark.parametrize("kind", ["process", "thread"])
async def test_answers_the_protocol_cannot_carry_are_the_models_error(
    backend: Backend, tmp_path: Path, kind: str, with_rows: bool
) -> None:
    # One output of one row for two instances, or beside one of two rows.
    model = _ragged_answer_model(tmp_path, with_rows)
    local = candidate(model)
    local["executor"] = {**local["executor"], "kind": kind}  # type: ignore[dict-item]
    # KServe V1 answers one prediction per instance: "total" has one row for two.
    config = make_config(backend.url, candidates=[local], protocol="v1")
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        status, answer = await post(
            session, rt.traffic_port, orjson.dumps({"instances": ROWS.tolist()})
        )
        assert status == 200 and from_backend(answer)
        await wait_for(lambda: len(records) == 1, what="one pair record")
        # Not "invalid": the input was fine; the model's output is what no protocol carries.
        assert records[0].shadows["local"].outcome == "error", records[0].shadows["local"]


def lookup_request(indices: list[int]) -> bytes:
    tensor = {"name": "idx", "shape": [len(indices)], "datatype": "INT64", "data": indices}
    return orjson.dumps({"inputs": [tensor]})


@pytest.mark.parametrize("kind", ["process", "thread"])
async def test_inputs_the_model_refuses_neither_open_the_breaker_nor_fail_their_batch(
    backend: Backend, lookup_model: BuiltModel, kind: str
) -> None:
    # Index 100 is outside the model's table: onnxruntime refuses it at run time.
    executor = {"kind": kind, "max_wait_ms": 100, "max_batch": 8, "warmup_runs": 1}
    config = make_config(
        backend.url,
        candidates=[candidate(lookup_model, executor=executor,
                              breaker={"failures": 2, "reset_s": 60})],
    )  # fmt: skip
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        await wait_for(lambda: not rt.proxy.targets[0].executor.starting, what="the model")
        bodies = [lookup_request(i) for i in ([1], [100], [2, 3], [100], [4])]
        answers = await asyncio.gather(*(post(session, rt.traffic_port, b) for b in bodies))
        assert all(status == 200 and from_backend(body) for status, body in answers)
        await wait_for(lambda: len(records) == 5, what="five pair records")
        by_body = {r.request_body: r.shadows["local"] for r in records}
        for body, indices in zip(bodies, ([1], [100], [2, 3], [100], [4]), strict=True):
            shadow = by_body[body]
            if 100 in indices:
                assert shadow.outcome == "invalid", shadow
            else:
                assert shadow.outcome == "ok", shadow.detail
                (output,) = json.loads(shadow.body)["outputs"]
                assert output["data"] == [float(i) for i in indices]
        # Two refusals in a row, with failures=2: the breaker is still closed.
        breaker = rt.proxy.targets[0].breaker
        assert breaker.state.value == "closed" and breaker.consecutive_failures == 0
        status, _ = await post(session, rt.traffic_port, lookup_request([5]))
        await wait_for(lambda: len(records) == 6, what="the sixth pair record")
        assert records[-1].shadows["local"].outcome == "ok"


async def test_a_half_open_probe_refused_as_invalid_lets_the_next_request_probe(
    backend: Backend, logreg_model: BuiltModel
) -> None:
    config = make_config(
        backend.url,
        candidates=[candidate(logreg_model, breaker={"failures": 1, "reset_s": 0.05})],
    )
    records: list[PairRecord] = []
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        rt.stream.subscribe(records.append)
        target = rt.proxy.targets[0]
        await wait_for(lambda: not target.executor.starting, what="the model")
        # Open the breaker as a failure would have, reset_s ago.
        breaker = target.breaker
        breaker.record(breaker.allow(0.0), False, asyncio.get_running_loop().time() - 1)
        assert breaker.state.value == "open"
        status, _ = await post(session, rt.traffic_port, b'{"inputs": "not a list"}')
        assert status == 200
        await wait_for(lambda: len(records) == 1, what="the probe's record")
        assert records[0].shadows["local"].outcome == "invalid"
        status, _ = await post(session, rt.traffic_port, v2_request())
        await wait_for(lambda: len(records) == 2, what="the second record")
        assert records[1].shadows["local"].outcome == "ok", records[1].shadows["local"]
        assert breaker.state.value == "closed"
