"""Running shadowproxy in tests: in-process on the test's event loop, or as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client import CollectorRegistry

from shadowproxy.config import config_from_dict
from shadowproxy.runtime import Runtime


def make_config(production_url: str, **overrides: Any) -> dict[str, Any]:
    """A config dict on free loopback ports, with fast shutdown; overrides are merged in."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "production": {"name": "prod", "version": "1.0", "url": production_url},
        "shutdown": {"drain_delay_s": 0, "grace_s": 2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


@contextlib.asynccontextmanager
async def running_proxy(config: dict[str, Any], wait_ready: bool = True) -> AsyncIterator[Runtime]:
    """A Runtime serving on the current loop with a fresh Prometheus registry."""
    runtime = Runtime(config_from_dict(config), registry=CollectorRegistry())
    await runtime.start()
    try:
        if wait_ready:
            await wait_until_ready(runtime)
        yield runtime
    finally:
        await runtime.drain()


async def wait_until_ready(runtime: Runtime, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while runtime.not_ready_reasons():
        if time.monotonic() > deadline:
            raise AssertionError(f"proxy not ready: {runtime.not_ready_reasons()}")
        await asyncio.sleep(0.02)


def metric_value(runtime: Runtime, name: str, **labels: str) -> float:
    value = runtime.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def proxy_process(
    config: dict[str, Any],
    tmp: Path,
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m shadowproxy serve`` as a real process (for signal and exit-code tests).

    Ports must be fixed in ``config`` (use :func:`free_port`). ``env`` is added to this
    process's environment. Output goes to pipes, or with ``log`` to that file: a proxy that
    logs a lot must never block on a pipe nobody reads. The process is killed if the test
    leaves it running.
    """
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with contextlib.ExitStack() as files:
        sink: Any = subprocess.PIPE if log is None else files.enter_context(log.open("wb"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "shadowproxy", "serve", "--config", str(path)],
            stdout=sink,
            stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)


async def wait_http_ready(admin_url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(admin_url + "/healthz/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{admin_url} never became ready")
