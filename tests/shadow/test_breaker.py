"""The circuit breaker: the state machine on its own, then a dead candidate end to end."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.runtime import Runtime
from shadowproxy.shadow.breaker import BreakerState, CircuitBreaker, Permit
from tests.shadow.helpers import PortBackend, client_requests
from tests.support.proxy import free_port, make_config, metric_value, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import wait_for

# -- state machine ----------------------------------------------------------------------


def _permit(breaker: CircuitBreaker, now: float) -> Permit:
    permit = breaker.allow(now)
    assert permit is not None
    return permit


def _fail(breaker: CircuitBreaker, times: int, now: float) -> None:
    for _ in range(times):
        breaker.record(_permit(breaker, now), False, now)


def test_starts_closed_and_allows_everything() -> None:
    breaker = CircuitBreaker(failures=3, reset_s=1.0)
    assert breaker.state is BreakerState.CLOSED
    assert all(breaker.allow(t) is not None for t in range(100))


def test_opens_after_n_consecutive_failures() -> None:
    breaker = CircuitBreaker(failures=3, reset_s=1.0)
    _fail(breaker, 2, now=10.0)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(_permit(breaker, 10.0), False, 10.0)
    assert breaker.state is BreakerState.OPEN
    assert breaker.times_opened == 1
    assert breaker.allow(10.0) is None
    assert breaker.allow(10.999) is None


@pytest.mark.parametrize("failures", [1, 2, 5])
def test_opens_exactly_at_the_threshold(failures: int) -> None:
    breaker = CircuitBreaker(failures=failures, reset_s=1.0)
    _fail(breaker, failures - 1, now=0.0)
    assert breaker.state is BreakerState.CLOSED
    _fail(breaker, 1, now=0.0)
    assert breaker.state is BreakerState.OPEN


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failures=3, reset_s=1.0)
    _fail(breaker, 2, now=0.0)
    breaker.record(_permit(breaker, 0.0), True, 0.0)
    assert breaker.consecutive_failures == 0
    _fail(breaker, 2, now=0.0)
    assert breaker.state is BreakerState.CLOSED
    _fail(breaker, 1, now=0.0)
    assert breaker.state is BreakerState.OPEN


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker = CircuitBreaker(failures=1, reset_s=1.0)
    _fail(breaker, 1, now=5.0)
    assert breaker.allow(5.5) is None
    probe = breaker.allow(6.0)  # reset_s elapsed: the probe
    assert probe is not None and probe.probe
    assert breaker.state is BreakerState.HALF_OPEN
    # Everything else waits for the probe's result, however long it takes.
    assert breaker.allow(6.0) is None
    assert breaker.allow(7.5) is None
    assert breaker.allow(100.0) is None


def test_probe_success_closes() -> None:
    breaker = CircuitBreaker(failures=2, reset_s=1.0)
    _fail(breaker, 2, now=0.0)
    breaker.record(_permit(breaker, 1.0), True, 1.1)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert all(breaker.allow(1.2) is not None for _ in range(10))
    # Closed again means the full threshold applies again, not a single failure.
    _fail(breaker, 1, now=1.3)
    assert breaker.state is BreakerState.CLOSED


def test_probe_failure_reopens_for_another_reset_period() -> None:
    breaker = CircuitBreaker(failures=2, reset_s=1.0)
    _fail(breaker, 2, now=0.0)
    breaker.record(_permit(breaker, 1.0), False, 1.5)
    assert breaker.state is BreakerState.OPEN
    assert breaker.times_opened == 2
    # Open for reset_s counted from the failed probe, not from the first opening.
    assert breaker.allow(2.0) is None
    assert breaker.allow(2.49) is None
    assert breaker.allow(2.5) is not None
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow(2.5) is None


def test_a_call_begun_before_the_breaker_opened_cannot_close_it() -> None:
    # A slow call that succeeds after its faster siblings opened the breaker says nothing
    # about the target now: the breaker stays open for reset_s, then probes.
    breaker = CircuitBreaker(failures=1, reset_s=10.0)
    slow = _permit(breaker, 0.0)
    _fail(breaker, 1, now=0.1)
    breaker.record(slow, True, 0.4)
    assert breaker.state is BreakerState.OPEN
    assert breaker.allow(0.5) is None
    # Nor, once half-open, can it stand in for the probe's answer.
    probe = _permit(breaker, 10.1)
    breaker.record(slow, True, 10.2)
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allow(10.2) is None
    breaker.record(probe, True, 10.3)
    assert breaker.state is BreakerState.CLOSED


def test_a_stale_failure_is_not_counted_again_after_recovery() -> None:
    breaker = CircuitBreaker(failures=2, reset_s=1.0)
    stale = [_permit(breaker, 0.0) for _ in range(3)]
    _fail(breaker, 2, now=0.0)
    breaker.record(_permit(breaker, 1.0), True, 1.0)  # the probe closes it
    for permit in stale:
        breaker.record(permit, False, 1.1)
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 0


def test_a_released_probe_lets_the_next_call_probe() -> None:
    # A probe that ended without a verdict (an input the model refused, a shutdown) must
    # not leave the breaker waiting for ever.
    breaker = CircuitBreaker(failures=1, reset_s=1.0)
    _fail(breaker, 1, now=0.0)
    probe = _permit(breaker, 1.0)
    assert breaker.allow(1.0) is None
    breaker.release(probe)
    assert breaker.state is BreakerState.HALF_OPEN
    second = _permit(breaker, 1.0)
    assert second.probe and breaker.allow(1.0) is None
    breaker.record(second, True, 1.1)
    assert breaker.state is BreakerState.CLOSED


def test_releasing_a_closed_breakers_call_changes_nothing() -> None:
    breaker = CircuitBreaker(failures=2, reset_s=1.0)
    _fail(breaker, 1, now=0.0)
    breaker.release(_permit(breaker, 0.0))
    assert breaker.consecutive_failures == 1 and breaker.state is BreakerState.CLOSED


# -- end to end -------------------------------------------------------------------------

BREAKER = {"failures": 3, "reset_s": 0.3}


def _dropped(rt: Runtime, reason: str) -> float:
    return metric_value(
        rt, "shadowproxy_shadow_dropped_total", model="dead", version="1", reason=reason
    )


def _outcome(rt: Runtime, outcome: str) -> float:
    return metric_value(
        rt, "shadowproxy_requests_total",
        role="candidate", model="dead", version="1", outcome=outcome,
    )  # fmt: skip


def _gauge(rt: Runtime) -> float:
    return metric_value(rt, "shadowproxy_breaker_open", model="dead", version="1")


async def test_dead_candidate_opens_the_breaker_then_probes_and_recovers(backend: Backend) -> None:
    port = free_port()  # nothing listens here until the candidate "comes back"
    config = make_config(
        backend.url,
        candidates=[{
            "name": "dead", "version": "1", "url": f"http://127.0.0.1:{port}",
            "timeout_ms": 500, "breaker": BREAKER,
        }],
    )  # fmt: skip
    revived = PortBackend()
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/m/infer"

        async def post() -> None:
            async with session.post(url, data=b'{"x": 1}') as resp:
                assert resp.status == 200
                assert (await resp.json())["outputs"][0]["data"] == [0.25, 0.75]

        assert _gauge(rt) == 0
        for i in range(1, 4):
            await post()
            await wait_for(lambda: _outcome(rt, "error") == i, what=f"error #{i}")  # noqa: B023
        assert _gauge(rt) == 1
        assert _dropped(rt, "breaker_open") == 0

        # Open: further requests are not sent at all, only counted.
        for _ in range(4):
            await post()
        assert _dropped(rt, "breaker_open") == 4
        assert _outcome(rt, "dropped") == 4
        assert _outcome(rt, "error") == 3

        # After reset_s one probe goes out; the candidate is still dead, so it re-opens.
        await asyncio.sleep(BREAKER["reset_s"] + 0.05)
        await post()
        await wait_for(lambda: _outcome(rt, "error") == 4, what="the failed probe")
        assert _gauge(rt) == 1
        await post()
        assert _dropped(rt, "breaker_open") == 5

        # The candidate comes back; the next probe succeeds and closes the breaker.
        await revived.start_on(port)
        try:
            await asyncio.sleep(BREAKER["reset_s"] + 0.05)
            await post()
            await wait_for(lambda: _outcome(rt, "ok") == 1, what="the successful probe")
            assert _gauge(rt) == 0
            assert len(client_requests(revived)) == 1
            for _ in range(5):
                await post()
            await wait_for(lambda: len(revived.seen) == 6, what="mirroring to resume")
            await wait_for(lambda: _outcome(rt, "ok") == 6, what="the ok outcomes")
            assert _dropped(rt, "breaker_open") == 5
            assert _gauge(rt) == 0
        finally:
            await revived.stop()
        # Production never saw an error through all of it.
        assert metric_value(
            rt, "shadowproxy_requests_total",
            role="production", model="prod", version="1.0", outcome="ok",
        ) == 15  # fmt: skip


async def test_half_open_sends_exactly_one_probe_under_concurrency(backend: Backend) -> None:
    port = free_port()
    config = make_config(
        backend.url,
        candidates=[{
            "name": "dead", "version": "1", "url": f"http://127.0.0.1:{port}",
            "timeout_ms": 2000, "breaker": {"failures": 1, "reset_s": 0.2},
        }],
    )  # fmt: skip
    revived = PortBackend(delay_s=0.3)  # the probe stays in flight for a while
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/m/infer"
        async with session.post(url, data=b"{}") as resp:
            assert resp.status == 200
        await wait_for(lambda: _outcome(rt, "error") == 1, what="the breaker to open")
        await revived.start_on(port)
        try:
            await asyncio.sleep(0.25)

            async def post() -> int:
                async with session.post(url, data=b"{}") as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(post() for _ in range(10)))
            assert statuses == [200] * 10
            await wait_for(lambda: _outcome(rt, "ok") == 1, what="the probe to finish")
            assert len(client_requests(revived)) == 1
            assert _dropped(rt, "breaker_open") == 9
            assert _gauge(rt) == 0
        finally:
            await revived.stop()


async def test_client_errors_mirrored_from_the_request_do_not_open_the_breaker(
    backend: Backend,
) -> None:
    """A candidate answering 4xx to a bad request is healthy: it agrees with production.

    Only failures of the candidate itself (5xx, timeouts, connection errors, invalid
    responses) should count towards opening the breaker.
    """
    from aiohttp import web

    async def bad_request(_: web.Request) -> web.Response:
        return web.json_response({"error": "bad input"}, status=400)

    backend.handler = bad_request
    candidate = await Backend(handler=bad_request).start()
    try:
        config = make_config(
            backend.url,
            candidates=[{
                "name": "dead", "version": "1", "url": candidate.url,
                "breaker": {"failures": 3, "reset_s": 60},
            }],
        )  # fmt: skip
        async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/m/infer"
            for _ in range(6):
                async with session.post(url, data=b"not json") as resp:
                    assert resp.status == 400
            await wait_for(
                lambda: len(client_requests(candidate)) + _dropped(rt, "breaker_open") >= 6,
                what="the shadow outcomes",
            )
            assert _dropped(rt, "breaker_open") == 0
            assert len(client_requests(candidate)) == 6
            assert _gauge(rt) == 0
    finally:
        await candidate.stop()


# -- properties ---------------------------------------------------------------------------

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["allow", "ok", "fail", "release"]),
        st.integers(0, 30),  # which permit a result is for
        st.sampled_from([0.0, 0.4, 1.0]),  # time passing before the step (reset_s is 1)
    ),
    max_size=60,
)


@settings(max_examples=400)
@given(ops=_OPS, failures=st.integers(1, 4))
def test_only_a_current_probe_moves_a_breaker_out_of_open_or_half_open(
    ops: list[tuple[str, int, float]], failures: int
) -> None:
    breaker = CircuitBreaker(failures=failures, reset_s=1.0)
    permits: list[Permit] = []
    now = 0.0
    for op, which, step in ops:
        now += step
        before = (
            breaker.state, breaker.times_opened, breaker.probe_in_flight,
            breaker.consecutive_failures,
        )  # fmt: skip
        if op == "allow":
            probes_out = breaker.state is BreakerState.HALF_OPEN and breaker.probe_in_flight
            permit = breaker.allow(now)
            if permit is not None:
                permits.append(permit)
                # Half-open: one probe at a time, never a second while one is out.
                assert not (permit.probe and probes_out)
                assert permit.probe == (breaker.state is BreakerState.HALF_OPEN)
            continue
        if not permits:
            continue
        permit = permits[which % len(permits)]
        if op == "release":
            breaker.release(permit)
            assert (breaker.state, breaker.times_opened) == before[:2]
            continue
        breaker.record(permit, op == "ok", now)
        state, opened, _, _ = before
        if permit.epoch != opened:
            # A result from before the last opening changes nothing at all.
            after = (
                breaker.state, breaker.times_opened, breaker.probe_in_flight,
                breaker.consecutive_failures,
            )  # fmt: skip
            assert after == before
        elif state is BreakerState.OPEN or (state is BreakerState.HALF_OPEN and not permit.probe):
            assert (breaker.state, breaker.times_opened) == (state, opened)
        elif state is BreakerState.HALF_OPEN:
            assert breaker.state is (BreakerState.CLOSED if op == "ok" else BreakerState.OPEN)
        # Closed only ever follows a closed breaker or a successful current probe.
        if breaker.state is BreakerState.CLOSED and state is not BreakerState.CLOSED:
            assert permit.probe and op == "ok" and permit.epoch == opened
