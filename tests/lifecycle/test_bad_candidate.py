"""A bad candidate model at start: ``serve`` refuses it (exit 2) or disables it and serves.

The rule (docs/operations.md): what the model checks find before anything listens (a file
that is not the pinned one, a pickle, an operator outside the allowlist...) stops ``serve``
with exit 2, as ``validate`` would. A model that passes them but cannot be run (onnxruntime
has no kernel for it, its worker dies or runs out of memory while loading or warming up) is
the candidate's problem, not the proxy's: the candidate is disabled and reported, and
production serves as if it were not configured. (A file that does not match its pin is
covered by ``tests/test_cli.py``.)
"""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import models
from tests.support.load import SteadyLoad, answered_by_production, production
from tests.support.proxy import free_port, make_config, proxy_process
from tests.support.served import (
    Served,
    all_counted,
    drops,
    only,
    outcomes,
    serving,
    wait_ready,
)
from tests.support.servers import Backend

NAME = "bad"


def _pickle(folder: Path) -> models.BuiltModel:
    path = folder / "model.onnx"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    return models.BuiltModel(path, models.sha256_of(path))


def _candidate(model: models.BuiltModel, **executor: Any) -> dict[str, Any]:
    return {
        "name": NAME, "version": "1", "model": model.config(),
        "executor": {"warmup_runs": 1, **executor},
    }  # fmt: skip


STATIC: dict[str, tuple[Callable[[Path], models.BuiltModel], str]] = {
    "pickle": (_pickle, "pickle"),
    "operator outside the allowlist": (models.custom_op_model, "com.example"),
}


@pytest.mark.parametrize("case", list(STATIC))
async def test_a_candidate_failing_its_checks_stops_serve_with_exit_2(
    case: str, backend: Backend, tmp_path: Path
) -> None:
    build, cause = STATIC[case]
    config = make_config(
        backend.url,
        listen={"port": free_port()},
        admin={"port": free_port()},
        candidates=[_candidate(build(tmp_path))],
    )
    with proxy_process(config, tmp_path) as proc:
        code = await asyncio.to_thread(proc.wait, 30)
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
    assert code == 2, stderr
    assert stderr.startswith("candidates[0].model: "), stderr
    assert cause in stderr
    # Refused before anything listened: production was never even probed.
    assert "serving traffic" not in stderr and not backend.seen


LOAD_FAILURES: dict[str, tuple[Callable[[Path], models.BuiltModel], dict[str, Any], str]] = {
    "no onnxruntime kernel": (models.missing_kernel_model, {}, "NOT_IMPLEMENTED"),
    "no onnxruntime kernel, thread executor": (
        models.missing_kernel_model, {"kind": "thread"}, "NOT_IMPLEMENTED",
    ),
    "worker dies while loading": (models.logistic_regression, {}, "crash_at_start"),
    "out of memory while warming up": (
        models.memory_hungry_model, {"memory_mb": 100}, "Failed to allocate memory",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LOAD_FAILURES))
async def test_a_candidate_that_cannot_run_is_disabled_while_production_serves(
    case: str, backend: Backend, tmp_path: Path
) -> None:
    build, executor, cause = LOAD_FAILURES[case]
    backend.handler = production
    config = make_config(backend.url, candidates=[_candidate(build(tmp_path), **executor)])
    # Only the serve process gets the worker fault.
    faults = {"crash_at_start": True} if cause == "crash_at_start" else {}
    env = {"SHADOWPROXY_TEST_FAULTS": json.dumps(faults)}
    async with serving(config, tmp_path, env=env) as served:  # ready: 200
        load = SteadyLoad({"proxy": served.traffic_url}, clients=2, check=answered_by_production)
        await load.run_for(0.5)
        total = len(load.answers)
        samples = await all_counted(served, [NAME], total)
        ready, _ = await served.get("/healthz/ready")
        model = (await served.models())[NAME]
        log = served.log_text()

    assert total > 0 and not load.failures("proxy")
    assert ready == 200
    assert model["disabled"] is True and model["ready"] is False
    reason = model["disabled_reason"]
    assert reason.startswith(f"executor '{NAME}' disabled: it failed to start: "), reason
    assert "candidates[0].model" in reason and cause in reason, reason
    assert reason in log
    labels = {"role": "candidate", "model": NAME, "version": "1"}
    assert samples.value("shadowproxy_model_disabled", **labels) == 1
    # A process worker that gave up while loading counts as a crash; threads cannot crash.
    crashes = 0 if executor.get("kind") == "thread" else 1
    assert samples.value("shadowproxy_model_crashes_total", **labels) == crashes
    assert outcomes(samples, NAME) == only(dropped=total)
    assert drops(samples, NAME) == {"disabled": total}


async def test_a_candidate_that_never_warms_up_holds_nothing_back(
    backend: Backend, tmp_path: Path
) -> None:
    backend.handler = production
    timeout_s = 3.0
    candidate = _candidate(models.logistic_regression(tmp_path), start_timeout_s=timeout_s)
    ports = {"listen": {"port": free_port()}, "admin": {"port": free_port()}}
    config = make_config(backend.url, candidates=[candidate], **ports)
    env = {"SHADOWPROXY_TEST_FAULTS": json.dumps({"hang_at_start": True})}
    log = tmp_path / "serve.log"
    with proxy_process(config, tmp_path, env=env, log=log) as proc:
        served = Served(proc, ports["listen"]["port"], ports["admin"]["port"], log)
        started = time.monotonic()
        # Production serves while the candidate is still loading ...
        while not await _answers(served):
            assert time.monotonic() - started < timeout_s, "production not served in time"
            await asyncio.sleep(0.05)
        load = SteadyLoad({"proxy": served.traffic_url}, clients=2, check=answered_by_production)
        await load.run_for(0.5)
        early = time.monotonic() - started
        status, body = await served.get("/healthz/ready")
        # ... and the replica says it is not ready yet ...
        assert status == 503 and b"local models loading" in body, body
        # ... until the start deadline disables the candidate.
        await wait_ready(served, timeout_s + 15)
        samples = await all_counted(served, [NAME], len(load.answers) + 1)
        model = (await served.models())[NAME]
    assert early < timeout_s, early
    assert load.answers and not load.failures("proxy")
    assert model["disabled"] is True
    assert "not ready within executor.start_timeout_s (3 s)" in model["disabled_reason"]
    assert drops(samples, NAME) == {"starting": len(load.answers) + 1}


async def _answers(served: Served) -> bool:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(served.traffic_url, data=b"{}") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False
