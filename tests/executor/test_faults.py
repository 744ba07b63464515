"""Workers that misbehave like bad candidate models: crash, hang, leak, spawn helpers.

The faults are injected with ``SHADOWPROXY_TEST_FAULTS`` (see ``shadowproxy.executor.faults``),
read only by workers from the environment they are spawned with; clearing the variable
makes the next respawned worker healthy.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import psutil
import pytest

from shadowproxy.errors import ExecutorError, ModelError
from shadowproxy.executor import create_executor
from shadowproxy.executor.faults import CRASH_EXIT_CODE, ENV_VAR
from tests.executor.helpers import (
    Factory,
    as_process,
    failure,
    features,
    gone,
    model_file,
    settings,
)
from tests.support.cpu import busy_core
from tests.support.models import BuiltModel
from tests.support.waiting import wait_for


def faults(monkeypatch: pytest.MonkeyPatch, **values: object) -> None:
    monkeypatch.setenv(ENV_VAR, json.dumps(values))


async def test_crash_fails_the_batch_counts_and_respawns(
    make_executor: Factory, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults(monkeypatch, crash_on_call=2)
    executor = as_process(await make_executor(logreg_model))
    monkeypatch.delenv(ENV_VAR)  # the respawned worker is healthy
    (first_pid,) = executor.worker_pids
    await executor.submit({"X": features(1)}, 1, 5.0)
    error = await failure(executor.submit({"X": features(1)}, 1, 5.0))
    assert error.outcome == "error"
    assert f"exited with code {CRASH_EXIT_CODE}" in str(error)
    assert "crash_on_call=2" in str(error)  # the worker's last stderr lines
    await wait_for(lambda: executor.resources().restarts == 1, what="a respawn")
    answer = await executor.submit({"X": features(3)}, 3, 5.0)
    assert answer.outputs["label"].shape == (3,)
    figures = executor.resources()
    assert (figures.crashes, figures.restarts, figures.workers_alive) == (1, 1, 1)
    assert not figures.disabled and executor.ready
    assert executor.worker_pids != [first_pid] and gone([first_pid])


async def test_repeated_crashes_disable_the_executor(
    make_executor: Factory, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults(monkeypatch, crash_on_call=1)
    executor = as_process(await make_executor(logreg_model, workers=2, max_restarts=3))
    pids = executor.worker_pids
    outcomes = []
    while not executor.disabled:
        try:
            await executor.submit({"X": features(1)}, 1, 5.0)
        except ExecutorError as exc:
            outcomes.append(exc.outcome)
        if not executor.disabled:
            await wait_for(
                lambda: executor.disabled or executor.ready, what="a live worker or disabled"
            )
    assert outcomes and set(outcomes) <= {"error", "dropped"}
    error = await failure(executor.submit({"X": features(1)}, 1, 5.0))
    assert error.outcome == "dropped" and "disabled after 3 crashes" in str(error)
    figures = executor.resources()
    assert figures.disabled and figures.crashes == 3
    assert not executor.ready
    # A disabled model costs nothing more: every worker, crashed or healthy, is gone.
    await wait_for(lambda: not executor.worker_pids, what="workers stopped")
    assert gone(pids) and executor.resources().workers_alive == 0


async def test_hang_times_out_and_the_worker_is_killed_and_respawned(
    make_executor: Factory, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults(monkeypatch, hang_on_call=1)
    executor = as_process(await make_executor(logreg_model))
    monkeypatch.delenv(ENV_VAR)
    (hung_pid,) = executor.worker_pids
    error = await failure(executor.submit({"X": features(1)}, 1, timeout_s=0.05))
    assert error.outcome == "timeout"
    assert psutil.pid_exists(hung_pid)  # still hung; killed after max(1 s, 10 × timeout)
    await wait_for(lambda: executor.resources().crashes == 1, timeout=5.0, what="the kill")
    assert gone([hung_pid])
    assert executor.last_crash is not None and executor.last_crash.startswith("hung")
    await wait_for(lambda: executor.ready, what="a respawn")
    answer = await executor.submit({"X": features(1)}, 1, 5.0)
    assert answer.outputs["label"].shape == (1,)
    figures = executor.resources()
    assert (figures.timeouts, figures.restarts) == (1, 1)


async def test_a_worker_starved_of_cpu_is_not_taken_for_a_hung_one(
    make_executor: Factory, slow_model: BuiltModel
) -> None:
    """Under SCHED_IDLE, a worker on a core something else keeps busy gets next to no CPU:
    its requests miss their deadline, dropped as starved rather than counted as the model's
    timeouts, and it is not killed as hung while it waits for a CPU."""
    cpu = max(os.sched_getaffinity(0))
    executor = as_process(await make_executor(slow_model, cpus=(cpu,), warmup_runs=0))
    (pid,) = executor.worker_pids
    with busy_core(cpu):
        await asyncio.sleep(0.3)  # a sample of the worker's run-queue wait before the send
        error = await failure(executor.submit({"x": features(1)}, 1, timeout_s=0.05))
        assert (error.outcome, error.reason) == ("dropped", "starved"), str(error)
        assert "ms for a CPU" in str(error)
        assert (executor.resources().timeouts, executor.starved) == (0, 1)
        assert executor.resources().cpu_wait_seconds >= 0.03  # of the 50 ms deadline
        # Hung would be 1 s past the deadline; it has waited for a CPU all along.
        await asyncio.sleep(1.6)
        assert executor.resources().crashes == 0 and executor.worker_pids == [pid], (
            executor.last_crash
        )
    # With the core free again, it finishes the batch and serves on: the same process.
    answer = await executor.submit({"x": features(1)}, 1, timeout_s=30.0)
    assert answer.outputs["score"].shape == (1, 1)
    assert executor.worker_pids == [pid] and executor.resources().crashes == 0


async def test_an_answer_says_how_long_its_worker_waited_for_a_cpu(
    make_executor: Factory, slow_model: BuiltModel
) -> None:
    """Kept off its core for 300 ms, then given it: the answer comes, and says how much of
    its time was the core's (the worker's own schedstat), not the model's."""
    cpu = max(os.sched_getaffinity(0))
    executor = as_process(await make_executor(slow_model, cpus=(cpu,), warmup_runs=0))
    alone = await executor.submit({"x": features(1)}, 1, timeout_s=10.0)
    assert alone.cpu_wait_s < 0.05, alone  # a core of its own: next to no wait
    with busy_core(cpu):
        await asyncio.sleep(0.2)
        answer = executor.submit({"x": features(1)}, 1, timeout_s=10.0)
        await asyncio.sleep(0.3)
    inference = await answer
    assert inference.cpu_wait_s >= 0.2, inference
    # Less the wait, the round trip is about what the model took alone.
    round_trip = inference.compute_s + inference.ipc_s
    assert round_trip - inference.cpu_wait_s < alone.compute_s + alone.ipc_s + 0.1, inference


