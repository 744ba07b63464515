"""The model servers behind every target, in one of two profiles, on the load-generator CPU.

``nginx``
    C-speed stubs: two nginx instances answering a fixed KServe v2 response at once, so the
    backends are never the bottleneck and every figure is the proxy's.
``python2ms``
    Python model servers (:mod:`bench.stubserver` on uvloop) that answer the same response
    after 2 ms, the latency of a small real model, so figures show the proxy in front of a
    realistic service time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shadowproxy.devtools.ports import free_ports

from . import nginx
from .load import LOAD_CPU, LoadError, require_binary
from .procs import REPO, http_call, infer_once, managed_process, wait_until

PROFILES: dict[str, str] = {
    "nginx": "nginx stubs answering at once, at C speed, no model time",
    "python2ms": "Python model servers (asyncio on uvloop) answering 2 to 3 ms after each request",
}
PYTHON_MODEL_DELAY_MS = 2.0


def nginx_requests(status_port: int) -> int:
    """Requests handled so far by a stub nginx, from its ``stub_status`` page."""
    status, text = http_call(status_port, "GET", "/_status")
    m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)\s*\n", text)
    if status != 200 or m is None:
        raise LoadError(f"unexpected stub_status answer ({status}): {text!r}")
    return int(m.group(3)) - 1  # not counting this status request itself


def stub_requests(port: int, attempts: int = 10) -> int:
    """Inference requests received so far by a :mod:`bench.stubserver`.

    Retried for a while: a server in a crash loop resets every connection while "down".
    """
    for attempt in range(attempts):
        try:
            status, body = http_call(port, "GET", "/_status")
            break
        except (OSError, http.client.HTTPException):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)
    if status != 200:
        raise LoadError(f"stub server on port {port}: /_status answered {status}")
    return int(json.loads(body)["requests"])


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
        wait_until(
            lambda: infer_once(port, timeout=1.0) == 200,
            proc,
            f"nginx {name}",
            [log, prefix / "error.log"],
            timeout_s=10,
        )
        yield proc


@contextlib.contextmanager
def stub_server(
    name: str, log: Path, port: int, *options: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A :mod:`bench.stubserver` on the load CPU; ready once it answers ``/_status``."""
    cmd = [sys.executable, "-m", "bench.stubserver", f"--port={port}", *options]
    with managed_process(cmd, cpu=LOAD_CPU, log=log, grace_s=5.0, cwd=REPO) as proc:
        wait_until(lambda: stub_requests(port) >= 0, proc, name, [log], timeout_s=20)
        yield proc


@dataclass(frozen=True)
class Backends:
    production_port: int
    candidate_port: int
    profile: str = "nginx"

    def candidate_requests(self) -> int:
        """Requests the candidate backend has received so far."""
        if self.profile == "nginx":
            return nginx_requests(self.candidate_port)
        return stub_requests(self.candidate_port)


@contextlib.contextmanager
def backends(workdir: Path, profile: str = "nginx") -> Iterator[Backends]:
    """The production and candidate backends of ``profile``, on the load-generator CPU."""
    if profile not in PROFILES:
        raise ValueError(f"unknown backend profile {profile!r}; known: {', '.join(PROFILES)}")
    prod_port, cand_port = free_ports(2)
    with contextlib.ExitStack() as stack:
        for role, port in (("production", prod_port), ("candidate", cand_port)):
            where = workdir / f"backend_{role}"
            if profile == "nginx":
                conf = nginx.render_backend(where, port)
                stack.enter_context(
                    nginx_instance(f"{role} backend", conf, where, port=port, cpu=LOAD_CPU)
                )
            else:
                where.mkdir(parents=True, exist_ok=True)
                stack.enter_context(
                    stub_server(
                        f"{role} model server",
                        where / "stubserver.log",
                        port,
                        f"--delay-ms={PYTHON_MODEL_DELAY_MS}",
                        "--loop=uvloop",
                    )
                )
        yield Backends(prod_port, cand_port, profile)
