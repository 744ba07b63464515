"""Shared fixtures: real loopback servers, started and stopped per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import models
from tests.support.servers import Backend


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    server = await Backend().start()
    yield server
    await server.stop()


@pytest.fixture
async def candidate_backend() -> AsyncIterator[Backend]:
    server = await Backend().start()
    yield server
    await server.stop()


# -- real ONNX models, built once per session -------------------------------------------


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def logreg_model(model_dir: Path) -> models.BuiltModel:
    return models.logistic_regression(model_dir)


@pytest.fixture(scope="session")
def gbt_model(model_dir: Path) -> models.BuiltModel:
    return models.gradient_boosting(model_dir)


@pytest.fixture(scope="session")
def lookup_model(model_dir: Path) -> models.BuiltModel:
    return models.lookup_model(model_dir)


@pytest.fixture(scope="session")
def slow_model(model_dir: Path) -> models.BuiltModel:
    return models.slow_matmul_chain(model_dir, depth=100)