async def test_a_worker_that_waited_for_a_cpu_and_then_hangs_times_out(
    make_executor: Factory, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept off its core for its first 200 ms, then given it, the worker fills 200 MiB and
    hangs: at the deadline it sleeps, so the miss is the model's, whatever it waited
    before."""
    faults(monkeypatch, hang_on_call=1, leak_mb_per_call=200)
    cpu = max(os.sched_getaffinity(0))
    executor = as_process(
        await make_executor(logreg_model, cpus=(cpu,), warmup_runs=0, memory_mb=1024)
    )
    monkeypatch.delenv(ENV_VAR)
    with busy_core(cpu):
        await asyncio.sleep(0.3)
        answer = executor.submit({"X": features(1)}, 1, timeout_s=0.6)
        await asyncio.sleep(0.2)
    error = await failure(answer)
    assert (error.outcome, error.reason) == ("timeout", None), str(error)
    assert (executor.resources().timeouts, executor.starved) == (1, 0)


async def test_a_worker_above_memory_mb_is_killed(
    make_executor: Factory, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults(monkeypatch, leak_mb_per_call=40)
    executor = as_process(await make_executor(logreg_model, memory_mb=250))
    monkeypatch.delenv(ENV_VAR)
    (leaky_pid,) = executor.worker_pids
    errors: list[ExecutorError] = []
    for _ in range(40):
        try:
            await executor.submit({"X": features(1)}, 1, 5.0)
        except ExecutorError as exc:
            errors.append(exc)
        if executor.resources().crashes:
            break
        await asyncio.sleep(0.05)
    await wait_for(lambda: executor.resources().crashes == 1, what="the memory kill")
    assert executor.last_crash is not None and executor.last_crash.startswith("memory")
    assert "above memory_mb=250" in executor.last_crash
    assert all(e.outcome == "error" for e in errors)
    assert gone([leaky_pid])
    assert executor.resources().peak_rss_bytes > 250 * 1024 * 1024
    await wait_for(lambda: executor.ready, what="a respawn")
    assert (await executor.submit({"X": features(1)}, 1, 5.0)).outputs["label"].shape == (1,)


async def test_helper_processes_of_a_worker_are_counted_and_reaped(
    make_executor: Factory, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults(monkeypatch, spawn_children=14)
    executor = as_process(await make_executor(logreg_model))
    (pid,) = executor.worker_pids
    helpers = psutil.Process(pid).children(recursive=True)
    assert len(helpers) == 14
    await wait_for(lambda: executor.resources().child_processes == 14, what="a sample")
    figures = executor.resources()
    # Memory and threads of the helpers count against the model too.
    assert figures.threads == sum(p.num_threads() for p in [psutil.Process(pid), *helpers])
    await executor.close()
    assert not psutil.pid_exists(pid)  # the worker is reaped by the proxy itself
    # Orphaned helpers are reaped by init, a moment after they were killed.
    await wait_for(lambda: gone([h.pid for h in helpers]), what="the helpers killed")


async def test_helpers_of_a_crashed_worker_do_not_outlive_it(
    make_executor: Factory, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults(monkeypatch, spawn_children=3, crash_on_call=1)
    executor = as_process(await make_executor(logreg_model))
    monkeypatch.delenv(ENV_VAR)
    (pid,) = executor.worker_pids
    helpers = [h.pid for h in psutil.Process(pid).children(recursive=True)]
    assert len(helpers) == 3
    assert (await failure(executor.submit({"X": features(1)}, 1, 5.0))).outcome == "error"
    await wait_for(lambda: gone([pid, *helpers]), what="the helpers reaped")


async def test_a_worker_that_dies_at_load_fails_start(
    make_executor: Factory, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults(monkeypatch, crash_at_start=True)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ModelError, match=f"exited with code {CRASH_EXIT_CODE}") as caught:
        await make_executor(logreg_model, workers=2)
    assert "crash_at_start" in str(caught.value)
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before


async def test_an_allocation_burst_fails_inside_the_worker(
    make_executor: Factory, logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Faster than any sampler: 1.5 GiB at once, against a data limit of 2 × 250 + 256 MiB.
    faults(monkeypatch, leak_mb_per_call=1536)
    executor = as_process(await make_executor(logreg_model, memory_mb=250))
    error = await failure(executor.submit({"X": features(1)}, 1, 5.0))
    assert error.outcome == "error" and "MemoryError" in str(error)
    (pid,) = executor.worker_pids
    assert psutil.Process(pid).memory_info().rss < 250 * 1024 * 1024
    assert executor.resources().crashes == 0


async def test_production_keeps_restarting_through_a_crash_burst_and_recovers(
    logreg_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Disabled, production's model would leave the replica unready for good while its
    # liveness stays green: it keeps respawning with backoff instead.
    faults(monkeypatch, crash_on_call=1)
    executor = as_process(
        create_executor(
            "prod", model_file(logreg_model),
            settings(max_restarts=2, restart_backoff_s=0.05, restart_window_s=60),
            where="production.model", serves_production=True,
        )
    )  # fmt: skip
    await executor.start()
    try:
        for _ in range(4):  # twice max_restarts within the window
            error = await failure(executor.submit({"X": features(1)}, 1, 5.0))
            assert error.outcome == "error"
            await wait_for(lambda: executor.ready, timeout=10.0, what="a respawn")
        assert not executor.disabled and executor.resources().crashes == 4
        monkeypatch.delenv(ENV_VAR)  # the cause goes away: the next worker is healthy
        await failure(executor.submit({"X": features(1)}, 1, 5.0))  # the last faulty one
        await wait_for(lambda: executor.ready, timeout=10.0, what="a healthy respawn")
        answer = await executor.submit({"X": features(2)}, 2, 5.0)
        assert answer.outputs["label"].shape == (2,)
    finally:
        await executor.close(timeout_s=1.0)


# The deadline is 0.4 s; the kill comes max(1 s, 2 × timeout) past it for production, and
# max(1 s, 10 × timeout) for a candidate.
@pytest.mark.parametrize(
    ("serves_production", "earliest", "latest"), [(True, 1.3, 2.4), (False, 4.3, 6.0)]
)
async def test_a_hung_worker_is_killed_sooner_when_clients_wait_on_it(
    logreg_model: BuiltModel,
    monkeypatch: pytest.MonkeyPatch,
    serves_production: bool,
    earliest: float,
    latest: float,
) -> None:
    faults(monkeypatch, hang_on_call=1)
    executor = as_process(
        create_executor(
            "m", model_file(logreg_model), settings(), where="production.model",
            serves_production=serves_production,
        )
    )  # fmt: skip
    await executor.start()
    try:
        started = time.monotonic()
        error = await failure(executor.submit({"X": features(1)}, 1, timeout_s=0.4))
        assert error.outcome == "timeout"
        await wait_for(lambda: executor.resources().crashes == 1, timeout=6.0, what="the kill")
        assert earliest < time.monotonic() - started < latest
    finally:
        await executor.close(timeout_s=1.0)
