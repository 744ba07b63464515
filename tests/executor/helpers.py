"""Helpers of the executor tests: settings, inputs, reference answers, process checks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil
import pytest

from shadowproxy.config.model import Executor, ModelFile
from shadowproxy.errors import ExecutorError
from shadowproxy.executor import Inference, LocalExecutor
from shadowproxy.executor.process import ProcessExecutor
from tests.support.models import BuiltModel

# Short waits and backoffs keep the suite fast; production defaults are seconds.
FAST = Executor(
    workers=1,
    max_wait_ms=2.0,
    restart_backoff_s=0.02,
    restart_window_s=30.0,
    warmup_runs=1,
)

Factory = Callable[..., Coroutine[Any, Any, LocalExecutor]]


def settings(**changes: Any) -> Executor:
    return replace(FAST, **changes)


def model_file(model: BuiltModel) -> ModelFile:
    return ModelFile(path=model.path, sha256=model.sha256)


def features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def direct(model: BuiltModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What onnxruntime itself answers, from the file, without any of our code."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the executors' default, for the same summation order
    session = ort.InferenceSession(
        str(model.path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


async def failure(future: asyncio.Future[Inference]) -> ExecutorError:
    """The ``ExecutorError`` a request failed with (the test fails if it succeeded)."""
    with pytest.raises(ExecutorError) as caught:
        await future
    return caught.value


def as_process(executor: object) -> ProcessExecutor:
    assert isinstance(executor, ProcessExecutor)
    return executor


def running(pid: int) -> bool:
    """Alive: a zombie is dead, only waiting for whoever adopted it to reap it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pids: list[int]) -> bool:
    return not any(running(pid) for pid in pids)
