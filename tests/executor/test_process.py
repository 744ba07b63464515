"""The process executor against real workers: answers, batching, isolation, accounting."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from onnx import TensorProto, helper

from shadowproxy.errors import ExecutorError, ModelError
from shadowproxy.executor import Inference
from shadowproxy.executor.faults import ENV_VAR
from shadowproxy.executor.worker import MODULE
from tests.executor.helpers import (
    Factory,
    as_process,
    direct,
    failure,
    features,
    gone,
    model_file,
)
from tests.support import models
from tests.support.models import BuiltModel
from tests.support.waiting import wait_for


def assert_outputs(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], exact: bool = True
) -> None:
    """Equal outputs; ``exact`` False allows float rounding of a different batch size."""
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype
        if exact or want[name].dtype.kind not in "f":
            np.testing.assert_array_equal(got[name], want[name])
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.both_loops
@pytest.mark.parametrize("max_batch", [1, 32])
@pytest.mark.parametrize("which", ["logreg", "gbt"])
async def test_answers_equal_onnxruntime(
    make_executor: Factory,
    logreg_model: BuiltModel,
    gbt_model: BuiltModel,
    which: str,
    max_batch: int,
) -> None:
    model = logreg_model if which == "logreg" else gbt_model
    executor = await make_executor(model, max_batch=max_batch)
    assert as_process(executor).batching is (max_batch > 1)
    x = features(50, seed=1)
    answer = await executor.submit({"X": x}, 50, timeout_s=5.0)
    assert_outputs(answer.outputs, direct(model, {"X": x}))
    assert answer.compute_s > 0 and answer.cpu_s >= 0 and answer.ipc_s >= 0
    # One row at a time, concurrently: batched together or not, each gets its own row.
    answers = await asyncio.gather(
        *(executor.submit({"X": x[i : i + 1]}, 1, timeout_s=5.0) for i in range(50))
    )
    stacked = {k: np.concatenate([a.outputs[k] for a in answers]) for k in answer.outputs}
    # Kernels for different row counts may round differently: labels exact, scores close.
    assert_outputs(stacked, direct(model, {"X": x}), exact=False)


async def test_concurrent_requests_share_batches_and_get_their_own_rows(
    make_executor: Factory, logreg_model: BuiltModel
) -> None:
    executor = await make_executor(logreg_model, max_batch=16, max_wait_ms=20.0)
    sizes = [1, 3, 2, 5, 1, 4, 2, 1, 3, 2] * 3
    inputs = [features(n, seed=i) for i, n in enumerate(sizes)]
    answers = await asyncio.gather(
        *(executor.submit({"X": x}, len(x), timeout_s=5.0) for x in inputs)
    )
    for x, answer in zip(inputs, answers, strict=True):
        assert_outputs(answer.outputs, direct(logreg_model, {"X": x}), exact=False)
        assert answer.outputs["label"].shape == (len(x),)
    figures = executor.resources()
    assert figures.requests == len(sizes) and figures.rows == sum(sizes)
    assert figures.batches < len(sizes)  # rows of several requests ran together
    assert figures.batches >= sum(sizes) // 16
    # The CPU time of a batch is shared by rows: shares add up to what the worker reported.
    assert sum(a.cpu_s for a in answers) == pytest.approx(
        as_process(executor).batch_cpu_seconds, rel=1e-6
    )


async def test_max_batch_one_runs_every_request_alone(
    make_executor: Factory, logreg_model: BuiltModel
) -> None:
    executor = await make_executor(logreg_model, max_batch=1)
    await asyncio.gather(*(executor.submit({"X": features(2)}, 2, 5.0) for _ in range(10)))
    figures = executor.resources()
    assert figures.batches == figures.requests == 10


async def test_model_without_a_batch_dimension_is_not_batched(
    make_executor: Factory, tmp_models: object
) -> None:
    from pathlib import Path

    assert isinstance(tmp_models, Path)
    fixed = models.identity_model(tmp_models, TensorProto.FLOAT, "fixed.onnx", shape=(2, 3))
    executor = await make_executor(fixed, max_batch=32, max_wait_ms=10.0)
    assert not as_process(executor).batching
    xs = [np.full((2, 3), i, dtype=np.float32) for i in range(6)]
    answers = await asyncio.gather(*(executor.submit({"x": x}, 2, 5.0) for x in xs))
    for x, answer in zip(xs, answers, strict=True):
        np.testing.assert_array_equal(answer.outputs["y"], x)
    assert executor.resources().batches == 6


async def test_every_datatype_crosses_to_the_worker_and_back(
    make_executor: Factory, tmp_models: object
) -> None:
    from pathlib import Path

    assert isinstance(tmp_models, Path)
    types = {
        "BOOL": TensorProto.BOOL,
        "UINT8": TensorProto.UINT8,
        "UINT16": TensorProto.UINT16,
        "UINT32": TensorProto.UINT32,
        "UINT64": TensorProto.UINT64,
        "INT8": TensorProto.INT8,
        "INT16": TensorProto.INT16,
        "INT32": TensorProto.INT32,
        "INT64": TensorProto.INT64,
        "FP16": TensorProto.FLOAT16,
        "FP32": TensorProto.FLOAT,
        "FP64": TensorProto.DOUBLE,
        "BYTES": TensorProto.STRING,
    }
    graph = helper.make_graph(
        [helper.make_node("Identity", [f"x_{n}"], [f"y_{n}"]) for n in types],
        "identities",
        [helper.make_tensor_value_info(f"x_{n}", t, ["N", 2]) for n, t in types.items()],
        [helper.make_tensor_value_info(f"y_{n}", t, ["N", 2]) for n, t in types.items()],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx_model.ir_version = 8
    path = tmp_models / "identities.onnx"
    path.write_bytes(onnx_model.SerializeToString())
    built = BuiltModel(path, models.sha256_of(path))
    executor = await make_executor(built, max_wait_ms=10.0)
    rng = np.random.default_rng(3)

    def inputs(rows: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name in types:
            if name == "BYTES":
                out["x_BYTES"] = np.array([[f"r{i}é", f"s{i}"] for i in range(rows)], dtype=object)
            else:
                from shadowproxy.tensors import numpy_dtype

                dtype = numpy_dtype(name)
                values = rng.integers(0, 100, size=(rows, 2))
                out[f"x_{name}"] = values.astype(dtype)
        return out

    sent = [inputs(n) for n in (1, 3, 2)]
    answers = await asyncio.gather(*(executor.submit(x, len(x["x_FP32"]), 5.0) for x in sent))
    for x, answer in zip(sent, answers, strict=True):
        for name in types:
            got, want = answer.outputs[f"y_{name}"], x[f"x_{name}"]
            assert got.shape == want.shape
            assert got.tolist() == want.tolist()
            if name != "BYTES":
                assert got.dtype == want.dtype


async def test_inputs_the_model_refuses_are_invalid(
    make_executor: Factory, logreg_model: BuiltModel
) -> None:
    executor = await make_executor(logreg_model)
    cases = [
        ({"X": features(2).astype(np.float64)}, 2, "FP64"),
        ({"X": features(2)}, 3, "not 3 rows"),
        ({"Y": features(2)}, 2, "missing"),
        ({"X": features(2)}, 0, "at least one row"),
    ]
    for inputs, rows, text in cases:
        error = await failure(executor.submit(inputs, rows, 5.0))
        assert error.outcome == "invalid" and text in str(error)
    # Shape errors past the first axis are onnxruntime's to find, in the worker.
    error = await failure(executor.submit({"X": np.zeros((2, 5), np.float32)}, 2, 5.0))
    assert error.outcome == "invalid" and "model failed" in str(error)
    # The worker survived all of it.
    answer = await executor.submit({"X": features(1)}, 1, 5.0)
    assert answer.outputs["label"].shape == (1,)
    assert executor.resources().crashes == 0


async def test_workers_are_fresh_niced_interpreters(
    make_executor: Factory, logreg_model: BuiltModel
) -> None:
    executor = await make_executor(logreg_model, workers=2, nice=7)
    pids = as_process(executor).worker_pids
    assert len(pids) == 2
    for pid in pids:
        worker = psutil.Process(pid)
        assert worker.ppid() == os.getpid()
        # Spawned, not forked: a fork would carry the test runner's command line.
        assert worker.cmdline()[1:3] == ["-m", MODULE]
        assert worker.nice() == min(19, os.nice(0) + 7)
        # Thread caps are in the worker's environment from its first instruction.
        assert worker.environ()["OMP_NUM_THREADS"] == "1"


async def test_thread_figures_follow_the_threads_setting(
    make_executor: Factory, gbt_model: BuiltModel
) -> None:
    counts = {}
    for threads in (1, 4):
        executor = await make_executor(gbt_model, name=f"t{threads}", threads=threads)
        await executor.submit({"X": features(64)}, 64, 5.0)
        (pid,) = as_process(executor).worker_pids
        await wait_for(lambda e=executor: e.resources().threads > 0, what="a sample")
        figures = executor.resources()
        assert figures.threads == psutil.Process(pid).num_threads()
        counts[threads] = figures.threads
    # onnxruntime's intra-op pool has threads - 1 helpers besides the calling thread; the
    # BLAS pool numpy starts is capped by the same setting and may add its own.
    assert counts[4] - counts[1] >= 3


async def test_cpu_and_memory_figures_agree_with_the_os(
    make_executor: Factory, slow_model: BuiltModel
) -> None:
    executor = await make_executor(slow_model, workers=2)
    await asyncio.gather(*(executor.submit({"x": features(1)}, 1, 10.0) for _ in range(12)))
    pids = as_process(executor).worker_pids
    # Idle workers do not change; once a sample was taken after the work, figures match.
    await asyncio.sleep(0.6)
    figures = executor.resources()
    workers = [psutil.Process(pid) for pid in pids]
    os_cpu = sum(sum(w.cpu_times()[:4]) for w in workers)
    os_rss = sum(w.memory_info().rss for w in workers)
    assert figures.cpu_seconds == pytest.approx(os_cpu, abs=0.03)
    assert figures.rss_bytes == pytest.approx(os_rss, rel=0.05)
    assert figures.peak_rss_bytes >= max(w.memory_info().rss for w in workers) * 0.95
    assert figures.child_processes == 0 and figures.workers_alive == 2
    # The batches themselves, as timed inside the worker, fit within what the OS counted.
    assert 0 < as_process(executor).batch_cpu_seconds <= figures.cpu_seconds
    assert 0 < figures.cpu_seconds_per_request * figures.requests <= figures.cpu_seconds
    assert figures.requests == 12 and figures.compute_seconds > 0
    assert figures.as_dict()["requests"] == 12


async def test_queue_beyond_queue_rows_is_dropped(
    make_executor: Factory, logreg_model: BuiltModel
) -> None:
    executor = await make_executor(logreg_model, queue_rows=6)
    # Submitted in one go: nothing has reached the worker yet, all of it waits.
    futures = [executor.submit({"X": features(2)}, 2, 5.0) for _ in range(5)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, Inference) for r in results[:3])
    for r in results[3:]:
        assert isinstance(r, ExecutorError) and r.outcome == "dropped"
        assert "queue_rows=6" in str(r)


async def test_slow_model_times_out_and_the_worker_carries_on(
    make_executor: Factory, slow_model: BuiltModel
) -> None:
    executor = await make_executor(slow_model)
    error = await failure(executor.submit({"x": features(1)}, 1, timeout_s=0.002))
    assert error.outcome == "timeout"
    # Behind a long run, a short deadline also expires while waiting in the queue.
    first = executor.submit({"x": features(1)}, 1, timeout_s=5.0)
    queued = executor.submit({"x": features(1)}, 1, timeout_s=0.001)
    assert (await failure(queued)).outcome == "timeout"
    await first
    figures = executor.resources()
    assert figures.timeouts == 2 and figures.crashes == 0
    answer = await executor.submit({"x": features(1)}, 1, timeout_s=5.0)
    assert answer.outputs["score"].shape == (1, 1)


async def test_close_drops_pending_and_leaves_no_process(
    make_executor: Factory, slow_model: BuiltModel
) -> None:
    executor = await make_executor(slow_model, workers=2, max_batch=1)
    pids = as_process(executor).worker_pids
    pending = [executor.submit({"x": features(1)}, 1, 10.0) for _ in range(6)]
    await asyncio.sleep(0.005)  # some are running, some wait
    await executor.close()
    for future in pending:
        error = await failure(future)
        assert error.outcome == "dropped"
    assert not any(psutil.pid_exists(pid) for pid in pids)  # reaped, not even zombies
    assert (await failure(executor.submit({"x": features(1)}, 1, 1.0))).outcome == "dropped"
    assert not executor.ready
    await executor.close()  # idempotent


async def test_a_model_that_fails_its_checks_is_refused_in_the_proxy(
    make_executor: Factory, logreg_model: BuiltModel
) -> None:
    from dataclasses import replace

    wrong = replace(model_file(logreg_model), sha256="0" * 64)
    with pytest.raises(ModelError, match="does not match its pinned sha256"):
        await make_executor(wrong)


ORPHAN_SCRIPT = """
import asyncio, sys
import numpy as np, uvloop
from shadowproxy.config.model import Executor, ModelFile
from shadowproxy.executor.process import ProcessExecutor

async def main():
    spec = ModelFile(path=sys.argv[1], sha256=sys.argv[2])
    executor = ProcessExecutor("orphan", spec, Executor(warmup_runs=0))
    await executor.start()
    pending = executor.submit({"X": np.zeros((1, 4), np.float32)}, 1, 60.0)
    await asyncio.sleep(0.2)  # the worker is now stuck in the model
    print(*executor.worker_pids, flush=True)
    await asyncio.sleep(60)

uvloop.run(main())
"""


async def test_workers_die_with_the_proxy(
    logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hung worker never reads its socket, so only the parent-death signal can stop it.
    monkeypatch.setenv(ENV_VAR, json.dumps({"hang_on_call": 1}))
    proxy = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ORPHAN_SCRIPT,
        str(logreg_model.path),
        logreg_model.sha256,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proxy.stdout is not None
        line = await asyncio.wait_for(proxy.stdout.readline(), timeout=30.0)
        pids = [int(p) for p in line.split()]
        assert pids and not gone(pids)
    finally:
        proxy.kill()  # SIGKILL: no chance to clean up, only the kernel can
        await proxy.wait()
    await wait_for(lambda: gone(pids), what="the orphaned worker killed")


async def test_close_while_starting_stops_the_half_started_workers(
    logreg_model: BuiltModel,
) -> None:
    from shadowproxy.executor import create_executor
    from tests.executor.helpers import settings

    executor = create_executor("c", model_file(logreg_model), settings(workers=2))
    before = {p.pid for p in psutil.Process().children()}
    starting = asyncio.ensure_future(executor.start())
    await wait_for(lambda: bool(as_process(executor).worker_pids), what="a spawn")
    await executor.close()
    error = await failure(starting)
    assert error.outcome == "dropped" and "closed while starting" in str(error)
    assert {p.pid for p in psutil.Process().children()} <= before
    assert not executor.ready


async def test_large_requests_cross_both_ways(
    make_executor: Factory, logreg_model: BuiltModel
) -> None:
    executor = await make_executor(logreg_model, max_batch=4, queue_rows=50_000)
    x = features(50_000, seed=5)  # 800 kB in, 1.2 MB out: several socket reads each way
    answer = await executor.submit({"X": x}, len(x), 10.0)
    assert_outputs(answer.outputs, direct(logreg_model, {"X": x}))
    assert all(a.flags.writeable for a in answer.outputs.values())
