"""Debian's ``prometheus`` binary as a test fixture: own config, storage and port.

The server scrapes the given static targets every second. Its discovery hands targets to
the scrape loop about five seconds after start, so tests start it first and let the wait
overlap with their own set-up and traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.proxy import free_port


@dataclass(frozen=True)
class PrometheusServer:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]

    @property
    def source(self) -> str:
        """The ``shadowproxy report`` source for this server."""
        return "prometheus+" + self.url

    async def query(self, promql: str) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            async with session.post(self.url + "/api/v1/query", data={"query": promql}) as r:
                answer = await r.json()
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    async def scalar(self, promql: str) -> float | None:
        rows = await self.query(promql)
        return float(rows[0]["value"][1]) if rows else None

    async def wait_until(self, promql: str, expected: float, timeout: float = 20.0) -> None:
        """Poll an instant query until its single value equals ``expected``."""
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = await self.scalar(promql)
            if got == expected:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{promql} is {got} after {timeout} s, expected {expected}")


@contextlib.contextmanager
def prometheus_server(folder: Path, targets: Sequence[str] = ()) -> Iterator[PrometheusServer]:
    """Run ``prometheus`` until the block ends, then stop it (killed if it will not stop)."""
    binary = shutil.which("prometheus")
    assert binary is not None, "the prometheus binary is missing (.ci/system-deps installs it)"
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": "shadowproxy", "static_configs": [{"targets": list(targets)}]}
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_ready(server: PrometheusServer, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process.poll() is None, "prometheus exited at start"
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(server.url + "/-/ready", timeout=1) as answer:
                if answer.status == 200:
                    return
        time.sleep(0.05)
    raise AssertionError(f"prometheus at {server.url} not ready after {timeout} s")
