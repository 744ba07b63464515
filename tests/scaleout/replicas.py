"""Replicas of one shadowproxy config on loopback, the model stubs they call, and their traffic."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiohttp import web

from shadowproxy.compare.reference import build_reference
from shadowproxy.devtools.stub_model import build_app
from tests.support.proxy import make_config

FEATURES = ("f0", "f1", "f2", "f3")
# Production, a faithful retrain and a model trained on other data: the retrain mostly
# agrees, the other flips many labels, so every statistic has something to measure.
PRODUCTION = ((0.8, -0.5, 0.3, 0.1), 0.0)
RETRAIN = ((0.85, -0.45, 0.3, 0.1), 0.05)
SHIFTED = ((0.2, -1.0, 0.8, 0.6), 0.4)
TRUTH = np.array([0.9, -0.6, 0.2, 0.0])


@contextlib.asynccontextmanager
async def stub_model(name: str, weights: Sequence[float], bias: float) -> AsyncIterator[str]:
    """``shadowproxy.devtools.stub_model`` serving on a free loopback port; yields its URL."""
    runner = web.AppRunner(build_app(name, "1", weights, bias), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def dual_stack_port() -> int:
    """A port free on both 127.0.0.1 and ::1, for two replicas behind one name."""
    for _ in range(50):
        with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
            v4.bind(("127.0.0.1", 0))
            port = int(v4.getsockname()[1])
            try:
                v6.bind(("::1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free on both 127.0.0.1 and ::1")


def traffic(n: int, seed: int = 0) -> np.ndarray:
    """Feature rows; the second half shifted, so input drift has something to show."""
    rows = np.random.default_rng(seed).normal(size=(n, len(FEATURES)))
    rows[n // 2 :, 0] += 0.8
    return rows


def reference(folder: Path) -> Path:
    """The input reference of the unshifted traffic distribution."""
    np.save(folder / "train.npy", traffic(2000, seed=1)[:1000])
    path = folder / "reference.json"
    build_reference(folder / "train.npy", list(FEATURES), bins=8).save(path)
    return path


def replica_config(
    production: str, retrain: str, shifted: str, reference_path: Path
) -> dict[str, Any]:
    """The config every replica shares; each adds its own admin port and snapshot file."""
    return make_config(
        production,
        # Generous deadlines and budgets: a shadow dropped or timed out in one replica and
        # not in the other would make the halves differ from the whole for a reason that
        # has nothing to do with merging. The connect deadline too: three replicas, their
        # models and the client share one event loop here, and on a busy machine opening a
        # connection can take longer than the default 100 ms.
        candidates=[
            {"name": "retrain", "version": "2", "url": retrain, "timeout_ms": 10000,
             "connect_timeout_ms": 10000, "max_in_flight": 10000},
            # Sampled from the request id: every replica mirrors the same half.
            {"name": "shifted", "version": "3", "url": shifted, "timeout_ms": 10000,
             "connect_timeout_ms": 10000, "max_in_flight": 10000, "sample_rate": 0.5},
        ],
        compare={"outputs": {"score": "probabilities", "label": "label"}, "seed": 5,
                 "features": list(FEATURES), "reference": str(reference_path)},
        promotion={"min_samples": 100, "gates": [
            {"metric": "label_agreement", "min": 0.9},
            {"metric": "score_psi", "max": 0.25},
            {"metric": "score_wasserstein", "max": 0.1},
            {"metric": "score_ks_pvalue", "min": 0.001},
            {"metric": "latency_p99_ratio", "max": 50},
            {"metric": "error_rate", "max": 0.05},
            {"metric": "accuracy_delta", "min": -0.3},
        ]},
    )  # fmt: skip


def body(row: np.ndarray) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, len(row)], "datatype": "FP64",
                     "data": row.tolist()}]}
    )  # fmt: skip


async def send(session: aiohttp.ClientSession, base: str, request_id: str, row: np.ndarray) -> None:
    """One inference request through a replica, with a request id the client chose."""
    url = f"{base}/v2/models/churn/infer"
    async with session.post(url, data=body(row), headers={"X-Request-Id": request_id}) as r:
        assert r.status == 200, await r.text()
        await r.read()


async def feedback(session: aiohttp.ClientSession, admin: str, request_id: str, label: int) -> int:
    """The ground truth of one request, sent to a replica's admin listener; the status."""
    payload = {"request_id": request_id, "label": label}
    async with session.post(f"{admin}/admin/feedback", json=payload) as r:
        await r.read()
        return r.status


async def bounded(jobs: Sequence[Any], limit: int = 16) -> list[Any]:
    """Await coroutines with at most ``limit`` running at once, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Any) -> Any:
        async with gate:
            return await job

    return await asyncio.gather(*(one(job) for job in jobs))
