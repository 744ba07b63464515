"""Shared fixtures: real loopback servers, started and stopped per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

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
