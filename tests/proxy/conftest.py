"""Fixtures for the proxy tests: a proxy in front of the ``backend`` fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shadowproxy.runtime import Runtime
from tests.support.proxy import make_config, running_proxy
from tests.support.servers import Backend


@pytest.fixture
async def proxy(backend: Backend) -> AsyncIterator[Runtime]:
    """A proxy with default limits whose production is ``backend``."""
    async with running_proxy(make_config(backend.url)) as runtime:
        yield runtime
