"""A candidate can never slow, break or change production.

Each faulty candidate runs in its own process (``tests.support.faulty_servers``). In one
test, the same requests go first through a proxy without candidates, then through one
mirroring every request to the faulty candidate (its breaker held closed, so every request
is tried). Production's answers must be the same bytes, its median latency must not grow,
and the candidate's outcome must be counted for every request, within the candidate's
own deadline. An audit hook records every outgoing connection the test process makes,
so a followed redirect (or any other surprise destination) shows.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from shadowproxy.pairing.record import OUTCOMES, PairRecord
from tests.shadow.helpers import median_ms, timed_post
from tests.support.faulty_servers import faulty_servers
from tests.support.proxy import free_port, make_config, metric_value, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import settle, wait_for

TIMEOUT_MS = 100
SLOW_DELAY_S = 2 * TIMEOUT_MS / 1000
# Candidates that do not time out get a generous deadline, so that a busy machine cannot
# turn their outcome into "timeout"; slow and hang test the deadline itself.
TIMEOUTS_MS = {"slow": TIMEOUT_MS, "hang": TIMEOUT_MS}
OTHER_TIMEOUT_MS = 2000
# A body with no declared length must be read up to the cap before it can be called too
# large; what stops that cost from recurring is the circuit breaker, so for such a
# candidate the breaker runs as configured by default: a few invalid answers, then drops.
REAL_BREAKER = {"endless": 5}
# Loop lag on a busy machine delays when a deadline is acted on, not whether it is.
TIMER_SLACK_S = 0.6  # a deadline not honoured would last seconds: this still tells them apart
N = 200
WARMUP = 20

CASES = [
    ("slow", "timeout"),
    ("hang", "timeout"),
    ("down", "error"),
    ("reset", "error"),
    ("garbage", "invalid"),
    ("huge", "invalid"),
    ("endless", "invalid"),
    ("redirect", "error"),
    ("status500", "error"),
]

# -- every outgoing connection of this process, while a test records them ---------------

_connects: list[tuple[Any, ...]] | None = None
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _connects is not None and event == "socket.connect":
        address = args[1]
        _connects.append(tuple(address) if isinstance(address, (tuple, list)) else (address,))


def _record_connects() -> list[tuple[Any, ...]]:
    global _connects, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    _connects = []
    return _connects


def _stop_recording() -> None:
    global _connects
    _connects = None


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty() -> Iterator[dict[str, int]]:
    with faulty_servers(SLOW_DELAY_S) as ports:
        yield {**ports, "down": free_port()}  # nothing listens on "down"


async def _production(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(
        body=b'{"model": "prod", "echo": ' + body + b', "pad": "' + b"p" * 512 + b'"}',
        content_type="application/json",
        headers={"X-Model-Version": "1.0"},
    )


def _candidate_outcomes(rt: Any) -> dict[str, float]:
    return {
        o: metric_value(
            rt, "shadowproxy_requests_total",
            role="candidate", model="faulty", version="1", outcome=o,
        )
        for o in OUTCOMES
    }  # fmt: skip


def _body(i: int) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "data": [i, i + 1]}]})


def _comparable(headers: Any) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in headers.items() if k.lower() != "date"]


@pytest.mark.parametrize(("kind", "outcome"), CASES, ids=[c[0] for c in CASES])
async def test_faulty_candidate_changes_nothing_for_production(
    kind: str, outcome: str, faulty: dict[str, int], backend: Backend
) -> None:
    backend.handler = _production
    candidate_port = faulty[kind]
    timeout_ms = TIMEOUTS_MS.get(kind, OTHER_TIMEOUT_MS)
    clean_config = make_config(backend.url)
    shadowed = make_config(
        backend.url,
        candidates=[{
            "name": "faulty", "version": "1", "url": f"http://127.0.0.1:{candidate_port}",
            "timeout_ms": timeout_ms, "connect_timeout_ms": timeout_ms, "max_in_flight": 1000,
            "breaker": {"failures": REAL_BREAKER.get(kind, 1_000_000), "reset_s": 60},
        }],
    )  # fmt: skip
    records: list[PairRecord] = []
    async with (
        running_proxy(clean_config) as rt_clean,
        running_proxy(shadowed) as rt,
        aiohttp.ClientSession() as s_clean,
        aiohttp.ClientSession() as s_shadow,
    ):
        rt.stream.subscribe(records.append)
        allowed = {
            ("127.0.0.1", port)
            for port in (backend.port, candidate_port, rt_clean.traffic_port, rt.traffic_port)
        }
        path = "/v2/models/churn/infer"
        url_clean = f"http://127.0.0.1:{rt_clean.traffic_port}{path}"
        url_shadow = f"http://127.0.0.1:{rt.traffic_port}{path}"
        connects = _record_connects()
        try:
            # Production through the proxy without candidates first, then through the one
            # mirroring every request: the shadow work of the second run (timers, streams)
            # cannot spill into the first.
            clean: list[tuple[int, bytes, list[tuple[str, str]]]] = []
            clean_ms: list[float] = []
            shadow_ms: list[float] = []
            for i in range(WARMUP + N):
                elapsed, status, data, head = await timed_post(
                    s_clean, url_clean, _body(i), {"X-Request-Id": f"{kind}-{i}"}
                )
                assert status == 200
                clean.append((status, data, _comparable(head)))
                if i >= WARMUP:
                    clean_ms.append(elapsed)
            for i in range(WARMUP + N):
                elapsed, status, data, head = await timed_post(
                    s_shadow, url_shadow, _body(i), {"X-Request-Id": f"{kind}-{i}"}
                )
                assert status == 200, f"request {i}: production status changed to {status}"
                assert data == clean[i][1], f"request {i}: production body changed"
                assert _comparable(head) == clean[i][2], f"request {i}: headers changed"
                if i >= WARMUP:
                    shadow_ms.append(elapsed)
            total = WARMUP + N
            await wait_for(
                lambda: sum(_candidate_outcomes(rt).values()) >= total,
                timeout=10,
                what=f"{total} candidate outcomes",
            )
            await wait_for(lambda: len(records) >= total, what=f"{total} pair records")
            await settle(lambda: (len(records), sum(_candidate_outcomes(rt).values())))
        finally:
            _stop_recording()

        # Production's latency is that of a proxy without candidates.
        clean_median, shadow_median = median_ms(clean_ms), median_ms(shadow_ms)
        tolerance = max(1.5, 0.5 * clean_median)
        assert shadow_median <= clean_median + tolerance, (
            f"{kind}: production median {shadow_median:.2f} ms with the candidate vs "
            f"{clean_median:.2f} ms without (tolerance {tolerance:.2f} ms)"
        )

        # Every sampled request has exactly the expected outcome, none other; with the real
        # breaker, the calls after it opened are dropped with reason breaker_open.
        outcomes = _candidate_outcomes(rt)
        tried = int(outcomes[outcome])
        if kind in REAL_BREAKER:
            # Calls already in flight when the breaker opens still finish: a few more than
            # the threshold may be tried, never a significant share.
            assert REAL_BREAKER[kind] <= tried <= REAL_BREAKER[kind] + 10, outcomes
        else:
            assert tried == total, outcomes
        expected = {o: 0 for o in OUTCOMES}
        expected[outcome] = tried
        expected["dropped"] = total - tried
        assert outcomes == expected, outcomes
        assert metric_value(
            rt, "shadowproxy_shadow_dropped_total", model="faulty", version="1",
            reason="breaker_open",
        ) == total - tried  # fmt: skip
        assert len(records) == total
        assert len({r.request_id for r in records}) == total
        for record in records:
            shadow = record.shadows["faulty"]
            if shadow.outcome == "dropped":
                assert shadow.detail == "breaker_open", shadow.detail
                continue
            assert shadow.outcome == outcome, (record.request_id, shadow.outcome, shadow.detail)
            assert record.production is not None and record.production.status == 200
            # The deadline is the candidate's own timeout_ms, and it is honoured.
            assert shadow.latency_s < timeout_ms / 1000 + TIMER_SLACK_S, (kind, shadow.latency_s)
            if outcome == "timeout":
                assert shadow.latency_s >= timeout_ms / 1000 * 0.98, shadow.latency_s
                assert shadow.status is None or kind == "slow"
        if kind == "redirect":
            assert {r.shadows["faulty"].status for r in records} == {302}
        if kind == "status500":
            assert {r.shadows["faulty"].status for r in records} == {500}

        # Nothing connected anywhere but the proxies, production and this candidate.
        assert ("127.0.0.1", candidate_port) in {c[:2] for c in connects}  # the hook sees
        unexpected = {c for c in connects if c[:2] not in allowed}
        assert not unexpected, f"unexpected outgoing connections: {unexpected}"
        assert all(c[0] == "127.0.0.1" for c in connects)
        assert metric_value(
            rt, "shadowproxy_requests_total",
            role="production", model="prod", version="1.0", outcome="ok",
        ) == total  # fmt: skip


async def test_production_does_not_wait_for_a_hanging_candidate_with_a_long_timeout(
    faulty: dict[str, int], backend: Backend
) -> None:
    """A candidate allowed 2 s (far longer than production takes) is still not waited for."""
    config = make_config(
        backend.url,
        candidates=[{
            "name": "faulty", "version": "1", "url": f"http://127.0.0.1:{faulty['hang']}",
            "timeout_ms": 2000,
        }],
    )  # fmt: skip
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/m/infer"
        times = []
        for _ in range(20):
            elapsed, status, _, _ = await timed_post(session, url, b'{"x": 1}')
            assert status == 200
            times.append(elapsed)
        assert max(times) < 0.5, times
        assert metric_value(rt, "shadowproxy_in_flight", role="candidate", model="faulty") == 20
