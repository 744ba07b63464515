"""``shadowproxy replay``: requests recorded in a pair log, sent again to a service."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.support.proxy import free_port, make_config, running_proxy
from tests.support.servers import Backend


def _replay(log: Path, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shadowproxy", "replay", "--log", str(log), "--target", target],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_logged_requests_replay_byte_for_byte_and_truncated_ones_are_skipped(
    backend: Backend, candidate_backend: Backend, tmp_path: Path
) -> None:
    log = tmp_path / "pairs.jsonl"
    config = make_config(
        backend.url,
        candidates=[{"name": "cand", "url": candidate_backend.url}],
        pair_log={"path": str(log), "max_body_bytes": 512},
    )
    sent = {f"req-{i}": b'{"row": %d, "pad": "%s"}' % (i, b"x" * (i * 40)) for i in range(20)}
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        for rid, body in sent.items():
            async with session.post(
                f"http://127.0.0.1:{rt.traffic_port}/v2/models/m/infer?v=1",
                data=body,
                headers={"X-Request-Id": rid, "Content-Type": "application/json"},
            ) as resp:
                assert resp.status == 200
    fitting = {rid: body for rid, body in sent.items() if len(body) <= 512}
    assert 0 < len(fitting) < len(sent)  # some bodies were cut in the log

    target = await Backend().start()
    try:
        # In a thread: the target answers on this test's event loop.
        done = await asyncio.to_thread(_replay, log, target.url)
    finally:
        await target.stop()

    assert done.returncode == 0, done.stderr
    assert f"replayed {len(fitting)} requests" in done.stdout
    assert f"skipped {len(sent) - len(fitting)} with a truncated body" in done.stdout
    got = {}
    for seen in target.seen:
        headers = {name.lower(): value for name, value in seen.headers.items()}
        got[headers["x-request-id"]] = (seen, headers)
    assert set(got) == set(fitting)
    for rid, body in fitting.items():
        seen, headers = got[rid]
        assert seen.body == body
        assert seen.method == "POST"
        assert seen.path == "/v2/models/m/infer?v=1"
        assert headers["content-type"] == "application/json"
        assert headers["x-shadow-replay"] == "1"


def test_replay_to_a_service_that_is_down_exits_1(tmp_path: Path) -> None:
    log = tmp_path / "pairs.jsonl"
    line = (
        b'{"schema":"shadowproxy.pair/v1","request_id":"a","started_at":1.0,"method":"POST",'
        b'"path":"/x","request":{"content_type":"","body":{"text":"{}"}},"production":null,'
        b'"shadows":{}}\n'
    )
    log.write_bytes(line)
    done = _replay(log, f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "failed" in done.stderr


def test_replay_of_a_missing_log_exits_2(tmp_path: Path) -> None:
    done = _replay(tmp_path / "nope.jsonl", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert done.stderr.startswith("--log:")
