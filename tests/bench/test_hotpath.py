"""The socket-free hot-path harness runs the real protocol objects end to end."""

from __future__ import annotations

from bench.hotpath import critical_path_us, per_request_us


async def test_every_request_is_answered_with_and_without_a_mirror() -> None:
    for mirror in (False, True):
        cost = await per_request_us(mirror, 300)  # asserts every request was answered
        assert 0 < cost < 10_000


async def test_bookkeeping_stays_off_the_latency_path() -> None:
    """Deadlines, counters, pairing and parser resets run after the writes that matter,
    so the two latency-path segments add up to less than the whole per-request cost."""
    to_upstream, to_client, whole = await critical_path_us(3000)
    assert 0 < to_upstream and 0 < to_client
    assert to_upstream + to_client < whole
