"""Body mode: workers decode raw request bodies, run them together and encode the answers.

Real worker processes and onnxruntime; answers are checked against what the payload
protocol itself encodes for onnxruntime's own outputs on the same rows.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import numpy as np
import psutil
import pytest

from shadowproxy.config.model import Executor, Outputs, Payload
from shadowproxy.errors import ModelLoadError
from shadowproxy.executor import BodyAnswer, LocalExecutor, create_executor
from shadowproxy.executor.faults import CRASH_EXIT_CODE, ENV_VAR
from shadowproxy.protocols import ProtocolSpec
from tests.executor.helpers import (
    Factory,
    as_process,
    direct,
    failure,
    features,
    gone,
    model_file,
    settings,
)
from tests.support.models import BuiltModel
from tests.support.waiting import wait_for

NAME, VERSION = "candidate", "7"
V2 = ProtocolSpec("v2", Payload())
BodyFactory = Callable[..., Coroutine[Any, Any, LocalExecutor]]


@pytest.fixture
async def make_body_executor() -> AsyncIterator[BodyFactory]:
    """Start executors that take bodies; every one is closed after the test."""
    started: list[LocalExecutor] = []

    async def make(
        model: BuiltModel, protocol: ProtocolSpec | None = V2, **changes: Any
    ) -> LocalExecutor:
        executor = create_executor(
            NAME,
            model_file(model),
            settings(**changes),
            where="candidates[0].model",
            protocol=protocol,
            version=VERSION,
        )
        started.append(executor)
        await executor.start()
        return executor

    yield make
    await asyncio.gather(*(e.close(timeout_s=1.0) for e in started))


def faults(monkeypatch: pytest.MonkeyPatch, **values: object) -> None:
    monkeypatch.setenv(ENV_VAR, json.dumps(values))


# -- bodies and reference answers -------------------------------------------------------


def v2_body(x: np.ndarray, request_id: str | None = None, name: str = "X") -> bytes:
    body: dict[str, Any] = {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    return json.dumps(body).encode()


def v1_body(x: np.ndarray) -> bytes:
    return json.dumps({"instances": x.tolist()}).encode()


FEATURES = ("f0", "f1", "f2", "f3")


def json_body(x: np.ndarray, rows_path: str) -> bytes:
    rows = [dict(zip(FEATURES, row, strict=True)) for row in x.tolist()]
    return json.dumps({rows_path: rows} if rows_path else rows).encode()


def reference(
    spec: ProtocolSpec, model: BuiltModel, x: np.ndarray, request_id: str | None = None
) -> Any:
    """The protocol's encoding of onnxruntime's own outputs for ``x``, parsed.

    INT64 outputs are taken as ``int64``, as frames deliver them: onnxruntime's ``longlong``
    arrays hold the same values.
    """
    outputs = {
        name: array.astype(np.int64) if array.dtype == np.int64 else array
        for name, array in direct(model, {"X": x}).items()
    }
    body = spec.build().encode_response(
        outputs, model_name=NAME, model_version=VERSION, request_id=request_id
    )
    return json.loads(body)


def assert_same_json(got: Any, want: Any, rtol: float = 0.0, where: str = "body") -> None:
    """Equal JSON values; floats equal as float32 (within ``rtol`` when it is set)."""
    if isinstance(want, float):
        assert isinstance(got, float), f"{where}: {got!r} is not a float"
        if rtol:
            assert got == pytest.approx(want, rel=rtol, abs=1e-6), where
        else:
            assert np.float32(got) == np.float32(want), f"{where}: {got!r} != {want!r}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{where}: {got!r}"
        for key in want:
            assert_same_json(got[key], want[key], rtol, f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r}"
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same_json(a, b, rtol, f"{where}[{index}]")
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


def ok(answer: BodyAnswer) -> Any:
    assert answer.invalid_reason == "" and answer.invalid_message == ""
    assert answer.body
    return json.loads(answer.body)


def v2_outputs(parsed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in parsed["outputs"]}


def assert_v2_rows(parsed: dict[str, Any], want: dict[str, np.ndarray], exact: bool) -> None:
    """The v2 answer holds ``want``: labels equal, probabilities equal as float32."""
    outputs = v2_outputs(parsed)
    assert outputs["label"]["datatype"] == "INT64"
    assert outputs["label"]["shape"] == list(want["label"].shape)
    assert outputs["label"]["data"] == want["label"].tolist()
    probabilities = want["probabilities"]
    assert outputs["probabilities"]["shape"] == list(probabilities.shape)
    got = np.asarray(outputs["probabilities"]["data"], dtype=np.float32)
    if exact:
        np.testing.assert_array_equal(got, probabilities.ravel())
    else:
        np.testing.assert_allclose(got, probabilities.ravel(), rtol=1e-5, atol=1e-6)


# -- answers ----------------------------------------------------------------------------


async def test_v2_bodies_answer_what_the_protocol_encodes_for_onnxruntime(
    make_body_executor: BodyFactory, logreg_model: BuiltModel
) -> None:
    executor = await make_body_executor(logreg_model)
    assert executor.accepts_bodies
    for rows, request_id in [(1, None), (1, "one"), (9, "nine"), (64, None)]:
        x = features(rows, seed=rows)
        answer = await executor.submit_body(v2_body(x, request_id), 5.0)
        parsed = ok(answer)
        assert_same_json(parsed, reference(V2, logreg_model, x, request_id))
        assert parsed["model_name"] == NAME and parsed["model_version"] == VERSION
        assert parsed.get("id") == request_id
        assert_v2_rows(parsed, direct(logreg_model, {"X": x}), exact=True)


async def test_v1_bodies_answer_what_the_protocol_encodes_for_onnxruntime(
    make_body_executor: BodyFactory, logreg_model: BuiltModel
) -> None:
    spec = ProtocolSpec("v1", Payload())
    executor = await make_body_executor(logreg_model, protocol=spec)
    for rows in (1, 6):
        x = features(rows, seed=20 + rows)
        parsed = ok(await executor.submit_body(v1_body(x), 5.0))
        assert_same_json(parsed, reference(spec, logreg_model, x))
        want = direct(logreg_model, {"X": x})
        predictions = parsed["predictions"]
        assert [p["label"] for p in predictions] == want["label"].tolist()
        got = np.asarray([p["probabilities"] for p in predictions], dtype=np.float32)
        np.testing.assert_array_equal(got, want["probabilities"])
    # The columnar form decodes to the same rows.
    x = features(3, seed=5)
    columnar = json.dumps({"inputs": x.tolist()}).encode()
    assert_same_json(
        ok(await executor.submit_body(columnar, 5.0)), reference(spec, logreg_model, x)
    )


@pytest.mark.parametrize(
    ("payload", "outputs", "score_key", "label_key"),
    [
        (Payload(rows="rows"), Outputs(), "score", "label"),
        (Payload(rows="", response_rows=""), Outputs(score="p", label="y"), "p", "y"),
    ],
)
async def test_json_bodies_answer_what_the_protocol_encodes_for_onnxruntime(
    make_body_executor: BodyFactory,
    logreg_model: BuiltModel,
    payload: Payload,
    outputs: Outputs,
    score_key: str,
    label_key: str,
) -> None:
    spec = ProtocolSpec("json", payload, FEATURES, outputs)
    executor = await make_body_executor(logreg_model, protocol=spec)
    for rows in (1, 5):
        x = features(rows, seed=30 + rows)
        parsed = ok(await executor.submit_body(json_body(x, payload.rows), 5.0))
        assert_same_json(parsed, reference(spec, logreg_model, x))
        records = parsed["predictions"] if payload.response_rows else parsed
        want = direct(logreg_model, {"X": x})
        assert [r[label_key] for r in records] == want["label"].tolist()
        got = np.asarray([r[score_key] for r in records], dtype=np.float32)
        np.testing.assert_array_equal(got, want["probabilities"])
    # A row without one of the features is refused, naming it.
    broken = json.loads(json_body(features(2), payload.rows))
    rows_of = broken[payload.rows] if payload.rows else broken
    del rows_of[1]["f2"]
    answer = await executor.submit_body(json.dumps(broken).encode(), 5.0)
    assert answer.body == b"" and answer.invalid_reason == "missing_input"
    assert "'f2'" in answer.invalid_message


async def test_concurrent_bodies_share_batches_and_each_gets_its_own_answer(
    make_body_executor: BodyFactory, logreg_model: BuiltModel
) -> None:
    executor = await make_body_executor(logreg_model, max_batch=16, max_wait_ms=20.0)
    sizes = [1, 3, 2, 1, 4, 2, 1, 5] * 5
    inputs = [features(n, seed=100 + i) for i, n in enumerate(sizes)]
    answers = await asyncio.gather(
        *(executor.submit_body(v2_body(x, f"r{i}"), 5.0) for i, x in enumerate(inputs))
    )
    for i, (x, answer) in enumerate(zip(inputs, answers, strict=True)):
        parsed = ok(answer)
        assert parsed["id"] == f"r{i}"
        # Stacked with other requests: labels exact, scores within float rounding.
        assert_v2_rows(parsed, direct(logreg_model, {"X": x}), exact=False)
        assert_same_json(parsed, reference(V2, logreg_model, x, f"r{i}"), rtol=1e-5)
    figures = executor.resources()
    assert figures.requests == len(sizes)
    # Every body counts as one row of a batch of at most max_batch bodies.
    assert len(sizes) // 16 <= figures.batches < len(sizes)
    assert figures.batches == as_process(executor).batches


async def test_a_batch_filled_over_several_loop_passes_goes_when_full_not_at_its_timer(
    make_body_executor: BodyFactory, logreg_model: BuiltModel
) -> None:
    executor = await make_body_executor(logreg_model, max_batch=4, max_wait_ms=60_000.0)
    pending = []
    for i in range(4):
        pending.append(executor.submit_body(v2_body(features(1, seed=i)), 120.0))
        await asyncio.sleep(0)  # each body in a pass of the event loop of its own
    # The fourth body fills the batch: it goes at once, not when the first one's minute is up.
    answers = await asyncio.wait_for(asyncio.gather(*pending), 10.0)
    for answer in answers:
        ok(answer)
    assert executor.resources().batches == 1


async def test_invalid_bodies_get_their_reason_and_valid_ones_in_the_batch_their_answer(
    make_body_executor: BodyFactory, logreg_model: BuiltModel
) -> None:
    executor = await make_body_executor(logreg_model, max_batch=16, max_wait_ms=20.0)
    good = [features(2, seed=1), features(1, seed=2), features(3, seed=3)]
    three_columns = np.zeros((1, 3), dtype=np.float32)
    bodies = [
        v2_body(good[0], "good-0"),
        b'{"inputs": [',
        v2_body(three_columns),
        v2_body(good[1], "good-1"),
        v2_body(features(1), name="Z"),
        json.dumps(
            {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]}
        ).encode(),  # fmt: skip
        json.dumps({"inputs": []}).encode(),
        b"",
        v2_body(good[2], "good-2"),
    ]
    answers = await asyncio.gather(*(executor.submit_body(b, 5.0) for b in bodies))
    assert executor.resources().batches == 1  # valid and invalid bodies went together
    reasons = [a.invalid_reason for a in answers]
    assert reasons == [
        "",
        "bad_json",
        "bad_shape",
        "",
        "unknown_input",
        "bad_dtype",
        "missing_input",
        "bad_json",
        "",
    ]
    for answer in answers:
        if answer.invalid_reason:
            assert answer.body == b"" and answer.invalid_message
    assert "'X'" in answers[2].invalid_message and "[1, 3]" in answers[2].invalid_message
    assert "'Z'" in answers[4].invalid_message
    assert "'X'" in answers[5].invalid_message and "INT64" in answers[5].invalid_message
    assert "'X'" in answers[6].invalid_message
    for number, (index, x) in enumerate(zip((0, 3, 8), good, strict=True)):
        parsed = ok(answers[index])
        assert parsed["id"] == f"good-{number}"
        assert_v2_rows(parsed, direct(logreg_model, {"X": x}), exact=False)


async def test_a_batch_of_only_invalid_bodies_leaves_the_worker_serving(
    make_body_executor: BodyFactory, logreg_model: BuiltModel
) -> None:
    executor = await make_body_executor(logreg_model, max_wait_ms=10.0)
    bad = [b"[1, 2]", b"null", b'{"inputs": 3}']
    answers = await asyncio.gather(*(executor.submit_body(b, 5.0) for b in bad))
    assert [a.invalid_reason for a in answers] == ["bad_body"] * 3
    x = features(2, seed=9)
    parsed = ok(await executor.submit_body(v2_body(x), 5.0))
    assert_v2_rows(parsed, direct(logreg_model, {"X": x}), exact=True)
    assert executor.resources().crashes == 0


async def test_answer_times_and_cpu_shares(
    make_body_executor: BodyFactory, logreg_model: BuiltModel
) -> None:
    executor = await make_body_executor(logreg_model, max_batch=8, max_wait_ms=10.0)
    # Bodies of 1 to 4 rows, and one that is not a body at all.
    sizes = [1 + i % 4 for i in range(20)]
    bodies = [v2_body(features(n, seed=i)) for i, n in enumerate(sizes)] + [b"not json"]
    answers = await asyncio.gather(*(executor.submit_body(b, 5.0) for b in bodies))
    for answer in answers:
        assert answer.compute_s > 0
        assert answer.queue_s >= 0 and answer.ipc_s >= 0
        assert answer.compute_s < 5.0 and answer.queue_s < 5.0
    # Each body's CPU share is its rows' share of its batch: the shares add up to the CPU
    # time the worker reported, and the invalid body, which ran no row, has none.
    process = as_process(executor)
    assert sum(a.cpu_s for a in answers) == pytest.approx(process.batch_cpu_seconds, rel=1e-6)
    assert process.batch_cpu_seconds > 0
    assert all(a.cpu_s > 0 for a in answers[:-1]) and answers[-1].cpu_s == 0
    per_row = [a.cpu_s / n for a, n in zip(answers, sizes, strict=False)]
    # Bodies batched together share one rate per row (batches: at most max_batch bodies).
    assert len({round(r, 15) for r in per_row}) <= len(bodies) // 8 + 2
    figures = executor.resources()
    assert figures.requests == len(bodies) and figures.batches >= 3
    assert figures.rows == sum(sizes)  # rows run, not bodies
    assert figures.compute_seconds == pytest.approx(sum(a.compute_s for a in answers))
    assert figures.queue_seconds == pytest.approx(sum(a.queue_s for a in answers))
    assert figures.ipc_seconds == pytest.approx(sum(a.ipc_s for a in answers))


# -- executors that take tensors only ----------------------------------------------------


async def test_executors_without_body_support_refuse_bodies(
    make_body_executor: BodyFactory, logreg_model: BuiltModel
) -> None:
    thread = await make_body_executor(logreg_model, kind="thread")
    plain = await make_body_executor(logreg_model, protocol=None)
    for executor in (thread, plain):
        assert not executor.accepts_bodies
        error = await failure(executor.submit_body(v2_body(features(1)), 5.0))
        assert error.outcome == "error"
        # Tensors still work.
        answer = await executor.submit({"X": features(1)}, 1, 5.0)
        assert answer.outputs["label"].shape == (1,)
    assert plain.resources().requests == 1 and thread.resources().requests == 1


async def test_bodies_before_start_and_after_close_are_dropped(logreg_model: BuiltModel) -> None:
    executor = create_executor(NAME, model_file(logreg_model), settings(), protocol=V2)
    assert executor.accepts_bodies
    error = await failure(executor.submit_body(v2_body(features(1)), 1.0))
    assert error.outcome == "dropped" and "not started" in str(error)
    await executor.start()
    ok(await executor.submit_body(v2_body(features(1)), 5.0))
    await executor.close()
    error = await failure(executor.submit_body(v2_body(features(1)), 1.0))
    assert error.outcome == "dropped" and "closed" in str(error)


# -- faults ------------------------------------------------------------------------------


async def test_a_crash_in_body_mode_fails_counts_and_respawns(
    make_body_executor: BodyFactory, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults(monkeypatch, crash_on_call=2)
    executor = as_process(await make_body_executor(logreg_model, restart_backoff_s=0.05))
    monkeypatch.delenv(ENV_VAR)  # the respawned worker is healthy
    (first_pid,) = executor.worker_pids
    ok(await executor.submit_body(v2_body(features(1)), 5.0))
    error = await failure(executor.submit_body(v2_body(features(1)), 5.0))
    assert error.outcome == "error"
    assert f"exited with code {CRASH_EXIT_CODE}" in str(error)
    await wait_for(lambda: executor.resources().restarts == 1, what="a respawn")
    x = features(3, seed=4)
    parsed = ok(await executor.submit_body(v2_body(x), 5.0))
    assert_v2_rows(parsed, direct(logreg_model, {"X": x}), exact=True)
    figures = executor.resources()
    assert (figures.crashes, figures.restarts, figures.workers_alive) == (1, 1, 1)
    assert executor.ready and gone([first_pid])


async def test_a_hang_in_body_mode_times_out_and_the_worker_is_replaced(
    make_body_executor: BodyFactory, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults(monkeypatch, hang_on_call=1)
    executor = as_process(await make_body_executor(logreg_model, restart_backoff_s=0.05))
    monkeypatch.delenv(ENV_VAR)
    (hung_pid,) = executor.worker_pids
    error = await failure(executor.submit_body(v2_body(features(1)), 0.05))
    assert error.outcome == "timeout"
    assert psutil.pid_exists(hung_pid)
    await wait_for(lambda: executor.resources().crashes == 1, timeout=5.0, what="the kill")
    assert executor.last_crash is not None and executor.last_crash.startswith("hung")
    await wait_for(lambda: executor.ready, what="a respawn")
    x = features(2, seed=6)
    assert_v2_rows(
        ok(await executor.submit_body(v2_body(x), 5.0)), direct(logreg_model, {"X": x}), True
    )
    assert executor.resources().timeouts == 1 and gone([hung_pid])


async def test_a_slow_model_times_out_in_body_mode_and_carries_on(
    make_body_executor: BodyFactory, slow_model: BuiltModel
) -> None:
    executor = await make_body_executor(slow_model, warmup_runs=0)
    error = await failure(executor.submit_body(v2_body(features(1), name="x"), 0.002))
    assert error.outcome == "timeout"
    parsed = ok(await executor.submit_body(v2_body(features(2), name="x"), 10.0))
    assert v2_outputs(parsed)["score"]["shape"] == [2, 1]
    figures = executor.resources()
    assert figures.timeouts == 1 and figures.crashes == 0


# -- scheduling --------------------------------------------------------------------------


def thread_policies(pid: int) -> set[tuple[int, int]]:
    """The scheduling policy and niceness of every thread of a process."""
    return {
        (os.sched_getscheduler(t.id), psutil.Process(t.id).nice())
        for t in psutil.Process(pid).threads()
    }


@pytest.mark.parametrize(
    ("changes", "policy"), [({}, os.SCHED_IDLE), ({"idle_priority": False}, os.SCHED_OTHER)]
)
async def test_workers_run_under_sched_idle_unless_disabled(
    make_executor: Factory, logreg_model: BuiltModel, changes: dict[str, bool], policy: int
) -> None:
    assert Executor().idle_priority is True
    executor = as_process(await make_executor(logreg_model, workers=2, threads=2, **changes))
    await executor.submit({"X": features(4)}, 4, 5.0)
    pids = executor.worker_pids
    assert len(pids) == 2
    for pid in pids:
        assert os.sched_getscheduler(pid) == policy
        # Every thread, those a library started before the switch (OpenBLAS at numpy's
        # import, with threads > 1) included.
        assert thread_policies(pid) == {(policy, psutil.Process(pid).nice())}
        assert psutil.Process(pid).nice() == min(19, os.nice(0) + settings().nice)
    # Under SCHED_IDLE from the start: the interpreter's start and the imports of numpy and
    # onnxruntime (paid again at every respawn of a crash-looping worker) never ran at
    # normal priority.
    assert executor.started_idle == [policy == os.SCHED_IDLE] * 2
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the proxy itself is untouched


async def test_workers_run_on_the_configured_cpus_from_their_start(
    make_executor: Factory, logreg_model: BuiltModel
) -> None:
    own = os.sched_getaffinity(0)
    cpu = max(own)  # on a one-CPU machine, that CPU: the set still applies
    executor = as_process(await make_executor(logreg_model, workers=2, threads=2, cpus=(cpu,)))
    await executor.submit({"X": features(4)}, 4, 5.0)
    for pid in executor.worker_pids:
        # Every thread (onnxruntime's pool and OpenBLAS's included) inherited the set.
        assert {frozenset(os.sched_getaffinity(t.id)) for t in psutil.Process(pid).threads()} == {
            frozenset({cpu})
        }
    assert os.sched_getaffinity(0) == own  # the proxy itself is untouched


async def test_cpus_this_machine_lacks_refuse_the_model_with_the_reason(
    make_executor: Factory, logreg_model: BuiltModel
) -> None:
    missing = max(os.sched_getaffinity(0)) + 1000
    with pytest.raises(ModelLoadError, match=rf"executor.cpus \[{missing}\].*not available here"):
        await make_executor(logreg_model, cpus=(missing,))


async def test_a_body_the_model_refuses_fails_alone_not_its_frame(
    make_body_executor: BodyFactory, lookup_model: BuiltModel
) -> None:
    executor = await make_body_executor(lookup_model, max_wait_ms=200.0, max_batch=8)

    def body(indices: list[int]) -> bytes:
        tensor = {"name": "idx", "shape": [len(indices)], "datatype": "INT64", "data": indices}
        return json.dumps({"inputs": [tensor]}).encode()

    indices = [[1], [100], [2, 3], [7]]
    done = await asyncio.gather(
        *(executor.submit_body(body(i), 10.0) for i in indices), return_exceptions=True
    )
    refused = done[1]
    assert isinstance(refused, Exception) and getattr(refused, "outcome", None) == "invalid"
    for i in (0, 2, 3):
        answer = done[i]
        assert isinstance(answer, BodyAnswer) and not answer.invalid_reason, answer
        (output,) = json.loads(answer.body)["outputs"]
        assert output["data"] == [float(v) for v in indices[i]]
    assert executor.resources().batches == 3  # the three good bodies, each alone
