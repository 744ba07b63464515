"""Faulty candidates: production's latency while a candidate misbehaves (isolation runs).

A shadow proxy earns its place only if a bad candidate cannot hurt production. Each fault
below is a real server (or a real crash) on loopback; for each, a shadowproxy and an
nginx+``mirror`` are started with that candidate, and their production latency under the
same open-loop load is compared with the same proxy without a candidate (``shadowproxy_off``,
``nginx``). The servers run on the load-generator CPU with the backends, the proxies on
the proxy CPU, as every other target.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from shadowproxy.devtools.ports import free_ports
from shadowproxy.executor.faults import ENV_VAR as WORKER_FAULTS_ENV

from .backends import stub_requests, stub_server
from .load import LatencyProbe, latency_summary, no_deep_idle
from .model import BuiltModel
from .stubserver import refusing_port
from .targets import (
    HTTP_CANDIDATE,
    LOCAL_CANDIDATE,
    Candidate,
    Target,
    nginx_target,
    shadowproxy_target,
)

SLOW_FACTOR = 10  # the slow candidate takes this many times production's p50
CRASH_UP_MS, CRASH_DOWN_MS = 200, 100  # the HTTP crash loop: up, then reset and refusing
CRASH_ON_CALL = 20  # the local worker exits on its 20th batch, after every respawn
# The executor's defaults disable a candidate after 5 crashes in 60 s; a crash loop that
# stopped after 5 crashes would be measured as a disabled candidate. Everything else (the
# respawn backoff included) stays at its default.
CRASH_LOOP_EXECUTOR = "{kind: process, max_restarts: 1000000}"

FAULTS: dict[str, str] = {
    "slow": f"answers after {SLOW_FACTOR}× production's measured p50 latency",
    "hang": "accepts and reads every request, never answers",
    "down": "nothing listens: every connection is refused",
    "crash_http": (
        f"HTTP candidate in a crash loop: up {CRASH_UP_MS} ms, then every connection reset "
        f"and new ones reset for {CRASH_DOWN_MS} ms, again and again"
    ),
    "crash_local": (
        f"local ONNX candidate whose worker process exits on its {CRASH_ON_CALL}th batch, "
        "again after every respawn"
    ),
}
# nginx has no local candidates: it gets every fault of an HTTP candidate.
FAMILY_FAULTS: dict[str, tuple[str, ...]] = {
    "shadowproxy": tuple(FAULTS),
    "nginx_mirror": ("slow", "hang", "down", "crash_http"),
}
# The same proxy with shadowing off: what each family's figures are compared with.
BASELINE = {"shadowproxy": "shadowproxy_off", "nginx_mirror": "nginx"}
# The same proxy mirroring to a healthy candidate, measured at the isolation rate too: it
# splits a faulty candidate's inflation into what mirroring costs at that rate and what the
# fault adds on top.
HEALTHY = {"shadowproxy": "shadowproxy_http", "nginx_mirror": "nginx_mirror"}


def target_name(family: str, fault: str) -> str:
    return f"{family}_fault_{fault}"


@dataclass(frozen=True)
class FaultTarget:
    """A proxy whose candidate has ``fault``; ``family`` is shadowproxy or nginx_mirror."""

    family: str
    fault: str

    @property
    def name(self) -> str:
        return target_name(self.family, self.fault)

    @property
    def baseline(self) -> str:
        return BASELINE[self.family]

    @property
    def healthy(self) -> str:
        return HEALTHY[self.family]

    @property
    def needs_model(self) -> bool:
        """Whether it runs the run's ONNX model (the local candidate that crashes)."""
        return self.fault == "crash_local"

    @property
    def description(self) -> str:
        proxy = "shadowproxy" if self.family == "shadowproxy" else "nginx + `mirror`"
        return f"{proxy}, candidate {FAULTS[self.fault]}"


def plan(faults: Sequence[str], targets: Sequence[str]) -> list[FaultTarget]:
    """The fault targets of a run: each fault for each family whose baseline is measured."""
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    return [
        FaultTarget(family, fault)
        for family, supported in FAMILY_FAULTS.items()
        if BASELINE[family] in targets
        for fault in faults
        if fault in supported
    ]


