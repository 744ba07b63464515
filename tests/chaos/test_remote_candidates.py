"""Five faulty HTTP candidates at once behind a real ``shadowproxy serve``, under steady load.

One hangs (accepts, never answers), one resets every connection, one streams a gigabyte
with no declared length, one sends an endless gzip stream of zeros (each kilobyte inflates
to a megabyte), one sends malformed chunked coding. All of them get every request while a
client keeps sending traffic. Production must not notice; every fault must be counted,
per candidate, with its reason; and the proxy must read no more of an answer than
``limits.shadow_max_response_bytes``, compressed or not.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowproxy.pairing.log import read_pair_log
from shadowproxy.pairing.record import PairRecord
from tests.chaos.harness import (
    LOAD_S,
    assert_production_unharmed,
    side_by_side,
    steady_traffic,
)
from tests.support.faulty_servers import faulty_servers
from tests.support.load import production
from tests.support.served import all_counted, drops, only, outcomes
from tests.support.servers import Backend

MiB = 1024 * 1024
HANG_TIMEOUT_MS = 300
HANG_BUDGET = 4  # max_in_flight of the hanging candidate: beyond it, calls are dropped
TRIPS_AFTER = 3  # breaker failures of the candidates that cost the proxy reading
READ_BUDGET = 4  # and their max_in_flight
HELD_CLOSED = {"failures": 1_000_000, "reset_s": 60}
# A proxy that inflated or buffered a gigabyte would be far above this; an idle one with
# onnxruntime and numpy loaded is around 100 MiB.
PEAK_RSS_BOUND = 400 * MiB


@pytest.fixture(scope="module")
def faulty() -> Iterator[dict[str, int]]:
    with faulty_servers() as ports:
        yield ports


def _candidates(ports: dict[str, int]) -> list[dict[str, object]]:
    def candidate(kind: str, **settings: object) -> dict[str, object]:
        url = f"http://127.0.0.1:{ports[kind]}"
        return {"name": kind, "version": "1", "url": url, "timeout_ms": 2000, **settings}

    return [
        candidate(
            "hang", timeout_ms=HANG_TIMEOUT_MS, max_in_flight=HANG_BUDGET, breaker=HELD_CLOSED
        ),
        candidate("reset", breaker=HELD_CLOSED),
        candidate("bad_chunked", breaker=HELD_CLOSED),
        # Each of these costs a capped read; the breaker is what stops it from recurring.
        *(
            candidate(
                kind, max_in_flight=READ_BUDGET, breaker={"failures": TRIPS_AFTER, "reset_s": 60}
            )
            for kind in ("gigabyte", "gzip_bomb")
        ),
    ]


async def test_faulty_remote_candidates_are_counted_and_never_reach_production(
    faulty: dict[str, int], backend: Backend, tmp_path: Path
) -> None:
    backend.handler = production
    candidates = _candidates(faulty)
    names = [str(c["name"]) for c in candidates]
    pair_log = tmp_path / "pairs.jsonl"
    async with side_by_side(
        backend.url, candidates, tmp_path, pair_log={"path": str(pair_log)}
    ) as (clean, proxy):
        load = await steady_traffic(clean, proxy)
        total = assert_production_unharmed(load)
        samples = await all_counted(proxy, names, total)
        peak_rss = proxy.peak_rss_bytes()
        proxy.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proxy.proc.wait, 15)
        log = proxy.log_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]

    # Every request was tried on the candidates with their breaker held closed: exactly one
    # outcome each, the one the fault produces (the hanging one within its budget).
    assert outcomes(samples, "reset") == only(error=total)
    assert outcomes(samples, "bad_chunked") == only(invalid=total)
    hang = outcomes(samples, "hang")
    assert hang == only(timeout=hang["timeout"], dropped=total - hang["timeout"])
    assert hang["timeout"] >= HANG_BUDGET and hang["dropped"] > 0, hang
    # No more than the budget hung at once: each slot frees up only at the deadline.
    slots_freed = (LOAD_S + 1.0) / (HANG_TIMEOUT_MS / 1000) + 1
    assert hang["timeout"] <= HANG_BUDGET * slots_freed, hang
    assert drops(samples, "hang") == {"budget": hang["dropped"]}
    for name in ("hang", "reset", "bad_chunked"):
        assert samples.value("shadowproxy_breaker_open", model=name) == 0

    # The costly ones were read (a capped amount) until their breaker opened, then dropped.
    for name in ("gigabyte", "gzip_bomb"):
        counted = outcomes(samples, name)
        tried = counted["invalid"]
        # The calls in flight when the breaker opened still finish: the budget bounds them.
        assert TRIPS_AFTER <= tried <= TRIPS_AFTER + READ_BUDGET - 1, counted
        assert counted == only(invalid=tried, dropped=total - tried)
        reasons = drops(samples, name)
        assert sum(reasons.values()) == total - tried and reasons["breaker_open"] > 0, reasons
        assert set(reasons) <= {"breaker_open", "budget"}, reasons
        assert samples.value("shadowproxy_breaker_open", model=name) == 1
    # Neither a gigabyte nor its inflated gigabytes were ever held in memory.
    assert peak_rss < PEAK_RSS_BOUND, f"proxy peak RSS {peak_rss / MiB:.0f} MiB"

    # The pair log says why, per call, and no call took long: reading stopped at the cap.
    records = list(read_pair_log([pair_log]))
    assert len(records) == total
    details = {name: _details(records, name) for name in names}
    # (before the breaker opened, calls beyond the budget were dropped: "budget")
    assert details["gigabyte"] - {"budget"} == {
        "response exceeds limits.shadow_max_response_bytes",
        "breaker_open",
    }
    assert details["gzip_bomb"] - {"budget"} == {
        "gzip body decodes to more than limits.shadow_max_response_bytes (1048576 bytes)",
        "breaker_open",
    }
    assert details["hang"] == {f"no complete answer within {HANG_TIMEOUT_MS} ms", "budget"}
    assert all(d.startswith("malformed response from bad_chunked") for d in details["bad_chunked"])
    for record in records:
        assert record.production is not None and record.production.status == 200
        for name in ("gigabyte", "gzip_bomb"):
            assert record.shadows[name].latency_s < 1.0, record.shadows[name]


def _details(records: list[PairRecord], name: str) -> set[str]:
    return {r.shadows[name].detail for r in records}
