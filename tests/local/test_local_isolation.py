"""A local candidate that hangs, crashes, leaks, spawns processes or is slow changes
nothing for production.

The same requests go first through a proxy without candidates, then through one that
mirrors every request to a local ONNX candidate with a fault. Production's answers must be
the same bytes and its median latency must not grow; the candidate's outcome is counted
for every request.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from shadowproxy.pairing.record import OUTCOMES, PairRecord
from tests.local.test_local_candidate import v2_request
from tests.shadow.helpers import median_ms, timed_post
from tests.support.models import BuiltModel
from tests.support.proxy import make_config, metric_value, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import wait_for

N = 60
WARMUP = 10
# fault hooks of the worker (test-only, read from its environment) and the outcomes each
# must produce; "slow" is a real model that takes longer than the deadline.
CASES = {
    "hang": ({"hang_on_call": 1}, {"timeout", "dropped", "error"}),
    "crash": ({"crash_on_call": 1}, {"error", "dropped"}),
    "leak": ({"leak_mb_per_call": 64}, {"ok", "error", "dropped", "timeout"}),
    "spawn": ({"spawn_children": 14}, {"ok"}),
    "slow": ({}, {"timeout", "dropped"}),
}


def _outcomes(rt: object) -> dict[str, float]:
    return {
        o: metric_value(
            rt,  # type: ignore[arg-type]
            "shadowproxy_requests_total",
            role="candidate", model="faulty", version="1", outcome=o,
        )
        for o in OUTCOMES
    }  # fmt: skip


@pytest.mark.parametrize("kind", list(CASES))
async def test_a_faulty_local_candidate_changes_nothing_for_production(
    kind: str,
    backend: Backend,
    logreg_model: BuiltModel,
    slow_model: BuiltModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    faults, allowed = CASES[kind]
    if faults:
        monkeypatch.setenv("SHADOWPROXY_TEST_FAULTS", json.dumps(faults))
    model = slow_model if kind == "slow" else logreg_model
    body = v2_request(name="x" if kind == "slow" else "X")
    shadowed = make_config(
        backend.url,
        candidates=[{
            "name": "faulty", "version": "1", "model": model.config(),
            # the slow model takes about 20 ms a call, far past a 5 ms deadline
            "timeout_ms": {"slow": 5, "hang": 50}.get(kind, 2000),
            "max_in_flight": 1000,
            "breaker": {"failures": 1_000_000, "reset_s": 60},
            "executor": {"kind": "process", "warmup_runs": 0, "memory_mb": 300,
                         "max_restarts": 3, "restart_backoff_s": 0.05, "max_wait_ms": 0},
        }],
    )  # fmt: skip
    records: list[PairRecord] = []
    async with (
        running_proxy(make_config(backend.url)) as clean,
        running_proxy(shadowed) as rt,
        aiohttp.ClientSession() as session,
    ):
        rt.stream.subscribe(records.append)
        clean_ms: list[float] = []
        shadow_ms: list[float] = []
        answers: list[bytes] = []
        path = "/v2/models/prod/infer"
        for i in range(WARMUP + N):
            elapsed, status, data, _ = await timed_post(
                session, f"http://127.0.0.1:{clean.traffic_port}{path}", body
            )
            assert status == 200
            answers.append(data)
            if i >= WARMUP:
                clean_ms.append(elapsed)
        for i in range(WARMUP + N):
            elapsed, status, data, _ = await timed_post(
                session, f"http://127.0.0.1:{rt.traffic_port}{path}", body
            )
            assert status == 200, f"request {i}: production status changed to {status}"
            assert data == answers[i], f"request {i}: production body changed"
            if i >= WARMUP:
                shadow_ms.append(elapsed)
        total = WARMUP + N
        await wait_for(
            lambda: sum(_outcomes(rt).values()) >= total, timeout=15, what="every outcome"
        )
        await wait_for(lambda: len(records) >= total, what="every pair record")
        clean_median, shadow_median = median_ms(clean_ms), median_ms(shadow_ms)
        tolerance = max(1.5, 0.5 * clean_median)
        assert shadow_median <= clean_median + tolerance, (kind, clean_median, shadow_median)
        seen = {o for o, n in _outcomes(rt).items() if n}
        assert seen <= allowed, (kind, _outcomes(rt))
        if kind == "spawn":
            await wait_for(
                lambda: metric_value(
                    rt, "shadowproxy_model_child_processes",
                    role="candidate", model="faulty", version="1",
                ) == 14,
                what="the 14 helper processes counted",
            )  # fmt: skip
        if kind in ("crash", "hang", "leak"):
            # A hung worker is killed once its batch is far past the deadline.
            await wait_for(
                lambda: metric_value(
                    rt, "shadowproxy_model_crashes_total",
                    role="candidate", model="faulty", version="1",
                ) >= 1,
                timeout=10,
                what="the faulty worker killed and counted",
            )  # fmt: skip
