"""``shadowproxy replay``: requests recorded in a pair log, sent again to a service."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from shadowproxy.pairing.record import PairRecord
from shadowproxy.pairing.replay import replay, target_problem
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


RECORD = (
    b'{"schema":"shadowproxy.pair/v1","request_id":"a","started_at":1.0,"method":"POST",'
    b'"path":"/x","request":{"content_type":"","body":{"text":"{}"}},"production":null,'
    b'"shadows":{}}\n'
)


@pytest.mark.parametrize(
    "target", ["127.0.0.1:28501", "localhost:8080", "ftp://host", "", "http://", "http://h/?a=1"]
)
def test_replay_to_a_target_that_is_not_a_base_url_exits_2(tmp_path: Path, target: str) -> None:
    log = tmp_path / "pairs.jsonl"
    log.write_bytes(RECORD)
    done = _replay(log, target)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("--target: ") and len(done.stderr.splitlines()) == 1
    assert "replayed" not in done.stdout


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080", "https://model.example", "HTTP://[::1]:1/prefix/", "http://u:p@h"],
)
def test_http_and_https_base_urls_are_targets(url: str) -> None:
    assert target_problem(url) is None


async def test_replay_refuses_a_bad_target_before_reading_anything() -> None:
    def records() -> Iterator[PairRecord]:
        raise AssertionError("read")
        yield  # pragma: no cover

    with pytest.raises(ValueError, match="target must be an absolute"):
        await replay(records(), "ftp://host")


@pytest.mark.parametrize("kind", ["gzip", "snapshot", "random"])
def test_replay_of_a_file_that_is_not_a_pair_log_exits_2(tmp_path: Path, kind: str) -> None:
    log = tmp_path / f"not-a-log.{kind}"
    if kind == "gzip":
        log.write_bytes(gzip.compress(RECORD * 3))
    elif kind == "snapshot":
        log.write_text(json.dumps({"schema": "shadowproxy.snapshot/v3", "targets": {}}, indent=1))
    else:
        log.write_bytes(random.Random(7).randbytes(4096))
    done = _replay(log, f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith(f"--log: {log}: not a pair log (")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


async def test_nothing_is_sent_when_one_of_the_logs_is_not_a_pair_log(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(RECORD)
    bad.write_bytes(gzip.compress(RECORD))
    target = await Backend().start()
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "shadowproxy", "replay", "--log", str(good), "--log", str(bad),
             "--target", target.url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        await target.stop()
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith(f"--log: {bad}: not a pair log (gzip-compressed")
    assert target.seen == []


def test_replay_of_an_empty_log_exits_0(tmp_path: Path) -> None:
    log = tmp_path / "pairs.jsonl"
    log.write_bytes(b"")
    done = _replay(log, f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 0, done.stderr
    assert "replayed 0 requests" in done.stdout
    # The summary names the target, never a password in it.
    done = _replay(log, f"http://replayer:hunter22@127.0.0.1:{free_port()}")
    assert done.returncode == 0 and "hunter22" not in done.stdout + done.stderr
    assert "replayer:[redacted]@127.0.0.1" in done.stdout


async def test_a_recorded_path_and_content_type_are_sent_exactly_as_recorded() -> None:
    from tests.support.servers import RawServer, read_request

    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append((await read_request(reader)).split(b"\r\n\r\n")[0])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    # What a client sent, kept raw by the proxy: nothing here may be normalised.
    paths = ["/dots/a/../b/./c", "/enc%41%7e%25", "/q?a=%zz&b", "/frag%23x?y=%3F", "/%c3%bc"]
    records = [
        PairRecord(f"r{i}", 0.0, "POST" if i % 2 else "GET", path, b"{}" if i % 2 else b"",
                   "application/json" if i == 1 else "", None, {})
        for i, path in enumerate(paths)
    ]  # fmt: skip
    server = await RawServer(record).start()
    try:
        summary = await replay(records, server.url, concurrency=1)
    finally:
        await server.stop()
    assert summary.sent == len(paths) and not summary.errors
    assert [head.split(b"\r\n")[0].split(b" ")[1].decode() for head in heads] == paths
    for i, head in enumerate(heads):
        lines = head.lower().split(b"\r\n")
        content_types = [line for line in lines if line.startswith(b"content-type:")]
        # Only the request that had one gets one: aiohttp's default is not added.
        assert content_types == ([b"content-type: application/json"] if i == 1 else []), head
        assert not any(line.startswith(b"accept-encoding:") for line in lines)