def p50_us(port: int, *, requests: int, warmup: int, idle_qos: bool) -> float:
    """Median latency of sequential requests to ``port`` on one keep-alive connection."""
    probe = LatencyProbe("127.0.0.1", port)
    try:
        with no_deep_idle(idle_qos):
            probe.send(warmup, keep=False)
            probe.send(requests)
    finally:
        probe.close()
    return latency_summary(probe.samples)["p50_us"]


@dataclass
class FaultServers:
    """The running faulty candidates: a port per HTTP fault, and how to count its requests."""

    ports: dict[str, int] = field(default_factory=dict)
    received: dict[str, Callable[[], int]] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def fault_servers(
    workdir: Path,
    faults: Sequence[str],
    production_port: int,
    *,
    idle_qos: bool = True,
    probe_requests: int = 1000,
) -> Iterator[FaultServers]:
    """Start the server of every HTTP fault in ``faults``.

    "10× slower" is relative to the profile: production's p50 is measured first (sequential
    requests straight to the production backend), the slow server answers after ten times
    that, and its own p50 is measured too (on fewer requests: each takes 10× as long), so
    the factor actually achieved is on record.
    """
    servers = FaultServers()
    with contextlib.ExitStack() as stack:
        if "slow" in faults:
            production_p50 = p50_us(
                production_port,
                requests=probe_requests,
                warmup=max(probe_requests // 10, 10),
                idle_qos=idle_qos,
            )
            servers.calibration = {
                "production_p50_us": production_p50,
                "slow_factor_asked": SLOW_FACTOR,
                "slow_delay_us": SLOW_FACTOR * production_p50,
            }
        options = {
            "slow": [f"--delay-ms={servers.calibration.get('slow_delay_us', 0) / 1000}"],
            "hang": ["--behaviour=hang"],
            "crash_http": [
                "--behaviour=crash",
                f"--up-ms={CRASH_UP_MS}",
                f"--down-ms={CRASH_DOWN_MS}",
            ],
        }
        for fault in faults:
            if fault == "down":
                servers.ports[fault] = stack.enter_context(refusing_port())
            elif fault in options:
                (port,) = free_ports(1)
                folder = workdir / f"fault_{fault}"
                folder.mkdir(parents=True, exist_ok=True)
                stack.enter_context(
                    stub_server(
                        f"{fault} candidate",
                        folder / "stubserver.log",
                        port,
                        "--loop=select",
                        *options[fault],
                    )
                )
                servers.ports[fault] = port
                servers.received[fault] = partial(stub_requests, port)
        if "slow" in servers.ports:
            slow_p50 = p50_us(
                servers.ports["slow"],
                requests=max(probe_requests // SLOW_FACTOR, 10),
                warmup=10,
                idle_qos=idle_qos,
            )
            servers.calibration["slow_p50_us"] = slow_p50
            servers.calibration["slow_factor"] = slow_p50 / servers.calibration["production_p50_us"]
        yield servers


def start_fault_target(
    stack: contextlib.ExitStack,
    spec: FaultTarget,
    servers: FaultServers,
    production_port: int,
    workdir: Path,
    model: BuiltModel | None,
) -> Target:
    """Start the proxy of ``spec`` in front of production, with its faulty candidate."""
    fault = spec.fault
    if spec.family == "nginx_mirror":
        return stack.enter_context(
            nginx_target(
                spec.name,
                production_port,
                workdir,
                candidate_port=servers.ports[fault],
                candidate_received=servers.received.get(fault),
            )
        )
    if fault == "crash_local":
        return stack.enter_context(
            shadowproxy_target(
                spec.name,
                production_port,
                workdir,
                candidates=(Candidate(LOCAL_CANDIDATE, executor=CRASH_LOOP_EXECUTOR),),
                model=model,
                env={WORKER_FAULTS_ENV: json.dumps({"crash_on_call": CRASH_ON_CALL})},
            )
        )
    return stack.enter_context(
        shadowproxy_target(
            spec.name,
            production_port,
            workdir,
            candidates=(Candidate(HTTP_CANDIDATE, servers.ports[fault]),),
            candidate_received=servers.received.get(fault),
        )
    )
