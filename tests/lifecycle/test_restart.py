"""``kill -9`` and restart: the comparator resumes from its last periodic snapshot.

A killed proxy writes nothing more, so what survives is the last snapshot written on the
``compare.snapshot.interval_s`` tick. A restarted proxy starts from exactly that state
(what came after the tick is lost, at most one interval); the pairs it then sees add on
top, once each: a later snapshot, and the state after another restart, hold the old
state plus the new pairs, never the old state twice.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from shadowproxy.compare.comparator import read_snapshot
from shadowproxy.compare.persist import read_snapshot_file
from shadowproxy.compare.target import TargetState
from shadowproxy.errors import StateError
from tests.support.load import SteadyLoad, answered_by_production, production
from tests.support.proxy import make_config
from tests.support.served import Served, serving
from tests.support.servers import Backend

INTERVAL_S = 0.3
NAME = "cand"


def _config(production_url: str, candidate_url: str, snapshot: Path) -> dict[str, Any]:
    return make_config(
        production_url,
        candidates=[{"name": NAME, "version": "1", "url": candidate_url, "timeout_ms": 2000}],
        compare={
            "outputs": {"score": "probabilities"},
            "snapshot": {"path": str(snapshot), "interval_s": INTERVAL_S},
        },
    )


def _counts(state: TargetState) -> dict[str, int]:
    """What must add up exactly across restarts: pairs, comparisons, rows, outcomes, scores.

    Each request has one row, answered ``ok`` by both sides and compared: after ``n`` pairs
    every one of these is ``n``.
    """
    return {
        "requests": state.requests,
        "compared": state.compared,
        "rows": state.rows,
        "ok": state.candidate_outcomes["ok"],
        "scores": state.diff.count,
    }


def _pairs(n: int) -> dict[str, int]:
    return dict.fromkeys(("requests", "compared", "rows", "ok", "scores"), n)


def _counts_in(snapshot: dict[str, Any], source: str) -> dict[str, int]:
    targets = read_snapshot(snapshot, None, source)
    return _counts(targets[NAME]) if NAME in targets else _pairs(0)


def _from_file(path: Path) -> dict[str, int]:
    return _counts_in(read_snapshot_file(path), str(path))


async def _live(served: Served) -> dict[str, int]:
    """The comparator state of a running proxy, from ``/admin/snapshot``."""
    status, body = await served.get("/admin/snapshot")
    assert status == 200, body
    return _counts_in(orjson.loads(body), "/admin/snapshot")


async def _until(read: Any, expected: dict[str, Any], timeout_s: float = 5.0) -> None:
    """Wait until ``read()`` (sync or async) gives ``expected``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = read()
            got = await got if asyncio.iscoroutine(got) else got
        except StateError:
            got = None  # no snapshot file yet
        if got == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {expected}, last read {got}")
        await asyncio.sleep(0.05)


async def _traffic(served: Served, seconds: float) -> int:
    """Steady traffic through ``served``; every request answered by production. How many."""
    load = SteadyLoad({"proxy": served.traffic_url}, clients=2, check=answered_by_production)
    await load.run_for(seconds)
    assert load.answers and not load.failures("proxy"), load.failures("proxy")[:5]
    return len(load.answers)


async def _until_saved(served: Served, snapshot: Path, seconds: float) -> int:
    """Traffic for ``seconds``, then until a tick has saved every pair of it. How many."""
    sent = await _traffic(served, seconds)
    await _until(lambda: _from_file(snapshot), _pairs(sent))
    return sent


async def _stop(served: Served) -> None:
    served.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(served.proc.wait, 10) == 0


@pytest.fixture
def setup(
    backend: Backend, candidate_backend: Backend, tmp_path: Path
) -> tuple[Path, dict[str, Any]]:
    """The snapshot file and the config of a proxy that writes it, in front of production."""
    backend.handler = production
    snapshot = tmp_path / "snapshot.json"
    return snapshot, _config(backend.url, candidate_backend.url, snapshot)


async def test_a_killed_proxy_resumes_from_its_last_snapshot_without_double_counting(
    setup: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    snapshot, config = setup

    async with serving(config, tmp_path / "first") as first:
        # A tick after the traffic holds every pair of it; then a few more, and the kill.
        sent = await _until_saved(first, snapshot, 1.0)
        late = await _traffic(first, 0.1)
        first.proc.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(first.proc.wait, 10) == -signal.SIGKILL
    saved = _from_file(snapshot)["requests"]
    # The file is the last tick before the kill: every pair of the first burst, and of the
    # late ones only those a tick caught in time, each compared.
    assert sent <= saved <= sent + late, (sent, late, saved)
    assert _from_file(snapshot) == _pairs(saved)

    async with serving(config, tmp_path / "second") as second:
        assert await _live(second) == _pairs(saved)  # exactly the snapshot, nothing more
        more = await _traffic(second, 0.5)
        await _until(lambda: _live(second), _pairs(saved + more))
        # The next tick writes the old state plus the new pairs, not the old state twice.
        await _until(lambda: _from_file(snapshot), _pairs(saved + more))
        await _stop(second)

    async with serving(config, tmp_path / "third") as third:
        assert await _live(third) == _pairs(saved + more)


async def test_a_restart_with_a_new_candidate_version_starts_it_afresh_and_keeps_the_old(
    setup: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    snapshot, config = setup
    async with serving(config, tmp_path / "first") as first:
        sent = await _until_saved(first, snapshot, 0.5)
        await _stop(first)
    replica = orjson.loads(snapshot.read_bytes())["replica"]

    config["candidates"][0]["version"] = "2"  # the same name, another model
    async with serving(config, tmp_path / "second") as second:
        # Version 1's evidence is not counted as version 2's: it starts from nothing ...
        assert await _live(second) == _pairs(0)
        # ... and is kept, whole, in a copy beside the snapshot, for a report on it.
        (kept,) = tmp_path.glob("snapshot.json.superseded-*")
        assert _from_file(kept) == _pairs(sent)
        assert read_snapshot(orjson.loads(kept.read_bytes()), None, "kept")[NAME].version == "1"
        status, body = await second.get("/admin/snapshot")
        assert orjson.loads(body)["replica"] == replica  # still the same replica
        await _stop(second)
    log = (tmp_path / "second").glob("*.log")
    assert any("left out" in path.read_text() for path in log)


def test_a_snapshot_that_cannot_be_copied_aside_is_logged_and_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import os

    from shadowproxy.runtime import keep_superseded

    fifo = tmp_path / "snapshot.json"
    os.mkfifo(fifo)  # copyfile refuses a named pipe, as it would a file it cannot read
    assert keep_superseded(fifo, {"cand": "refused: test"}) is None
    assert "could not be copied aside" in caplog.text
    assert list(tmp_path.glob("*.superseded-*")) == []
    # A file that can be copied is kept whole, next to it.
    plain = tmp_path / "other.json"
    plain.write_bytes(b'{"schema": "x"}')
    kept = keep_superseded(plain, {"cand": "refused: test"})
    assert kept is not None and kept.read_bytes() == b'{"schema": "x"}'
