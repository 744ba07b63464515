"""Child processes of the benchmark, and the small HTTP calls that control them.

Every child runs in its own session with ``PR_SET_PDEATHSIG`` so it dies with the harness even
on SIGKILL; on a normal exit, an exception or Ctrl-C it gets its stop signal, a grace period,
then SIGKILL for its whole process group.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .cpu import descendants, process_start
from .load import BODY, PATH, LoadError, die_with_parent, require_binary

REPO = Path(__file__).resolve().parent.parent


class StartError(RuntimeError):
    pass


def http_call(
    port: int,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def infer_once(port: int, timeout: float = 2.0) -> int:
    return http_call(port, "POST", PATH, BODY, timeout)[0]


@contextlib.contextmanager
def managed_process(
    cmd: list[str],
    *,
    cpu: int,
    log: Path,
    stop_signal: int = signal.SIGTERM,
    grace_s: float = 10.0,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` pinned to ``cpu``; always stopped (then killed) on exit."""
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
            cwd=cwd,
            env=env,
        )
        try:
            yield proc
        finally:
            _stop(proc, stop_signal, grace_s)


def _stop(proc: subprocess.Popen[bytes], stop_signal: int, grace_s: float) -> None:
    # Children that lead their own session (shadowproxy's executor workers) are out of reach
    # of the group kill below; note them now, while their parent still links them to us.
    spawned = [(pid, process_start(pid)) for pid in descendants(proc.pid)]
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(stop_signal)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left in the group (nginx workers, executors) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    for pid, started in spawned:
        if started is not None and process_start(pid) == started:  # alive, not a reused pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def log_tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_until(
    check: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    what: str,
    logs: list[Path],
    timeout_s: float,
) -> None:
    """Poll ``check`` until it holds; StartError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tails = "\n".join(log_tail(p) for p in logs)
            raise StartError(f"{what} exited with {proc.returncode}:\n{tails}")
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            if check():
                return
        time.sleep(0.05)
    tails = "\n".join(log_tail(p) for p in logs)
    raise StartError(f"{what} not ready after {timeout_s:.0f}s:\n{tails}")


def fresh_dir(workdir: Path, name: str) -> Path:
    """``workdir/name``, or ``name.2``, ``name.3``… when a target is started again."""
    path, n = workdir / name, 1
    while path.exists():
        n += 1
        path = workdir / f"{name}.{n}"
    path.mkdir(parents=True)
    return path


def run_module_pinned(args: list[str], *, cpu: int, timeout_s: float, what: str) -> str:
    """``python -m ARGS`` in a child pinned to ``cpu``, bounded in time; its standard output.

    LoadError, naming ``what``, if it fails or overruns.
    """
    cmd = [require_binary("taskset"), "-c", str(cpu), sys.executable, "-m", *args]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=REPO,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{what} did not finish within {timeout_s:.0f}s") from exc
    if proc.returncode != 0:
        raise LoadError(f"{what} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout
