"""Faulty local ONNX candidates behind a real ``shadowproxy serve``, under steady load.

The model is a real one; the faults come from the worker's test hooks
(``shadowproxy.executor.faults``), set through ``SHADOWPROXY_TEST_FAULTS`` in the serve
process's environment only: a worker that crashes on every batch, one that leaks memory
on every batch, one that starts helper processes at load. Production must not notice;
crashes, restarts, kills, the switch-off and the helpers must all be counted, in
``/metrics`` and ``/admin/models``, and the proxy must stay ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

from tests.chaos.harness import assert_production_unharmed, side_by_side, steady_traffic
from tests.executor.helpers import gone
from tests.support.load import production
from tests.support.models import N_FEATURES, BuiltModel
from tests.support.served import Samples, Served, all_counted, drops, only, outcomes
from tests.support.servers import Backend
from tests.support.waiting import wait_for

MiB = 1024 * 1024
NAME = "faulty"
LABELS = {"role": "candidate", "model": NAME, "version": "1"}


def model_request(client: int, i: int) -> bytes:
    """A valid V2 request for the test models: two rows of four features."""
    rows = np.random.default_rng([client, i]).normal(size=(2, N_FEATURES)).astype(np.float32)
    return orjson.dumps(
        {"inputs": [{"name": "X", "shape": list(rows.shape), "datatype": "FP32",
                     "data": rows.ravel().tolist()}]}
    )  # fmt: skip


def _candidate(model: BuiltModel, timeout_ms: int, **executor: object) -> dict[str, object]:
    return {
        "name": NAME, "version": "1", "model": model.config(), "timeout_ms": timeout_ms,
        "max_in_flight": 4096, "breaker": {"failures": 1_000_000, "reset_s": 60},
        "executor": {"kind": "process", "workers": 1, "warmup_runs": 1, **executor},
    }  # fmt: skip


def _model(samples: Samples, metric: str) -> float:
    return samples.value(f"shadowproxy_model_{metric}", **LABELS)


@dataclass
class Seen:
    """What a faulty proxy reported once steady traffic through it was over."""

    proxy: Served
    total: int  # client requests sent through it, every one answered by production
    samples: Samples  # /metrics, once every request had its candidate outcome
    model: dict[str, Any]  # the candidate in /admin/models
    log: str


@contextlib.asynccontextmanager
async def under_load(
    backend: Backend, candidate: dict[str, object], tmp_path: Path, **faults: object
) -> AsyncIterator[Seen]:
    """Steady traffic through a proxy whose worker has ``faults``; production unharmed."""
    backend.handler = production
    env = {"SHADOWPROXY_TEST_FAULTS": json.dumps(faults)}
    async with side_by_side(backend.url, [candidate], tmp_path, env=env) as (clean, proxy):
        load = await steady_traffic(clean, proxy, body_for=model_request)
        total = assert_production_unharmed(load)
        samples = await all_counted(proxy, [NAME], total)
        status, body = await proxy.get("/healthz/ready")
        assert status == 200, body  # a faulty candidate never takes the replica out
        model = (await proxy.models())[NAME]
        yield Seen(proxy, total, samples, model, proxy.log_text())


async def test_a_crash_looping_candidate_is_respawned_then_disabled(
    backend: Backend, logreg_model: BuiltModel, tmp_path: Path
) -> None:
    max_restarts = 3
    candidate = _candidate(
        logreg_model,
        # Long enough that requests queued while the worker respawns wait for it.
        timeout_ms=20_000,
        max_batch=1, max_wait_ms=0, max_restarts=max_restarts, restart_backoff_s=0.1,
    )  # fmt: skip
    async with under_load(backend, candidate, tmp_path, crash_on_call=1) as seen:
        samples, model, total = seen.samples, seen.model, seen.total

    # Every worker crashed on its one batch of one request: the first worker and each of
    # its respawns, until the last crash switched the candidate off.
    crashes, restarts = max_restarts, max_restarts - 1
    assert _model(samples, "crashes_total") == crashes
    assert _model(samples, "restarts_total") == restarts
    assert _model(samples, "disabled") == 1 and _model(samples, "workers_alive") == 0
    assert model["disabled"] is True and model["ready"] is False
    assert f"disabled after {crashes} crashes" in model["disabled_reason"]
    assert (model["resources"]["crashes"], model["resources"]["restarts"]) == (crashes, restarts)
    # One request per crash was run and failed; every other one was dropped, with its reason.
    counted = outcomes(samples, NAME)
    assert counted == only(error=crashes, dropped=total - crashes)
    reasons = drops(samples, NAME)
    assert sum(reasons.values()) == total - crashes and reasons["disabled"] > 0, reasons
    assert set(reasons) <= {"disabled", "budget"}, reasons
    assert seen.log.count("worker crashed: exited with code 70") == crashes, seen.log[-3000:]


async def test_a_leaking_candidate_is_killed_at_memory_mb_and_respawned(
    backend: Backend, logreg_model: BuiltModel, tmp_path: Path
) -> None:
    memory_mb = 160
    candidate = _candidate(
        logreg_model, timeout_ms=5000,
        memory_mb=memory_mb, max_restarts=1000, restart_backoff_s=0.05, max_wait_ms=10,
    )  # fmt: skip
    async with under_load(backend, candidate, tmp_path, leak_mb_per_call=16) as seen:
        samples, model, log = seen.samples, seen.model, seen.log

    crashes = _model(samples, "crashes_total")
    assert crashes >= 1, "the leaking worker was never killed"
    # Each kill is followed by a respawn, unless the last one is still under way.
    assert crashes - 1 <= _model(samples, "restarts_total") <= crashes
    assert _model(samples, "disabled") == 0 and model["disabled"] is False
    assert _model(samples, "peak_resident_memory_bytes") > memory_mb * MiB
    # Every crash was a kill for memory (the log, read last, may have seen one more).
    kills = log.count(f"above memory_mb={memory_mb}")
    assert kills == log.count("worker crashed:") and kills >= crashes, log[-3000:]
    # Between kills the model answered; every request has exactly one outcome.
    counted = outcomes(samples, NAME)
    assert counted["ok"] > 0 and counted["invalid"] == 0, counted
    assert counted["dropped"] == sum(drops(samples, NAME).values())


async def test_helper_processes_of_a_candidate_are_counted_and_reaped(
    backend: Backend, logreg_model: BuiltModel, tmp_path: Path
) -> None:
    helpers = 5
    candidate = _candidate(logreg_model, timeout_ms=5000, max_wait_ms=2)
    async with under_load(backend, candidate, tmp_path, spawn_children=helpers) as seen:
        samples, model, total, proxy = seen.samples, seen.model, seen.total, seen.proxy
        # The proxy's process tree: its one worker and the worker's helpers.
        tree = psutil.Process(proxy.proc.pid).children(recursive=True)
        names = [p.name() for p in tree]
        proxy.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proxy.proc.wait, 15)

    assert outcomes(samples, NAME) == only(ok=total)
    assert _model(samples, "child_processes") == helpers
    assert model["resources"]["child_processes"] == helpers
    assert names.count("sleep") == helpers and len(names) == helpers + 1, names
    assert code == 0
    # Stopping the proxy stopped the worker and every helper it had started.
    await wait_for(lambda: gone([p.pid for p in tree]), what="the worker and its helpers gone")
