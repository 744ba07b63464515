"""The targets of a run: direct access, nginx and shadowproxy in front of the backends.

Each target is started as a context manager on the proxy CPU (``direct`` has nothing to
start) and described by a :class:`Target`: where to send requests, which process tree to
charge CPU time to, and how to count what reached its candidates.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowproxy.devtools.ports import free_ports

from . import nginx
from .backends import Backends, nginx_instance
from .cpu import rss_bytes, tree_rss_bytes
from .load import PATH, PROXY_CPU, LoadError
from .model import BuiltModel
from .procs import (
    REPO,
    StartError,
    fresh_dir,
    http_call,
    infer_once,
    log_tail,
    managed_process,
    wait_until,
)

CANDIDATE_TIMEOUT_MS = 100

TARGETS: dict[str, str] = {
    "direct": "wrk → stub backend",
    "nginx": "wrk → nginx (keep-alive upstream pool) → backend",
    "nginx_mirror": "nginx + `mirror` (request body on) → candidate backend",
    "shadowproxy_off": "wrk → shadowproxy (no candidates) → backend",
    "shadowproxy_http": "shadowproxy + 1 HTTP candidate at sample_rate 1.0",
    "shadowproxy_onnx": "shadowproxy + 1 local ONNX candidate (process executor), sample_rate 1.0",
    "shadowproxy_both": "shadowproxy + the HTTP and the local ONNX candidate, comparator on",
}
PRODUCTION_NAME = "prod"
HTTP_CANDIDATE = "cand"  # the candidates' model labels in shadowproxy's /metrics
LOCAL_CANDIDATE = "onnx"
LOCAL_BREAKER = "{reset_s: 0.5}"
NEEDS_MODEL = frozenset({"shadowproxy_onnx", "shadowproxy_both"})  # run the ONNX model
# What the comparator reads in both the stub backends' answers and the ONNX model's outputs.
COMPARE_OUTPUTS = "{score: probabilities, label: label}"


# ---------------------------------------------------------------------------------------------
# What shadowproxy reports


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


GC_PAUSE = "shadowproxy_gc_pause_seconds"


def gc_full_collections(metrics_text: str) -> dict[str, Any]:
    """The full garbage collections so far, from ``shadowproxy_gc_pause_seconds``
    (generation 2): ``count``, ``sum_s`` and the cumulative count per bucket bound."""
    out: dict[str, Any] = {"count": 0.0, "sum_s": 0.0, "buckets": {}}
    for name, labels, value in _RE_SAMPLE.findall(metrics_text):
        if not name.startswith(GC_PAUSE):
            continue
        lab = dict(_RE_LABEL.findall(labels))
        if lab.get("generation") != "2":
            continue
        if name == f"{GC_PAUSE}_count":
            out["count"] = float(value)
        elif name == f"{GC_PAUSE}_sum":
            out["sum_s"] = float(value)
        elif name == f"{GC_PAUSE}_bucket":
            out["buckets"][float(lab["le"])] = float(value)
    return out


def compare_summary(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The comparator's counters from an ``/admin/snapshot`` document.

    ``processed`` records folded, ``dropped`` records refused by its full queue, ``busy_s``
    the comparator thread's CPU time, and per target the pairs it saw (``requests``) and
    the pairs whose answers it could compare (``compared``).
    """
    state = snapshot["comparator"]
    targets = snapshot.get("targets", {})
    return {
        "processed": state["processed"],
        "dropped": state["dropped"],
        "busy_s": state["busy_s"],
        "requests": {name: t["requests"] for name, t in targets.items()},
        "compared": {name: t["compared"] for name, t in targets.items()},
    }


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    proxy_pid: int | None = None  # process tree whose CPU time is charged to this target
    admin_port: int | None = None  # shadowproxy only: /metrics, /admin/snapshot
    proc: subprocess.Popen[bytes] | None = field(default=None, compare=False, repr=False)
    log: Path | None = None
    candidates: tuple[str, ...] = ()  # shadowproxy: its candidates' model labels in /metrics
    # Requests the candidate's own server has received so far, where it counts them.
    candidate_received: Callable[[], int] | None = field(default=None, compare=False, repr=False)
    compares: bool = False  # shadowproxy with the comparator on

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    @property
    def mirrors(self) -> bool:
        return bool(self.candidates) or self.candidate_received is not None

    @property
    def is_shadowproxy(self) -> bool:
        return self.admin_port is not None

    def _admin(self, path: str) -> bytes:
        assert self.admin_port is not None
        status, body = http_call(self.admin_port, "GET", path, timeout=10.0)
        if status != 200:
            raise LoadError(f"{self.name}: GET {path} answered {status}")
        return body

    def proxy_counts(self) -> dict[tuple[str, str], float] | None:
        """shadowproxy's request counters per (model, outcome) from /metrics, if it has any."""
        if self.admin_port is None:
            return None
        return requests_by_outcome(self._admin("/metrics").decode())

    def gc_full(self) -> dict[str, Any] | None:
        """shadowproxy's full garbage collections so far (see ``gc_full_collections``)."""
        if self.admin_port is None:
            return None
        return gc_full_collections(self._admin("/metrics").decode())

    def production_served(self) -> float:
        counts = self.proxy_counts() or {}
        return sum(v for (m, _), v in counts.items() if m == PRODUCTION_NAME)

    def compare_state(self) -> dict[str, Any] | None:
        """The comparator's counters (see :func:`compare_summary`), if it runs."""
        if not self.compares:
            return None
        return compare_summary(json.loads(self._admin("/admin/snapshot")))

    def settled_compare_state(
        self, timeout_s: float = 5.0, quiet_s: float = 0.2
    ) -> dict[str, Any] | None:
        """:meth:`compare_state` once the comparator has folded what was queued: when its
        ``processed`` count stops moving for ``quiet_s`` (or after ``timeout_s``)."""
        state = self.compare_state()
        deadline = time.monotonic() + timeout_s
        while state is not None and time.monotonic() < deadline:
            time.sleep(quiet_s)
            again = self.compare_state()
            assert again is not None
            if again["processed"] == state["processed"]:
                return again
            state = again
        return state

    def rss(self) -> dict[str, float] | None:
        """Resident memory in MB of the proxy process and of its whole tree."""
        if self.proxy_pid is None:
            return None
        return {
            "rss_mb": rss_bytes(self.proxy_pid) / 1e6,
            "tree_rss_mb": tree_rss_bytes(self.proxy_pid) / 1e6,
        }

    def is_alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise :class:`StartError` (with the log's tail) if the proxy process has exited."""
        if self.proc is None or self.proc.poll() is None:
            return
        code = self.proc.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        tail = log_tail(self.log) if self.log else ""
        raise StartError(f"{self.name}: the proxy process {how}\n{tail}".rstrip())


@contextlib.contextmanager
def nginx_target(
    name: str,
    production_port: int,
    workdir: Path,
    *,
    candidate_port: int | None = None,
    candidate_received: Callable[[], int] | None = None,
) -> Iterator[Target]:
    """nginx as a reverse proxy; with ``candidate_port``, every request is mirrored there."""
    (port,) = free_ports(1)
    prefix = fresh_dir(workdir, name)
    conf = nginx.render_proxy(
        prefix,
        port,
        production_port,
        candidate_port,
        candidate_timeout_ms=CANDIDATE_TIMEOUT_MS,
    )
    with nginx_instance(name, conf, prefix, port=port, cpu=PROXY_CPU) as proc:
        yield Target(
            name,
            port,
            proxy_pid=proc.pid,
            proc=proc,
            log=prefix / "error.log",
            candidate_received=candidate_received,
        )


@dataclass(frozen=True)
class Candidate:
    """A candidate of a shadowproxy target: over HTTP at ``port``, or the local ONNX model."""

    name: str
    port: int | None = None  # None: the run's ONNX model, run by a process executor
    executor: str = "{kind: process}"  # YAML flow mapping; the defaults are what is measured
    breaker: str = ""  # YAML flow mapping; empty: the default breaker

    def yaml(self, model: BuiltModel | None) -> str:
        common = f"sample_rate: 1.0, timeout_ms: {CANDIDATE_TIMEOUT_MS}"
        if self.breaker:
            common += f", breaker: {self.breaker}"
        if self.port is not None:
            return (
                f'  - {{name: {self.name}, version: "2", '
                f'url: "http://127.0.0.1:{self.port}", {common}}}'
            )
        if model is None:
            raise ValueError("a local ONNX candidate needs the benchmark model")
        return (
            f'  - {{name: {self.name}, version: "2", model: {model.yaml()}, '
            f"executor: {self.executor}, {common}}}"
        )


def shadowproxy_config(
    port: int,
    admin_port: int,
    production_port: int,
    candidates: Sequence[Candidate] = (),
    *,
    model: BuiltModel | None = None,
    compare: bool = False,
) -> str:
    """The YAML of one shadowproxy target."""
    lines = [
        f"listen: {{host: 127.0.0.1, port: {port}}}",
        f"admin: {{host: 127.0.0.1, port: {admin_port}}}",
        f'production: {{name: {PRODUCTION_NAME}, version: "1", '
        f'url: "http://127.0.0.1:{production_port}", timeout_ms: 2000}}',
    ]
    if candidates:
        lines += ["candidates:", *(c.yaml(model) for c in candidates)]
    else:
        lines.append("candidates: []")
    if compare:
        lines.append(f"compare: {{enabled: true, outputs: {COMPARE_OUTPUTS}}}")
    else:
        # The proxy path alone: the comparator costs the proxy process CPU per pair of its
        # own, measured by shadowproxy_both and by ``python -m bench comparator``.
        lines.append("compare: {enabled: false}")
    lines.append("shutdown: {drain_delay_s: 0, grace_s: 2}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def shadowproxy_target(
    name: str,
    production_port: int,
    workdir: Path,
    *,
    candidates: Sequence[Candidate] = (),
    model: BuiltModel | None = None,
    compare: bool = False,
    env: dict[str, str] | None = None,
    candidate_received: Callable[[], int] | None = None,
) -> Iterator[Target]:
    """``python -m shadowproxy serve`` on the proxy CPU; ready once /healthz/ready is 200.

    ``env`` is added to the harness's environment (the executor passes it on to its workers).
    """
    port, admin_port = free_ports(2)
    home = fresh_dir(workdir, name)
    config = home / "shadowproxy.yaml"
    config.write_text(
        shadowproxy_config(
            port, admin_port, production_port, candidates, model=model, compare=compare
        )
    )
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    cmd = [sys.executable, "-m", "shadowproxy", "serve", "--config", str(config)]
    log = home / "shadowproxy.log"

    def ready() -> bool:
        # Readiness needs one answer from production, so warm up through the traffic port.
        with contextlib.suppress(OSError, http.client.HTTPException):
            infer_once(port, timeout=1.0)
        return http_call(admin_port, "GET", "/healthz/ready", timeout=1.0)[0] == 200

    with managed_process(cmd, cpu=PROXY_CPU, log=log, grace_s=10.0, cwd=REPO, env=full_env) as proc:
        wait_until(ready, proc, f"shadowproxy ({name})", [log], timeout_s=60)
        if infer_once(port) != 200:
            raise StartError(f"shadowproxy ({name}) is ready but does not answer 200")
        yield Target(
            name,
            port,
            proxy_pid=proc.pid,
            admin_port=admin_port,
            proc=proc,
            log=log,
            candidates=tuple(c.name for c in candidates),
            candidate_received=candidate_received,
            compares=compare,
        )


def start_target(
    stack: contextlib.ExitStack,
    name: str,
    be: Backends,
    workdir: Path,
    model: BuiltModel | None = None,
) -> Target:
    """Start target ``name``; ``model`` is the ONNX file of the local candidates."""
    if name == "direct":
        return Target(name, be.production_port)
    if name in ("nginx", "nginx_mirror"):
        mirror = name == "nginx_mirror"
        return stack.enter_context(
            nginx_target(
                name,
                be.production_port,
                workdir,
                candidate_port=be.candidate_port if mirror else None,
                candidate_received=be.candidate_requests if mirror else None,
            )
        )
    http = Candidate(HTTP_CANDIDATE, be.candidate_port)
    # Its worker runs under SCHED_IDLE on the proxy's core: wrk's saturation starves it, its
    # requests are dropped as starved and its breaker opens. A short reset lets it serve
    # again in the open-loop run at half load that follows within seconds (the default is
    # 10 s).
    local = Candidate(LOCAL_CANDIDATE, breaker=LOCAL_BREAKER)
    candidates = {
        "shadowproxy_off": (),
        "shadowproxy_http": (http,),
        "shadowproxy_onnx": (local,),
        "shadowproxy_both": (http, local),
    }.get(name)
    if candidates is None:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
    return stack.enter_context(
        shadowproxy_target(
            name,
            be.production_port,
            workdir,
            candidates=candidates,
            model=model,
            compare=name == "shadowproxy_both",
            candidate_received=be.candidate_requests if http in candidates else None,
        )
    )
