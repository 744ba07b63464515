"""The thread executor: same API and batching, runs inside the proxy process."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from shadowproxy.errors import ExecutorError
from shadowproxy.executor import create_executor
from shadowproxy.executor.thread import ThreadExecutor
from tests.executor.helpers import Factory, direct, failure, features, model_file, settings
from tests.support.models import BuiltModel


@pytest.mark.both_loops
@pytest.mark.parametrize("which", ["logreg", "gbt"])
async def test_answers_equal_onnxruntime_and_rows_are_batched(
    make_executor: Factory, logreg_model: BuiltModel, gbt_model: BuiltModel, which: str
) -> None:
    model = logreg_model if which == "logreg" else gbt_model
    executor = await make_executor(model, kind="thread", max_wait_ms=20.0)
    assert isinstance(executor, ThreadExecutor) and executor.ready
    x = features(40, seed=2)
    answer = await executor.submit({"X": x}, 40, 5.0)
    for name, want in direct(model, {"X": x}).items():
        np.testing.assert_array_equal(answer.outputs[name], want)
    sizes = [1, 2, 3, 1, 2] * 4
    inputs = [features(n, seed=10 + i) for i, n in enumerate(sizes)]
    answers = await asyncio.gather(*(executor.submit({"X": x}, len(x), 5.0) for x in inputs))
    for x, got in zip(inputs, answers, strict=True):
        want = direct(model, {"X": x})
        np.testing.assert_array_equal(got.outputs["label"], want["label"])
        np.testing.assert_allclose(got.outputs["probabilities"], want["probabilities"], atol=1e-6)
    figures = executor.resources()
    assert figures.requests == 1 + len(sizes)
    assert figures.batches < figures.requests
    assert figures.cpu_seconds > 0 and figures.cpu_seconds_per_request > 0
    assert figures.rss_bytes > 0 and figures.threads >= 2 and figures.workers_alive == 1


async def test_runs_happen_on_the_executors_own_threads(
    make_executor: Factory, logreg_model: BuiltModel
) -> None:
    executor = await make_executor(logreg_model, name="prod", kind="thread", workers=2)
    await asyncio.gather(*(executor.submit({"X": features(1)}, 1, 5.0) for _ in range(4)))
    names = {t.name for t in threading.enumerate()}
    assert any(name.startswith("shadowproxy-prod") for name in names)


async def test_deadline_queue_limit_and_close(
    make_executor: Factory, slow_model: BuiltModel
) -> None:
    executor = await make_executor(slow_model, kind="thread", queue_rows=3)
    assert (await failure(executor.submit({"x": features(1)}, 1, 0.002))).outcome == "timeout"
    running = executor.submit({"x": features(1)}, 1, 5.0)
    queued = [executor.submit({"x": features(1)}, 1, 5.0) for _ in range(2)]
    overflow = await failure(executor.submit({"x": features(1)}, 1, 5.0))
    assert overflow.outcome == "dropped" and "queue_rows=3" in str(overflow)
    await asyncio.sleep(0)  # the first request is handed to the thread
    await executor.close()
    for future in [running, *queued]:
        assert (await failure(future)).outcome == "dropped"
    assert executor.resources().timeouts == 1
    assert (await failure(executor.submit({"x": features(1)}, 1, 1.0))).outcome == "dropped"


async def test_a_run_the_model_refuses_is_invalid(
    make_executor: Factory, logreg_model: BuiltModel
) -> None:
    executor = await make_executor(logreg_model, kind="thread")
    error = await failure(executor.submit({"X": np.zeros((2, 7), np.float32)}, 2, 5.0))
    assert error.outcome == "invalid"
    assert (await executor.submit({"X": features(2)}, 2, 5.0)).outputs["label"].shape == (2,)


async def test_submit_before_start_is_dropped(logreg_model: BuiltModel) -> None:
    for kind in ("thread", "process"):
        executor = create_executor("c", model_file(logreg_model), settings(kind=kind))
        error = await failure(executor.submit({"X": features(1)}, 1, 1.0))
        assert error.outcome == "dropped" and "not started" in str(error)
        assert not executor.ready
        await executor.close()


@pytest.mark.parametrize("kind", ["thread", "process"])
async def test_a_request_the_model_refuses_fails_alone_not_its_batch(
    make_executor: Factory, lookup_model: BuiltModel, kind: str
) -> None:
    # Index 100 is outside the model's table: onnxruntime refuses the stacked batch. Only
    # that request may fail; its batch mates run again alone and get their answers.
    executor = await make_executor(lookup_model, kind=kind, max_wait_ms=200.0, max_batch=8)
    indices = [[1], [100, 2], [3, 4], [100], [5]]
    futures = [executor.submit({"idx": np.array(i, np.int64)}, len(i), 10.0) for i in indices]
    done = await asyncio.gather(*futures, return_exceptions=True)
    for idx, got in zip(indices, done, strict=True):
        if 100 in idx:
            assert isinstance(got, ExecutorError) and got.outcome == "invalid", got
        else:
            assert not isinstance(got, BaseException), got
            np.testing.assert_array_equal(got.outputs["score"][:, 0], np.array(idx, np.float32))
    figures = executor.resources()
    # The refused batch of five, then each request alone: answered or refused, once each.
    assert figures.requests == 3 and figures.batches == 3
    # The executor batches again afterwards.
    again = await asyncio.gather(
        *(executor.submit({"idx": np.array([i], np.int64)}, 1, 10.0) for i in range(4))
    )
    assert [float(a.outputs["score"][0, 0]) for a in again] == [0.0, 1.0, 2.0, 3.0]
    assert executor.resources().batches == 4
