"""The readiness probe against a production that accepts connections but never answers."""

from __future__ import annotations

import asyncio

import pytest

from shadowproxy import runtime
from tests.support.proxy import make_config, running_proxy
from tests.support.servers import RawServer
from tests.support.waiting import wait_for


async def test_probes_that_time_out_do_not_pile_up_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    open_now = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        open_now += 1
        try:
            while await reader.read(65536):  # read the probe, never answer, until closed
                pass
        finally:
            open_now -= 1

    production = await RawServer(silent).start()
    monkeypatch.setattr(runtime, "READY_PROBE_INTERVAL_S", 0.05)
    config = make_config(production.url, production={"timeout_ms": 100})
    try:
        async with running_proxy(config, wait_ready=False) as rt:
            await wait_for(lambda: production.connections >= 5, what="five probes")
            assert rt.not_ready_reasons() == ["production has not answered yet"]
            await asyncio.sleep(0.05)
            # Each probe that timed out closed its connection: at most the current one is open.
            assert open_now <= 1, open_now
    finally:
        await production.stop()
