"""Executor tests: real worker processes and onnxruntime, on uvloop like the proxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from shadowproxy.config.model import ModelFile
from shadowproxy.executor import LocalExecutor, create_executor
from tests.executor.helpers import Factory, model_file, settings
from tests.support.models import BuiltModel


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_loops: run on the asyncio loop as well as uvloop")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    # The proxy runs on uvloop; a few tests also check the standard loop.
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "uvloop": uvloop.new_event_loop
    }
    if item.get_closest_marker("both_loops") is not None:
        factories["asyncio"] = asyncio.new_event_loop
    return factories


@pytest.fixture
async def make_executor() -> AsyncIterator[Factory]:
    """Start executors; every one is closed after the test, whatever happened."""
    started: list[LocalExecutor] = []

    async def make(
        model: BuiltModel | ModelFile, name: str = "candidate", **changes: Any
    ) -> LocalExecutor:
        spec = model if isinstance(model, ModelFile) else model_file(model)
        executor = create_executor(name, spec, settings(**changes), where="candidates[0].model")
        started.append(executor)
        await executor.start()
        return executor

    yield make
    await asyncio.gather(*(e.close(timeout_s=1.0) for e in started))


@pytest.fixture
def tmp_models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder
