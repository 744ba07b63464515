"""Fixtures of the hardening suite: counting backends and a real proxy process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import uvloop

from tests.hardening.backend import CountingBackend
from tests.hardening.harness import attacked, hardening_config
from tests.support.served import Served


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    # Attackers, bystander and backends share the test's loop: uvloop, like the proxy,
    # keeps them from being the bottleneck of a flood on a 2-core machine.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def production() -> AsyncIterator[CountingBackend]:
    backend = await CountingBackend("production").start()
    yield backend
    await backend.stop()


@pytest.fixture
async def candidate() -> AsyncIterator[CountingBackend]:
    backend = await CountingBackend("candidate").start()
    yield backend
    await backend.stop()


@pytest.fixture
async def proxy(
    production: CountingBackend, candidate: CountingBackend, tmp_path: Path
) -> AsyncIterator[Served]:
    """``shadowproxy serve`` with short client deadlines, production and one mirror."""
    async with attacked(hardening_config(production, candidate), tmp_path) as served:
        yield served
