"""A real ``shadowproxy serve`` process, seen from outside: URLs, metrics, models, memory."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy.pairing.record import OUTCOMES
from tests.support.proxy import free_port, proxy_process


class Samples:
    """One scrape of ``/metrics``: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, sample.labels, float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples ``name`` whose labels include ``labels``; 0 when none."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def series(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """The samples ``name`` matching ``labels``, by the value of ``label``."""
        found: dict[str, float] = {}
        for sample, have, value in self.samples:
            if sample == name and all(have.get(k) == v for k, v in labels.items()):
                found[have[label]] = found.get(have[label], 0.0) + value
        return found


@dataclass
class Served:
    """A running ``shadowproxy serve`` and the log file it writes."""

    proc: subprocess.Popen[bytes]
    traffic_port: int
    admin_port: int
    log: Path

    @property
    def traffic_url(self) -> str:
        return f"http://127.0.0.1:{self.traffic_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def get(self, path: str) -> tuple[int, bytes]:
        """``GET`` on the admin listener: status and body."""
        async with aiohttp.ClientSession() as session:
            async with session.get(self.admin_url + path) as resp:
                return resp.status, await resp.read()

    async def metrics(self) -> Samples:
        status, body = await self.get("/metrics")
        assert status == 200, status
        return Samples(body.decode())

    async def models(self) -> dict[str, dict[str, Any]]:
        """``/admin/models`` by model name."""
        async with aiohttp.ClientSession() as session:
            async with session.get(self.admin_url + "/admin/models") as resp:
                assert resp.status == 200, resp.status
                listed = await resp.json()
        return {model["name"]: model for model in listed["models"]}

    def peak_rss_bytes(self) -> int:
        """The highest resident memory the proxy process has had (``VmHWM``)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024


@contextlib.asynccontextmanager
async def serving(
    config: dict[str, Any],
    folder: Path,
    *,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 20.0,
) -> AsyncIterator[Served]:
    """``shadowproxy serve`` with ``config`` on free ports, once it is ready.

    ``folder`` holds its config and its log (several proxies need several folders). The
    process is killed when the block ends, unless the test stopped it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ports = {"listen": free_port(), "admin": free_port()}
    config = {**config, **{key: {**config[key], "port": port} for key, port in ports.items()}}
    log = folder / "serve.log"
    with proxy_process(config, folder, env=env, log=log) as proc:
        served = Served(proc, ports["listen"], ports["admin"], log)
        await wait_ready(served, ready_timeout_s)
        yield served


async def wait_ready(served: Served, timeout_s: float) -> None:
    """Until ``/healthz/ready`` answers 200; fails if serve exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            raise AssertionError(
                f"serve exited with {served.proc.returncode}:\n{served.log_text()[-3000:]}"
            )
        with contextlib.suppress(aiohttp.ClientError):
            if (await served.get("/healthz/ready"))[0] == 200:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"serve never became ready:\n{served.log_text()[-3000:]}")


# -- counted outcomes of candidates ------------------------------------------------------


def outcomes(samples: Samples, model: str) -> dict[str, int]:
    """A candidate's ``shadowproxy_requests_total`` by outcome."""
    counted = samples.series("shadowproxy_requests_total", "outcome", role="candidate", model=model)
    return {outcome: int(counted.get(outcome, 0)) for outcome in OUTCOMES}


def only(**counts: int) -> dict[str, int]:
    """Outcome counts: the ones given, zero for every other outcome."""
    return {outcome: counts.get(outcome, 0) for outcome in OUTCOMES}


def drops(samples: Samples, model: str) -> dict[str, int]:
    """A candidate's ``shadowproxy_shadow_dropped_total`` by reason (non-zero only)."""
    counted = samples.series("shadowproxy_shadow_dropped_total", "reason", model=model)
    return {reason: int(n) for reason, n in counted.items() if n}


async def all_counted(
    served: Served, models: list[str], total: int, timeout_s: float = 10.0
) -> Samples:
    """Wait until every candidate in ``models`` has ``total`` outcomes; the last scrape."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await served.metrics()
        counted = {model: sum(outcomes(samples, model).values()) for model in models}
        if all(n == total for n in counted.values()):
            return samples
        assert all(n <= total for n in counted.values()), (total, counted)
        if time.monotonic() > deadline:
            raise AssertionError(f"outcomes counted {counted}, {total} requests sent")
        await asyncio.sleep(0.05)
