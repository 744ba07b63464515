"""The pair log: sampled, redacted, size-rotated JSON lines, written off the event loop.

:class:`PairLogWriter` takes records from the event loop through :meth:`~PairLogWriter.submit`,
which only samples and enqueues; a daemon thread redacts, serialises (see
:mod:`shadowproxy.pairing.codec`) and appends them. Nothing on the request path waits for
the disk: a full queue drops the record, and write errors are counted, never raised.

Files rotate by size: ``path`` is the file being written, ``path.1`` the newest backup and
``path.N`` the oldest. A line is never split across files. :func:`read_pair_log` reads
them back oldest first; :func:`check_pair_logs` tells a pair log from another file given
by mistake before anything is read for use.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from shadowproxy.background import let_loop_run, run_in_background
from shadowproxy.config.model import PairLog
from shadowproxy.pairing.codec import (
    SCHEMA,
    PairLogError,
    dumps_record,
    loads_record,
    record_from_dict,
)
from shadowproxy.pairing.record import PairRecord
from shadowproxy.pairing.redact import compile_rules
from shadowproxy.shadow.sampling import is_sampled, keyed_salt

__all__ = [
    "SAMPLING_SALT",
    "PairLogError",
    "PairLogWriter",
    "ReadStats",
    "check_pair_logs",
    "log_files",
    "read_pair_log",
]

log = logging.getLogger(__name__)

SAMPLING_SALT = b"pairlog"
"""Salt of the pair log's sampling decision, independent of the mirroring decision."""

# Records taken from the queue and written with one system call, at most. Bounds the
# work lost to one write error and the latency of a flush marker behind a backlog.
_BATCH = 256
_FLUSH_SLICE_S = 0.1


class _Stop:
    """Queue marker: write everything before it, then end the thread."""


_STOP = _Stop()


