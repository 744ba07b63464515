"""Start and stop everything the benchmark talks to, each as a context manager.

Every child runs in its own session with ``PR_SET_PDEATHSIG`` so it dies with the harness even
on SIGKILL; on a normal exit, an exception or Ctrl-C it gets its stop signal, a grace period,
then SIGKILL for its whole process group.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shadowproxy.devtools.ports import free_ports

from . import nginx
from .cpu import descendants, process_start
from .load import (
    BODY,
    LOAD_CPU,
    PATH,
    PROXY_CPU,
    LoadError,
    die_with_parent,
    require_binary,
)
from .model import BuiltModel

REPO = Path(__file__).resolve().parent.parent
CANDIDATE_TIMEOUT_MS = 100

TARGETS: dict[str, str] = {
    "direct": "wrk → stub backend",
    "nginx": "wrk → nginx (keep-alive upstream pool) → backend",
    "nginx_mirror": "nginx + `mirror` (request body on) → candidate backend",
    "shadowproxy_off": "wrk → shadowproxy (no candidates) → backend",
    "shadowproxy_http": "shadowproxy + 1 HTTP candidate at sample_rate 1.0",
    "shadowproxy_onnx": "shadowproxy + 1 local ONNX candidate (process executor), sample_rate 1.0",
}
# Targets whose mirrors go to the candidate backend, which counts what it receives.
TO_CANDIDATE_BACKEND = frozenset({"nginx_mirror", "shadowproxy_http"})
# The candidate's model label in shadowproxy's /metrics, per target that has one.
CANDIDATE_NAME = {"shadowproxy_http": "cand", "shadowproxy_onnx": "onnx"}
PRODUCTION_NAME = "prod"
NEEDS_MODEL = frozenset({"shadowproxy_onnx"})  # started with the run's ONNX model


class StartError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Small HTTP helpers for control traffic (readiness, counters)


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


def backend_requests(status_port: int) -> int:
    """Requests handled so far by a stub backend, from its ``stub_status`` page."""
    status, text = http_call(status_port, "GET", "/_status")
    m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)\s*\n", text)
    if status != 200 or m is None:
        raise LoadError(f"unexpected stub_status answer ({status}): {text!r}")
    return int(m.group(3)) - 1  # not counting this status request itself


_RE_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)\{([^}]*)\}\s+(\S+)", re.M)
_RE_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def requests_by_outcome(metrics_text: str) -> dict[tuple[str, str], float]:
    """``shadowproxy_requests_total`` summed per (model, outcome)."""
    out: dict[tuple[str, str], float] = {}
    for name, labels, value in _RE_SAMPLE.findall(metrics_text):
        if name != "shadowproxy_requests_total":
            continue
        lab = dict(_RE_LABEL.findall(labels))
        key = (lab.get("model", ""), lab.get("outcome", ""))
        out[key] = out.get(key, 0.0) + float(value)
    return out


# ---------------------------------------------------------------------------------------------
# Child processes


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


def _log_tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _wait_until(
    check: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    what: str,
    logs: list[Path],
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tails = "\n".join(_log_tail(p) for p in logs)
            raise StartError(f"{what} exited with {proc.returncode}:\n{tails}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():
                return
        time.sleep(0.05)
    tails = "\n".join(_log_tail(p) for p in logs)
    raise StartError(f"{what} not ready after {timeout_s:.0f}s:\n{tails}")


# ---------------------------------------------------------------------------------------------
# nginx instances


@contextlib.contextmanager
def nginx_instance(
    name: str, conf: str, prefix: Path, *, port: int, cpu: int
) -> Iterator[subprocess.Popen[bytes]]:
    """An nginx master (+1 worker) running ``conf`` in the foreground from ``prefix``."""
    nginx.prepare_prefix(prefix)
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    cmd = [require_binary("nginx"), "-p", str(prefix), "-c", str(conf_path), "-g", "daemon off;"]
    log = prefix / "stdout.log"
    with managed_process(cmd, cpu=cpu, log=log, grace_s=5.0) as proc:
        _wait_until(
            lambda: infer_once(port, timeout=1.0) == 200,
            proc,
            f"nginx {name}",
            [log, prefix / "error.log"],
            timeout_s=10,
        )
        yield proc


@dataclass(frozen=True)
class Backends:
    production_port: int
    candidate_port: int

    def candidate_requests(self) -> int:
        return backend_requests(self.candidate_port)


@contextlib.contextmanager
def backends(workdir: Path) -> Iterator[Backends]:
    """The production and candidate stub backends, on the load-generator CPU."""
    prod_port, cand_port = free_ports(2)
    with contextlib.ExitStack() as stack:
        for role, port in (("production", prod_port), ("candidate", cand_port)):
            prefix = workdir / f"backend_{role}"
            stack.enter_context(
                nginx_instance(
                    f"{role} backend",
                    nginx.render_backend(prefix, port),
                    prefix,
                    port=port,
                    cpu=LOAD_CPU,
                )
            )
        yield Backends(prod_port, cand_port)


# ---------------------------------------------------------------------------------------------
# Targets


def _fresh_dir(workdir: Path, name: str) -> Path:
    """``workdir/name``, or ``name.2``, ``name.3``… when a target is started again."""
    path, n = workdir / name, 1
    while path.exists():
        n += 1
        path = workdir / f"{name}.{n}"
    path.mkdir(parents=True)
    return path


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    proxy_pid: int | None = None  # process tree whose CPU time is charged to this target
    admin_port: int | None = None  # shadowproxy only: /metrics
    proc: subprocess.Popen[bytes] | None = field(default=None, compare=False, repr=False)
    log: Path | None = None

    @property
    def description(self) -> str:
        return TARGETS[self.name]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    @property
    def mirrors(self) -> bool:
        return self.name in TO_CANDIDATE_BACKEND or self.name in CANDIDATE_NAME

    @property
    def to_candidate_backend(self) -> bool:
        return self.name in TO_CANDIDATE_BACKEND

    @property
    def candidate_name(self) -> str | None:
        """The candidate's model label in /metrics (shadowproxy targets with one)."""
        return CANDIDATE_NAME.get(self.name)

    @property
    def is_shadowproxy(self) -> bool:
        return self.admin_port is not None

    def proxy_counts(self) -> dict[tuple[str, str], float] | None:
        """shadowproxy's request counters per (model, outcome) from /metrics, if it has any."""
        if self.admin_port is None:
            return None
        status, text = http_call(self.admin_port, "GET", "/metrics")
        if status != 200:
            raise LoadError(f"{self.name}: GET /metrics answered {status}")
        return requests_by_outcome(text.decode())

    def is_alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise :class:`StartError` (with the log's tail) if the proxy process has exited."""
        if self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        tail = _log_tail(self.log) if self.log else ""
        raise StartError(f"{self.name}: the proxy process {how}\n{tail}".rstrip())


@contextlib.contextmanager
def nginx_target(name: str, be: Backends, workdir: Path, *, mirror: bool) -> Iterator[Target]:
    (port,) = free_ports(1)
    prefix = _fresh_dir(workdir, name)
    conf = nginx.render_proxy(
        prefix,
        port,
        be.production_port,
        be.candidate_port if mirror else None,
        candidate_timeout_ms=CANDIDATE_TIMEOUT_MS,
    )
    with nginx_instance(name, conf, prefix, port=port, cpu=PROXY_CPU) as proc:
        yield Target(name, port, proxy_pid=proc.pid, proc=proc, log=prefix / "error.log")


def shadowproxy_config(
    port: int, admin_port: int, be: Backends, *, candidate: str | None, model: BuiltModel | None
) -> str:
    """The YAML of one shadowproxy target; ``candidate`` is None, "http" or "onnx"."""
    lines = [
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        f"admin: {{host: 127.0.0.1, port: {admin_port}}}",
        f'production: {{name: {PRODUCTION_NAME}, version: "1", '
        f'url: "http://127.0.0.1:{be.production_port}", timeout_ms: 2000}}',
    ]
    if candidate == "http":
        lines += [
            "candidates:",
            '  - {name: cand, version: "2", '
            f'url: "http://127.0.0.1:{be.candidate_port}", sample_rate: 1.0, '
            f"timeout_ms: {CANDIDATE_TIMEOUT_MS}}}",
        ]
    elif candidate == "onnx":
        if model is None:
            raise ValueError("a local ONNX candidate needs the benchmark model")
        # The executor's own defaults (max_batch, max_wait_ms, workers…) are what is measured.
        lines += [
            "candidates:",
            f'  - {{name: onnx, version: "2", model: {model.yaml()}, '
            f"executor: {{kind: process}}, sample_rate: 1.0, timeout_ms: {CANDIDATE_TIMEOUT_MS}}}",
        ]
    elif candidate is None:
        lines.append("candidates: []")
    else:
        raise ValueError(f"unknown candidate kind {candidate!r}")
    # The proxy path is measured alone: the comparator costs the proxy process CPU per pair
    # of its own (``python -m bench comparator``), which these targets leave out.
    lines.append("compare: {enabled: false}")
    lines.append("shutdown: {drain_delay_s: 0, grace_s: 2}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def shadowproxy_target(
    name: str,
    be: Backends,
    workdir: Path,
    *,
    candidate: str | None,
    model: BuiltModel | None = None,
    python: str = sys.executable,
) -> Iterator[Target]:
    """``python -m shadowproxy serve`` on the proxy CPU; ready once /healthz/ready is 200."""
    port, admin_port = free_ports(2)
    home = _fresh_dir(workdir, name)
    config = home / "shadowproxy.yaml"
    config.write_text(shadowproxy_config(port, admin_port, be, candidate=candidate, model=model))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [python, "-m", "shadowproxy", "serve", "--config", str(config)]
    log = home / "shadowproxy.log"

    def ready() -> bool:
        # Readiness needs one answer from production, so warm up through the traffic port.
        with contextlib.suppress(OSError, http.client.HTTPException):
            infer_once(port, timeout=1.0)
        return http_call(admin_port, "GET", "/healthz/ready", timeout=1.0)[0] == 200

    with managed_process(cmd, cpu=PROXY_CPU, log=log, grace_s=10.0, cwd=REPO, env=env) as proc:
        _wait_until(ready, proc, f"shadowproxy ({name})", [log], timeout_s=60)
        if infer_once(port) != 200:
            raise StartError(f"shadowproxy ({name}) is ready but does not answer 200")
        yield Target(name, port, proxy_pid=proc.pid, admin_port=admin_port, proc=proc, log=log)


SHADOWPROXY_CANDIDATE = {
    "shadowproxy_off": None,
    "shadowproxy_http": "http",
    "shadowproxy_onnx": "onnx",
}


def start_target(
    stack: contextlib.ExitStack,
    name: str,
    be: Backends,
    workdir: Path,
    model: BuiltModel | None = None,
) -> Target:
    """Start target ``name``; ``model`` is the ONNX file of ``shadowproxy_onnx``."""
    if name == "direct":
        return Target(name, be.production_port)
    if name in ("nginx", "nginx_mirror"):
        return stack.enter_context(nginx_target(name, be, workdir, mirror=name == "nginx_mirror"))
    if name in SHADOWPROXY_CANDIDATE:
        kind = SHADOWPROXY_CANDIDATE[name]
        return stack.enter_context(
            shadowproxy_target(name, be, workdir, candidate=kind, model=model)
        )
    raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
