"""The pair-log writer and reader, on real files with the real writer thread."""

from __future__ import annotations

import asyncio
import errno
import gzip
import os
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from shadowproxy.background import BACKGROUND_NICE
from shadowproxy.config.model import PairLog
from shadowproxy.pairing.codec import dumps_record, loads_record
from shadowproxy.pairing.log import (
    SAMPLING_SALT,
    PairLogError,
    PairLogWriter,
    ReadStats,
    check_pair_logs,
    log_files,
    read_pair_log,
)
from shadowproxy.pairing.record import Exchange, PairRecord
from shadowproxy.pairing.redact import REDACTED, REDACTED_NON_JSON
from shadowproxy.shadow.sampling import is_sampled, keyed_salt
from tests.support.servers import Backend
from tests.support.waiting import wait_for

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

CLOSE_S = 30.0
SECRET = "tok-9f8e7d6c5b4a"


def make_record(i: int) -> PairRecord:
    """A varied record: JSON, binary and empty bodies, missing answers, odd outcomes."""
    request = {"inputs": [{"name": "x", "data": [i, i * 0.5]}], "customer": {"id": i}}
    production = Exchange(
        role="production",
        name="prod",
        version="1",
        outcome="ok",
        status=200,
        latency_s=0.001 * (i % 50),
        body=orjson.dumps({"outputs": [{"name": "y", "data": [i % 2]}]}),
        content_type="application/json",
    )
    candidate = Exchange(
        role="candidate",
        name="cand",
        version="2",
        outcome="ok" if i % 7 else "timeout",
        status=200 if i % 7 else None,
        latency_s=0.002 * (i % 30),
        body=bytes([i % 256, 0xFF, 0x00, 0xFE]) if i % 3 == 0 else b'{"outputs": []}',
        content_type="application/json",
        detail="" if i % 7 else "deadline",
        body_truncated=i % 11 == 0,
    )
    return PairRecord(
        request_id=f"req-{i:06d}",
        started_at=1_718_000_000.0 + i / 1000,
        method="POST",
        path="/v2/models/m/infer",
        request_body=orjson.dumps(request),
        request_content_type="application/json",
        production=None if i % 13 == 0 else production,
        shadows={} if i % 17 == 0 else {"cand": candidate},
    )


BURST = 5000  # records submitted at once by the tests that need every one of them kept


def config(tmp_path: Path, **changes: Any) -> PairLog:
    # A folder that does not exist yet: the writer creates it.
    return replace(PairLog(path=tmp_path / "logs" / "pairs.jsonl"), **changes)


def write_all(cfg: PairLog, records: Iterable[PairRecord], **kwargs: Any) -> PairLogWriter:
    writer = PairLogWriter(cfg, **kwargs)
    writer.start()
    for record in records:
        writer.submit(record)
    assert writer.close(CLOSE_S)
    return writer


def log_path(cfg: PairLog) -> Path:
    assert cfg.path is not None
    return cfg.path


def read(cfg: PairLog, stats: ReadStats | None = None) -> list[PairRecord]:
    return list(read_pair_log([log_path(cfg)], stats=stats))


def raw_lines(files: Iterable[Path]) -> Iterator[bytes]:
    for file in files:
        yield from file.read_bytes().splitlines(keepends=True)


# -- completeness and order --------------------------------------------------------


def test_every_record_is_written_in_order(tmp_path: Path) -> None:
    cfg = config(tmp_path, queue_size=BURST)  # room for the whole burst: nothing is shed
    records = [make_record(i) for i in range(5000)]
    writer = write_all(cfg, records)
    assert (writer.written, writer.dropped) == (5000, 0)
    back = read(cfg)
    assert len(back) == 5000
    assert [r.request_id for r in back] == [r.request_id for r in records]
    assert back == records  # bodies, exchanges and floats equal too
    assert writer.bytes_written == log_path(cfg).stat().st_size


def test_flush_makes_submitted_records_readable(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    writer = PairLogWriter(cfg)
    writer.start()
    for i in range(10):
        writer.submit(make_record(i))
    assert writer.flush(CLOSE_S)
    assert [r.request_id for r in read(cfg)] == [f"req-{i:06d}" for i in range(10)]
    writer.submit(make_record(10))
    assert writer.flush(CLOSE_S)
    assert len(read(cfg)) == 11
    assert writer.close(CLOSE_S)


async def test_submit_from_the_event_loop(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    writer = PairLogWriter(cfg)
    writer.start()
    for i in range(100):
        writer.submit(make_record(i))
        await asyncio.sleep(0)
    assert await asyncio.to_thread(writer.close, CLOSE_S)
    assert len(read(cfg)) == 100


def test_the_writer_thread_runs_at_background_priority(tmp_path: Path) -> None:
    writer = PairLogWriter(config(tmp_path))
    assert writer.background_priority is None
    writer.start()
    try:
        writer.submit(make_record(0))
        assert writer.flush(CLOSE_S)
        assert writer.background_priority is True
        thread = writer._thread
        assert thread is not None and thread.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == BACKGROUND_NICE
    finally:
        assert writer.close(CLOSE_S)
    assert [r.request_id for r in read(config(tmp_path))] == ["req-000000"]


def test_reopening_appends_to_the_existing_file(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    write_all(cfg, (make_record(i) for i in range(10)))
    write_all(cfg, (make_record(i) for i in range(10, 20)))
    assert [r.request_id for r in read(cfg)] == [f"req-{i:06d}" for i in range(20)]


# -- sampling ------------------------------------------------------------------------


def test_sampling_writes_exactly_the_sampled_ids(tmp_path: Path) -> None:
    cfg = config(tmp_path, sample_rate=0.3, queue_size=BURST)
    records = [make_record(i) for i in range(5000)]
    writer = write_all(cfg, records)
    expected = {r.request_id for r in records if is_sampled(r.request_id, 0.3, salt=SAMPLING_SALT)}
    written = [r.request_id for r in read(cfg)]
    assert set(written) == expected
    assert len(written) == len(expected) == writer.written
    assert writer.dropped == 0  # sampled out is not a drop
    assert 0.27 < len(written) / len(records) < 0.33


def test_with_a_sampling_key_the_log_writes_the_keyed_selection(tmp_path: Path) -> None:
    cfg = config(tmp_path, sample_rate=0.3)
    key = b"a-secret-the-replicas-share"
    records = [make_record(i) for i in range(2000)]
    writer = PairLogWriter(cfg, sampling_key=key)
    writer.start()
    for r in records:
        writer.submit(r)
    assert writer.close(CLOSE_S)
    salt = keyed_salt(key, SAMPLING_SALT)
    expected = [r.request_id for r in records if is_sampled(r.request_id, 0.3, salt=salt)]
    plain = [r.request_id for r in records if is_sampled(r.request_id, 0.3, salt=SAMPLING_SALT)]
    assert expected != plain
    assert [r.request_id for r in read(cfg)] == expected


def test_sample_rate_zero_writes_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path, sample_rate=0.0)
    writer = write_all(cfg, (make_record(i) for i in range(100)))
    assert writer.written == 0
    assert not log_path(cfg).exists()


# -- rotation ------------------------------------------------------------------------


def line_size(record: PairRecord, cfg: PairLog) -> int:
    return len(dumps_record(record, max_body_bytes=cfg.max_body_bytes, redact=cfg.redact))


def test_rotation_keeps_whole_lines_and_at_most_backups_files(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_bytes=4000, backups=2)
    records = [make_record(i) for i in range(400)]
    writer = write_all(cfg, records)
    path = log_path(cfg)
    files = log_files(path)
    assert [f.name for f in files] == ["pairs.jsonl.2", "pairs.jsonl.1", "pairs.jsonl"]
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(f.name for f in files)
    for file in files:
        data = file.read_bytes()
        assert 0 < len(data) <= cfg.max_bytes
        assert data.endswith(b"\n")
        for line in data.splitlines():
            loads_record(line)  # every surviving line is a whole record
    # The survivors are the newest records, in order, with nothing missing between them.
    ids = [r.request_id for r in read(cfg)]
    assert ids == [r.request_id for r in records[-len(ids) :]]
    assert writer.written == 400
    assert writer.bytes_written == sum(line_size(r, cfg) for r in records)
    # A backup is closed only when the next line would not fit.
    first_after = {files[0]: files[1], files[1]: files[2]}
    for file, newer in first_after.items():
        next_line = newer.read_bytes().split(b"\n", 1)[0] + b"\n"
        assert file.stat().st_size + len(next_line) > cfg.max_bytes


def test_zero_backups_truncates_in_place(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_bytes=3000, backups=0)
    records = [make_record(i) for i in range(200)]
    write_all(cfg, records)
    path = log_path(cfg)
    assert [p.name for p in path.parent.iterdir()] == ["pairs.jsonl"]
    assert path.stat().st_size <= cfg.max_bytes
    ids = [r.request_id for r in read(cfg)]
    assert ids and ids == [r.request_id for r in records[-len(ids) :]]


def test_fewer_backups_than_before_leave_no_gap_in_what_is_read(tmp_path: Path) -> None:
    # A log written with backups: 6, then again with backups: 2. The old .3 to .6 are
    # older than anything kept: left in place, a reader would read them, then a gap.
    before = [make_record(i) for i in range(400)]
    write_all(config(tmp_path, max_bytes=4000, backups=6), before)
    path = log_path(config(tmp_path, max_bytes=4000, backups=2))
    assert len(log_files(path)) == 7
    after = [make_record(i) for i in range(1000, 1400)]
    cfg = config(tmp_path, max_bytes=4000, backups=2)
    write_all(cfg, after)
    assert [f.name for f in log_files(path)] == ["pairs.jsonl.2", "pairs.jsonl.1", "pairs.jsonl"]
    ids = [r.request_id for r in read(cfg)]
    assert ids == [r.request_id for r in (before + after)[-len(ids) :]]


def test_a_line_longer_than_max_bytes_is_written_alone(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_bytes=100, backups=5)
    records = [make_record(i) for i in range(4)]
    assert all(line_size(r, cfg) > 100 for r in records)
    write_all(cfg, records)
    files = log_files(log_path(cfg))
    assert len(files) == 4
    assert all(f.read_bytes().count(b"\n") == 1 for f in files)
    assert read(cfg) == records


def test_reader_reads_backups_oldest_first_and_tolerates_gaps(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    for name, i in (("x.jsonl.10", 0), ("x.jsonl.2", 1), ("x.jsonl", 2)):
        (tmp_path / name).write_bytes(dumps_record(make_record(i), max_body_bytes=1 << 20))
    (tmp_path / "x.jsonl.bak").write_bytes(b"not a backup")
    (tmp_path / "y.jsonl.1").write_bytes(b"another log")
    stats = ReadStats()
    ids = [r.request_id for r in read_pair_log([path], stats=stats)]
    assert ids == ["req-000000", "req-000001", "req-000002"]
    assert [f.name for f in stats.files] == ["x.jsonl.10", "x.jsonl.2", "x.jsonl"]
    assert stats.records == 3


def test_reading_a_missing_log_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(read_pair_log([tmp_path / "absent.jsonl"]))


# -- torn lines ----------------------------------------------------------------------


def test_torn_final_line_is_skipped_and_counted_then_closed_by_the_next_writer(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    write_all(cfg, (make_record(i) for i in range(10)))
    full_line = dumps_record(make_record(10), max_body_bytes=cfg.max_body_bytes)
    with log_path(cfg).open("ab") as f:
        f.write(full_line[: len(full_line) // 2])  # a crash mid-write

    stats = ReadStats()
    assert len(read(cfg, stats)) == 10
    assert (stats.records, stats.torn, stats.invalid) == (10, 1, 0)

    # The next writer ends the torn line first, so its own records stay whole.
    write_all(cfg, (make_record(i) for i in range(11, 16)))
    stats = ReadStats()
    ids = [r.request_id for r in read(cfg, stats)]
    assert ids == [f"req-{i:06d}" for i in (*range(10), *range(11, 16))]
    assert (stats.records, stats.torn, stats.invalid) == (15, 0, 1)


# -- redaction -----------------------------------------------------------------------


def test_redacted_fields_never_reach_the_file(tmp_path: Path) -> None:
    cfg = config(tmp_path, redact=("customer.email", "inputs.*.data", "outputs.*.token"))
    record = make_record(1)
    record.request_body = orjson.dumps(
        {
            "customer": {"email": SECRET, "id": 1},
            "inputs": [{"name": "a", "data": SECRET}, {"name": "b", "data": [SECRET]}],
        }
    )
    assert record.production is not None
    record.production.body = orjson.dumps({"outputs": [{"token": SECRET, "score": 0.9}]})
    record.shadows["cand"].body = f"plain text with {SECRET}".encode()
    # Escapes in the raw text do not hide a field from the parsed-document match.
    escaped = make_record(2)
    escaped.request_body = b'{"customer": {"em\\u0061il": "' + SECRET.encode() + b'"}}'
    write_all(cfg, [record, escaped])

    raw = log_path(cfg).read_bytes()
    assert SECRET.encode() not in raw
    first, second = read(cfg)
    assert orjson.loads(first.request_body) == {
        "customer": {"email": REDACTED, "id": 1},
        "inputs": [{"name": "a", "data": REDACTED}, {"name": "b", "data": REDACTED}],
    }
    assert first.production is not None
    assert orjson.loads(first.production.body) == {"outputs": [{"token": REDACTED, "score": 0.9}]}
    assert first.shadows["cand"].body == REDACTED_NON_JSON
    assert orjson.loads(second.request_body) == {"customer": {"email": REDACTED}}


# -- bodies --------------------------------------------------------------------------


def test_binary_bodies_round_trip_and_long_bodies_are_cut(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_body_bytes=64)
    binary = make_record(1)
    binary.request_body = b"\xff\xfe" + bytes(range(62))  # not UTF-8
    long = make_record(2)
    long.request_body = b'{"data": "' + b"x" * 500 + b'"}'
    write_all(cfg, [binary, long])

    lines = [orjson.loads(line) for line in raw_lines([log_path(cfg)])]
    assert "base64" in lines[0]["request"]["body"]
    assert lines[1]["request"]["body"]["truncated"] is True
    assert lines[1]["request"]["body"]["size"] == len(long.request_body)
    back_binary, back_long = read(cfg)
    assert back_binary.request_body == binary.request_body
    assert back_long.request_body == long.request_body[:64]


# -- back-pressure and errors --------------------------------------------------------


def test_full_queue_drops_without_blocking(tmp_path: Path) -> None:
    cfg = config(tmp_path, queue_size=3)
    reasons: list[str] = []
    writer = PairLogWriter(cfg, on_drop=reasons.append)
    # The thread is not started, so nothing drains the queue: a blocking put would hang.
    began = time.monotonic()
    for i in range(10):
        writer.submit(make_record(i))
    assert time.monotonic() - began < 5.0
    assert reasons == ["queue_full"] * 7
    assert (writer.dropped, writer.drops) == (7, {"queue_full": 7})
    assert writer.pending == 3

    assert writer.close(CLOSE_S)  # close starts the thread to drain what was queued
    assert writer.written == 3
    assert [r.request_id for r in read(cfg)] == ["req-000000", "req-000001", "req-000002"]


def test_submit_after_close_is_dropped(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    reasons: list[str] = []
    writer = write_all(cfg, [make_record(0)], on_drop=reasons.append)
    writer.submit(make_record(1))
    assert reasons == ["closed"]
    assert writer.close(CLOSE_S)  # a second close is harmless
    assert [r.request_id for r in read(cfg)] == ["req-000000"]


def test_write_errors_are_counted_and_the_writer_recovers(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = log_path(cfg)
    path.mkdir(parents=True)  # the log path is a folder: every open fails
    reasons: list[str] = []
    writer = PairLogWriter(cfg, on_drop=reasons.append)
    writer.start()
    for i in range(5):
        writer.submit(make_record(i))
    assert writer.flush(CLOSE_S)
    assert (writer.written, writer.drops) == (0, {"write_error": 5})
    assert reasons == ["write_error"] * 5

    path.rmdir()  # the obstacle goes away; the writer carries on
    for i in range(5, 8):
        writer.submit(make_record(i))
    assert writer.close(CLOSE_S)
    assert writer.written == 3
    assert [r.request_id for r in read(cfg)] == ["req-000005", "req-000006", "req-000007"]


def file_size_limit_usable() -> bool:
    sigxfsz = getattr(signal, "SIGXFSZ", None)
    return (
        resource is not None and sigxfsz is not None and signal.getsignal(sigxfsz) == signal.SIG_IGN
    )


@pytest.mark.skipif(
    not file_size_limit_usable(),
    reason="needs RLIMIT_FSIZE with SIGXFSZ ignored (CPython's default on Unix)",
)
def test_disk_full_mid_write_leaves_only_whole_lines(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    records = [make_record(i) for i in range(20)]
    reasons: list[str] = []
    writer = PairLogWriter(cfg, on_drop=reasons.append)
    for record in records:
        writer.submit(record)  # queued before the thread starts: one batch, one write
    limit = 5000
    assert sum(line_size(r, cfg) for r in records) > limit
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Past the file-size limit a write is short, then fails with EFBIG: a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        writer.start()
        assert writer.flush(CLOSE_S)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    kept = writer.written
    assert 0 < kept < 20
    assert reasons == ["write_error"] * (20 - kept)
    assert log_path(cfg).stat().st_size == writer.bytes_written <= limit

    writer.submit(make_record(20))
    assert writer.close(CLOSE_S)
    stats = ReadStats()
    ids = [r.request_id for r in read(cfg, stats)]
    assert ids == [r.request_id for r in records[:kept]] + ["req-000020"]
    assert (stats.torn, stats.invalid) == (0, 0)  # the cut line was taken back off


def test_unusable_parent_folder_is_counted(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    cfg = PairLog(path=tmp_path / "file" / "pairs.jsonl")
    writer = write_all(cfg, (make_record(i) for i in range(3)))
    assert (writer.written, writer.drops) == (0, {"write_error": 3})


def test_unencodable_record_is_skipped(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    bad = make_record(1)
    bad.path = "/bad\udc80path"  # a lone surrogate cannot be written as JSON
    reasons: list[str] = []
    writer = write_all(cfg, [make_record(0), bad, make_record(2)], on_drop=reasons.append)
    assert reasons == ["encode_error"]
    assert [r.request_id for r in read(cfg)] == ["req-000000", "req-000002"]
    assert writer.written == 2


def test_failing_on_drop_callback_does_not_stop_the_writer(tmp_path: Path) -> None:
    def explode(reason: str) -> None:
        raise RuntimeError(reason)

    cfg = config(tmp_path, queue_size=1)
    writer = PairLogWriter(cfg, on_drop=explode)
    writer.submit(make_record(0))
    writer.submit(make_record(1))  # dropped; the callback's error is swallowed
    assert writer.dropped == 1
    assert writer.close(CLOSE_S)
    assert writer.written == 1


# -- lifecycle -----------------------------------------------------------------------


def test_lifecycle_rules(tmp_path: Path) -> None:
    with pytest.raises(PairLogError):
        PairLogWriter(PairLog(path=None))
    writer = PairLogWriter(config(tmp_path))
    assert not writer.flush(1.0)  # nothing to flush with: not started
    writer.start()
    writer.start()  # idempotent
    assert writer.flush(CLOSE_S)
    assert writer.close(CLOSE_S)
    assert not writer.flush(1.0)
    with pytest.raises(PairLogError):
        writer.start()


# -- telling a pair log from other files ---------------------------------------------


def _line(i: int) -> bytes:
    return dumps_record(make_record(i), max_body_bytes=1 << 20)


# A snapshot document as the admin endpoint writes it, indented.
SNAPSHOT = orjson.dumps(
    {"schema": "shadowproxy.snapshot/v3", "targets": {}}, option=orjson.OPT_INDENT_2
)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (gzip.compress(_line(1) + _line(2)), "gzip-compressed"),
        (bytes(range(128, 256)) * 20, "not UTF-8"),
        (b"\0\0\0\0\n" * 3, "binary data"),
        (SNAPSHOT, "JSON document"),
        (orjson.dumps(orjson.loads(SNAPSHOT)) + b"\n",
         "unsupported schema 'shadowproxy.snapshot/v3'"),
        (b"listen: {port: 8080}\nadmin: {port: 9090}\n", "none of its 2 lines"),
        # A torn line that is not a record's start, and nothing else.
        (b'{"request_id": "a"', "its one line"),
    ],
    ids=["gzip", "not-utf8", "nul-bytes", "json-document", "snapshot-line", "yaml", "json-torn"],
)  # fmt: skip
def test_a_file_that_is_not_a_pair_log_is_refused_naming_it(
    tmp_path: Path, content: bytes, says: str
) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(content)
    with pytest.raises(PairLogError) as info:
        check_pair_logs([path])
    message = str(info.value)
    assert message.startswith(f"{path}: not a pair log (") and message.endswith(")")
    assert says in message, message
    assert "\n" not in message


def test_a_bad_rotated_backup_is_named(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(_line(1))
    (tmp_path / "pairs.jsonl.1").write_bytes(gzip.compress(_line(0)))
    with pytest.raises(PairLogError, match=r"pairs\.jsonl\.1: not a pair log"):
        check_pair_logs([path])


@pytest.mark.parametrize(
    "content",
    [
        b"",  # nothing written yet
        b"\n\n",
        _line(1),
        b"garbage\n" + _line(1) + b"more garbage\n",  # unreadable lines beside records
        _line(1)[:40],  # the first write was cut short by a crash
        _line(1)[:5],
    ],
    ids=["empty", "blank", "one-record", "records-and-garbage", "torn-first-write", "torn-short"],
)
def test_pair_logs_pass_the_check_even_empty_or_torn(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(content)
    check_pair_logs([path])


def test_the_check_of_a_missing_log_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        check_pair_logs([tmp_path / "absent.jsonl"])


def test_a_log_that_cannot_be_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(_line(1))
    real_open = Path.open

    def refusing_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:  # as for a file without read permission, which root would read
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing_open)
    with pytest.raises(PairLogError, match="pairs.jsonl: cannot read: Permission denied"):
        check_pair_logs([path])


def test_the_check_reads_a_log_only_up_to_its_first_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shadowproxy.pairing.log as pair_log

    parsed: list[bytes] = []

    def counting(line: bytes) -> PairRecord:
        parsed.append(line)
        return loads_record(line)

    monkeypatch.setattr(pair_log, "loads_record", counting)
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"torn\n" + _line(1) + _line(2) * 1000)
    check_pair_logs([path])
    assert parsed == [b"torn\n", _line(1)]


def test_written_records_are_reported_as_they_are_written(tmp_path: Path) -> None:
    counted: list[int] = []
    cfg = config(tmp_path, sample_rate=1.0)
    writer = write_all(cfg, [make_record(i) for i in range(40)], on_written=counted.append)
    lines = log_path(cfg).read_bytes().count(b"\n")
    assert sum(counted) == writer.written == lines == 40


async def test_the_proxy_counts_what_its_pair_log_writes(
    backend: Backend, candidate_backend: Backend, tmp_path: Path
) -> None:
    from tests.support.proxy import make_config, metric_value, running_proxy

    log = tmp_path / "pairs.jsonl"
    config = make_config(
        backend.url, candidates=[{"name": "c", "url": candidate_backend.url}],
        pair_log={"path": str(log)},
    )  # fmt: skip
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        for _ in range(12):
            async with session.post(f"http://127.0.0.1:{rt.traffic_port}/p", data=b"{}") as r:
                assert r.status == 200
        await wait_for(lambda: log.exists() and log.read_bytes().count(b"\n") == 12,
                       what="12 lines")  # fmt: skip
        await wait_for(
            lambda: metric_value(rt, "shadowproxy_pair_log_records_total", result="written") == 12,
            what="the written records counted",
        )