class PairLogWriter:
    """Append sampled pair records to a size-rotated JSON-lines file from a daemon thread.

    Parameters
    ----------
    config : PairLog
        The pair-log settings; ``config.path`` must be set.
    on_drop : callable, optional
        Called with a reason for every record lost: ``"queue_full"`` (from :meth:`submit`,
        on the caller's thread), ``"write_error"`` and ``"encode_error"`` (from the writer
        thread), ``"closed"`` (submitted after :meth:`close`). It may therefore run on the
        writer thread and must be thread-safe; it must not touch the event loop other than
        through ``loop.call_soon_threadsafe``. Exceptions it raises are logged and ignored.
    on_written : callable, optional
        Called on the writer thread with the number of records each write appended (for
        ``shadowproxy_pair_log_records_total{result="written"}``); the same rules apply.

    Attributes
    ----------
    written : int
        Records appended to the file.
    dropped : int
        Records lost, for any reason (see ``drops`` for the split).
    bytes_written : int
        Bytes appended, over every file.
    drops : dict of str to int
        ``dropped`` by reason.

    Notes
    -----
    A submitted record is serialised later, on the writer thread: the caller must not
    modify it after :meth:`submit`.
    """

    def __init__(
        self,
        config: PairLog,
        *,
        on_drop: Callable[[str], None] | None = None,
        on_written: Callable[[int], None] | None = None,
        sampling_key: bytes | None = None,
    ) -> None:
        if config.path is None:
            raise PairLogError("pair_log.path is not set: the pair log is disabled")
        self.config = config
        self.salt = keyed_salt(sampling_key, SAMPLING_SALT)
        self.path: Path = config.path
        self._on_drop = on_drop
        self._on_written = on_written
        self._rules = compile_rules(config.redact)
        self._queue: queue.Queue[PairRecord | threading.Event | _Stop] = queue.Queue(
            maxsize=config.queue_size
        )
        self._thread: threading.Thread | None = None
        self.background_priority: bool | None = None  # thread lowered to nice 19; None: not started
        self._closing = False
        self._stop_queued = False
        # Guards the drop counters (bumped from two threads) and the start/close state.
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0  # bytes in the current file
        self._failing = False  # inside a run of write errors, logged once per run
        self.written = 0
        self.dropped = 0
        self.bytes_written = 0
        self.drops: dict[str, int] = {}

    # -- producer side (event loop) --------------------------------------------------

    def submit(self, record: PairRecord) -> None:
        """Offer a record to the log; never blocks.

        Records whose request id is not sampled at ``config.sample_rate`` are skipped
        silently. A sampled record that finds the queue full, or the writer closed, is
        counted as dropped.
        """
        if not is_sampled(record.request_id, self.config.sample_rate, salt=self.salt):
            return
        # Under the lock so that no record can slip in behind close()'s stop marker,
        # where the thread would never see it. Uncontended, so cheap on the loop.
        with self._lock:
            if self._closing:
                reason = "closed"
            else:
                try:
                    self._queue.put_nowait(record)
                    return
                except queue.Full:
                    reason = "queue_full"
        self._drop(reason)

    @property
    def pending(self) -> int:
        """Records and markers waiting in the queue (approximate)."""
        return self._queue.qsize()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread; a second call does nothing, a call after close raises."""
        with self._lock:
            if self._closing:
                raise PairLogError("the pair log writer is closed")
            if self._thread is not None:
                return
            self._thread = self._new_thread()
            self._thread.start()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name="shadowproxy-pairlog", daemon=True)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted before this call is handed to the OS.

        Blocks the calling thread: call it from a worker thread, not the event loop. The
        data is written, not synced to disk.

        Returns
        -------
        bool
            False when the writer is not running or did not get there within ``timeout``.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        marker = threading.Event()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        # Waited on in slices: if close() ended the thread just before the marker was
        # queued, nobody will ever set it, and the thread's end is the answer.
        while not marker.wait(min(_FLUSH_SLICE_S, max(0.0, deadline - time.monotonic()))):
            if not thread.is_alive() or time.monotonic() >= deadline:
                return marker.is_set()
        return True

    def close(self, timeout: float) -> bool:
        """Write every queued record, then stop the thread and close the file.

        Records submitted from now on are dropped as ``"closed"``. A writer never started
        is started here so its queue still reaches the file. Safe to call again.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the queue to drain and the thread to end.

        Returns
        -------
        bool
            True when the thread finished; False when it could not in time (it is a daemon
            thread and keeps draining in the background).
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closing = True
            queue_stop = not self._stop_queued
            self._stop_queued = True
            if self._thread is None:
                self._thread = self._new_thread()
                self._thread.start()
            thread = self._thread
        if queue_stop:
            try:
                self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                # The backlog did not shrink in time; a later close() queues the marker.
                with self._lock:
                    self._stop_queued = False
                return False
        thread.join(max(0.0, deadline - time.monotonic()))
        return not thread.is_alive()

    # -- writer thread -------------------------------------------------------------

    def _run(self) -> None:
        # Beside production's event loop, never ahead of it (see shadowproxy.background).
        self.background_priority = run_in_background()
        stopping = False
        while not stopping:
            item = self._queue.get()
            lines: list[bytes] = []
            markers: list[threading.Event] = []
            while True:
                if isinstance(item, _Stop):
                    stopping = True
                    break
                if isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    let_loop_run()
                    line = self._encode(item)
                    if line is not None:
                        lines.append(line)
                if len(lines) >= _BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if lines:
                try:
                    self._write(lines)
                except Exception:
                    # OSError is handled inside; anything else is a defect, but the thread
                    # must survive it or every later flush() would wait forever.
                    log.exception("pair log: unexpected error writing %s", self.path)
                    self._close_fd()
                    for _ in lines:
                        self._drop("write_error")
            for marker in markers:
                marker.set()
        self._finish()

    def _encode(self, record: PairRecord) -> bytes | None:
        try:
            return dumps_record(
                record, max_body_bytes=self.config.max_body_bytes, redact=self._rules
            )
        except Exception:
            # A record the codec cannot serialise (a str with lone surrogates, say) must
            # not end the thread; it is counted and skipped.
            log.exception("pair log: could not encode record %r", record.request_id)
            self._drop("encode_error")
            return None

    def _write(self, lines: list[bytes]) -> None:
        """Append lines, rotating between them so that no line spans two files."""
        max_bytes = self.config.max_bytes
        i = 0
        while i < len(lines):
            try:
                if self._fd is None:
                    self._open()
                if self._size > 0 and self._size + len(lines[i]) > max_bytes:
                    self._rotate()
            except OSError as exc:
                self._close_fd()
                self._write_failed(exc, 1)
                i += 1
                continue
            # As many lines as fit; the first always goes, since a line longer than
            # max_bytes can only ever be written alone into an empty file.
            j = i + 1
            size = self._size + len(lines[i])
            while j < len(lines) and size + len(lines[j]) <= max_bytes:
                size += len(lines[j])
                j += 1
            self._append(lines[i:j])
            i = j

    def _append(self, lines: list[bytes]) -> None:
        assert self._fd is not None
        data = memoryview(b"".join(lines))
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError as exc:
            whole, boundary = _complete_lines(lines, done)
            if boundary != done:
                # Cut the torn line back off; failing that, the next open starts with a
                # newline so the fragment stays a line of its own.
                try:
                    os.ftruncate(self._fd, self._size + boundary)
                    done = boundary
                except OSError:
                    pass
            self._account(whole, done)
            self._close_fd()
            self._write_failed(exc, len(lines) - whole)
            return
        self._account(len(lines), done)
        if self._failing:
            self._failing = False
            log.warning("pair log: writing to %s again", self.path)

    def _account(self, records: int, nbytes: int) -> None:
        self._size += nbytes
        self.bytes_written += nbytes
        self.written += records
        if records and self._on_written is not None:
            try:
                self._on_written(records)
            except Exception:
                log.exception("pair log: on_written callback failed")

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Read-write, not write-only, so that _ends_with_newline can read the last byte.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            self._size = os.fstat(fd).st_size
            if self._size and not _ends_with_newline(fd):
                # A torn line from a crash or a failed write: end it, so the next record
                # starts a line of its own.
                written = os.write(fd, b"\n")
                self._size += written
                self.bytes_written += written
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def _rotate(self) -> None:
        self._close_fd()
        backups = self.config.backups
        # Backups beyond the count, left by a config that kept more, are older than every
        # kept one: left in place, they would be read before the newer files with a gap
        # between (log_files reads whatever the folder holds).
        for number, stale in _backups(self.path):
            if number > backups:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
        if backups == 0:
            fd = os.open(self.path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.close(fd)
        else:
            for n in range(backups - 1, 0, -1):
                older = _backup(self.path, n)
                if older.exists():
                    os.replace(older, _backup(self.path, n + 1))
            if self.path.exists():
                os.replace(self.path, _backup(self.path, 1))
        self._open()

    def _close_fd(self, sync: bool = False) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Best effort: the descriptor is released either way, and a failure here has no
        # record left to count against.
        if sync:
            with contextlib.suppress(OSError):
                os.fsync(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def _finish(self) -> None:
        # Only flush markers can follow the stop marker (submit() refuses records once
        # closing); release their waiters.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, threading.Event):
                item.set()
        self._close_fd(sync=True)

    def _write_failed(self, exc: OSError, records: int) -> None:
        if not self._failing:
            self._failing = True
            log.error("pair log: cannot write to %s: %s (records are dropped)", self.path, exc)
        for _ in range(records):
            self._drop("write_error")

    def _drop(self, reason: str) -> None:
        with self._lock:
            self.dropped += 1
            self.drops[reason] = self.drops.get(reason, 0) + 1
        if self._on_drop is not None:
            try:
                self._on_drop(reason)
            except Exception:
                log.exception("pair log: on_drop callback failed")


def _complete_lines(lines: list[bytes], done: int) -> tuple[int, int]:
    """How many of ``lines`` fit whole in the first ``done`` bytes, and their length."""
    count = total = 0
    for line in lines:
        if total + len(line) > done:
            break
        total += len(line)
        count += 1
    return count, total


def _ends_with_newline(fd: int) -> bool:
    """Whether the file open as ``fd`` ends with a newline; False if it cannot be read.

    An unneeded newline only adds a blank line, which readers skip.
    """
    try:
        return os.pread(fd, 1, os.fstat(fd).st_size - 1) == b"\n"
    except OSError:
        return False


def _backup(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


# -- reading ---------------------------------------------------------------------------


@dataclass
class ReadStats:
    """What :func:`read_pair_log` saw, filled in as it reads.

    Attributes
    ----------
    files : list of Path
        The files read, in order.
    records : int
        Records yielded.
    torn : int
        Final lines of a file with no newline that did not parse: a write cut short.
    invalid : int
        Complete lines that are not a valid record (including fragments of torn writes
        that a later write closed with a newline).
    """

    files: list[Path] = field(default_factory=list)
    records: int = 0
    torn: int = 0
    invalid: int = 0


def log_files(path: Path) -> list[Path]:
    """The files of one rotated log, oldest first: ``path.N`` .. ``path.1``, ``path``.

    Backups are found by listing the folder, so numbering gaps and backups beyond the
    configured count are still read.
    """
    files = [p for _, p in sorted(_backups(path), reverse=True)]
    if path.is_file():
        files.append(path)
    return files


def _backups(path: Path) -> list[tuple[int, Path]]:
    """The rotated backups of ``path`` in its folder, with their numbers (any order)."""
    pattern = re.compile(re.escape(path.name) + r"\.([1-9][0-9]*)")
    found: list[tuple[int, Path]] = []
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            match = pattern.fullmatch(entry.name)
            if match is not None and entry.is_file():
                found.append((int(match.group(1)), entry))
    return found


def read_pair_log(paths: Iterable[Path], *, stats: ReadStats | None = None) -> Iterator[PairRecord]:
    """Yield the records of one or more pair logs, each read oldest file first.

    Parameters
    ----------
    paths : iterable of Path
        Log paths as configured (``pair_log.path``); each one's rotated backups are read
        first, oldest to newest, then the file itself.
    stats : ReadStats, optional
        Filled in while reading: files read, records yielded, torn and invalid lines
        skipped.

    Raises
    ------
    FileNotFoundError
        A path has neither a file nor any backup.
    """
    stats = ReadStats() if stats is None else stats
    for path in paths:
        for file in _existing_log_files(Path(path)):
            stats.files.append(file)
            yield from _read_file(file, stats)


def _existing_log_files(path: Path) -> list[Path]:
    files = log_files(path)
    if not files:
        raise FileNotFoundError(f"no pair log at {path} (nor any rotated backup)")
    return files


def _read_file(file: Path, stats: ReadStats) -> Iterator[PairRecord]:
    with file.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = record_from_dict(orjson.loads(line))
            except (ValueError, PairLogError):  # JSONDecodeError is a ValueError
                if line.endswith(b"\n"):
                    stats.invalid += 1
                else:
                    stats.torn += 1
                continue
            stats.records += 1
            yield record


# Every line the writer appends starts so; a torn line is a prefix of one.
_RECORD_START = b'{"schema":"' + SCHEMA.encode() + b'"'

# The first bytes of compressed files, often what rotation tools leave behind. A pair log
# starts with a record, "{", so none of them can begin one.
_COMPRESSED = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
}

# Longest quote of a line's problem in a message: a bad value is shown with repr().
_PROBLEM_CHARS = 200
_JSON_POSITION = re.compile(r": line \d+ column \d+ \(char \d+\)$")


def check_pair_logs(paths: Iterable[Path]) -> None:
    """Check that each path is a pair log before any of it is used.

    Every file of each log (rotated backups included) must hold at least one pair record,
    or no line at all: a file of which no line is a record is something else given by
    mistake (a compressed backup, a snapshot, a config), and reading it would only count
    unreadable lines. The one exception is a file whose only line is a record cut short by
    a crash during its first write. A file is read only up to its first record.

    Parameters
    ----------
    paths : iterable of Path
        Log paths as given to :func:`read_pair_log`.

    Raises
    ------
    FileNotFoundError
        A path has neither a file nor any backup.
    PairLogError
        A file is not a pair log or cannot be read; the message starts with the file and
        says why (``pairs.jsonl.1: not a pair log (gzip-compressed; decompress it
        first)``).
    """
    for path in paths:
        for file in _existing_log_files(Path(path)):
            try:
                problem = _not_a_pair_log(file)
            except OSError as exc:
                raise PairLogError(f"{file}: cannot read: {exc.strerror or exc}") from exc
            if problem is not None:
                raise PairLogError(f"{file}: not a pair log ({problem})")


def _not_a_pair_log(file: Path) -> str | None:
    """Why ``file`` is not a pair log; None when it holds a record or nothing at all."""
    unreadable = 0
    first: tuple[int, bytes, str] | None = None  # line number, line, problem
    with file.open("rb") as f:
        # Known at once, without reading through what may be a large archive.
        head = f.read(max(len(magic) for magic in _COMPRESSED))
        kind = next((k for magic, k in _COMPRESSED.items() if head.startswith(magic)), None)
        if kind is not None:
            return f"{kind}-compressed; decompress it first"
        f.seek(0)
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                loads_record(line)
            except (ValueError, PairLogError) as exc:
                unreadable += 1
                if first is None:
                    first = (n, line, str(exc))
                continue
            return None
    if first is None:
        return None  # empty: a log with nothing in it yet
    n, line, problem = first
    if unreadable == 1 and not line.endswith(b"\n") and _starts_like_a_record(line):
        return None  # a crash cut the first write short
    if b"\0" in line:
        return "binary data, not JSON lines"
    if not _is_utf8(line):
        return f"line {n} is not UTF-8 text"
    if line.strip() in (b"{", b"["):
        return "a JSON document spread over lines, not one pair record per line"
    # The parser's own position is within the line, which the message already names.
    problem = _JSON_POSITION.sub("", problem)
    if len(problem) > _PROBLEM_CHARS:
        problem = problem[:_PROBLEM_CHARS] + "..."
    if unreadable == 1:
        return f"its one line is not a pair record: {problem}"
    return f"none of its {unreadable} lines is a pair record; line {n}: {problem}"


def _starts_like_a_record(line: bytes) -> bool:
    return line.startswith(_RECORD_START) or _RECORD_START.startswith(line)


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
