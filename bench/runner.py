"""One benchmark run: start every target, then interleave measurement rounds across them."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import targets as tg
from .cpu import CpuMeter
from .load import (
    LOAD_CPU,
    LatencyProbe,
    LoadError,
    interleaved_latency,
    latency_summary,
    no_deep_idle,
    require_binary,
    run_wrk,
    wrk_script,
)


@dataclass(frozen=True)
class Settings:
    mode: str
    rounds: int
    wrk_duration_s: int
    warmup_s: int
    latency_requests: int
    latency_warmup: int
    connections: int = 32
    threads: int = 1
    settle_s: float = 0.3  # after a mirroring run, let in-flight shadow requests finish
    idle_qos: bool = True  # no deep idle states while measuring single-connection latency


MODES = {
    "full": Settings(
        "full", rounds=5, wrk_duration_s=5, warmup_s=2, latency_requests=3000, latency_warmup=200
    ),
    "quick": Settings(
        "quick", rounds=3, wrk_duration_s=2, warmup_s=1, latency_requests=1000, latency_warmup=100
    ),
    "smoke": Settings(
        "smoke",
        rounds=1,
        wrk_duration_s=1,
        warmup_s=0,
        latency_requests=200,
        latency_warmup=20,
        settle_s=0.2,
    ),
}

Log = Callable[[str], None]
T = TypeVar("T")
MAX_RESTARTS = 3  # per target and run, for a proxy stopped from outside


def _delta(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def _mirror_figures(
    requests: int,
    backend_received: int,
    counts: dict[tuple[str, str], float] | None,
) -> dict[str, Any]:
    """How many of the requests served in a wrk run reached the candidate."""
    out: dict[str, Any] = {"candidate_backend_received": backend_received}
    if counts is None:  # nginx: count what the candidate backend saw
        out["mirrored_fraction"] = backend_received / requests if requests else 0.0
        return out
    cand = {o: v for (m, o), v in counts.items() if m == "cand"}
    prod_total = sum(v for (m, _), v in counts.items() if m == "prod")
    out["candidate_outcomes"] = cand
    out["production_served"] = prod_total
    served = prod_total or requests
    out["mirrored_fraction"] = cand.get("ok", 0.0) / served if served else 0.0
    out["dropped_fraction"] = cand.get("dropped", 0.0) / served if served else 0.0
    return out


def measure_load(
    target: tg.Target, be: tg.Backends, settings: Settings, script: Path
) -> dict[str, Any]:
    """(a) wrk closed-loop throughput and (d) proxy CPU per request, plus mirror counts."""
    target.check_alive()
    meter = CpuMeter(target.proxy_pid) if target.proxy_pid is not None else None
    cand_before = be.candidate_requests() if target.mirrors else 0
    counts_before = target.proxy_counts()
    if meter:
        meter.start()
    wrk = run_wrk(
        target.url,
        script,
        duration_s=settings.wrk_duration_s,
        connections=settings.connections,
        threads=settings.threads,
    )
    cpu_us = meter.stop() if meter else None
    result: dict[str, Any] = {**wrk.to_json()}
    result["cpu_us"] = cpu_us
    if cpu_us is not None and wrk.requests:
        result["cpu_us_per_req"] = cpu_us / wrk.requests
    else:
        result["cpu_us_per_req"] = None
    if target.mirrors:
        time.sleep(settings.settle_s)
        received = be.candidate_requests() - cand_before
        counts_after = target.proxy_counts()
        counts = _delta(counts_after, counts_before or {}) if counts_after is not None else None
        result["mirror"] = _mirror_figures(wrk.requests, received, counts)
    return result


def measure_latency(targets: Sequence[tg.Target], settings: Settings) -> dict[str, Any]:
    """(c) single-connection latency of every target, interleaved in batches.

    Returns a summary per target, or the exception that stopped its probe.
    """
    probes: dict[str, LatencyProbe] = {}
    out: dict[str, Any] = {}
    with no_deep_idle(settings.idle_qos) as qos:
        try:
            for t in targets:
                try:
                    probes[t.name] = LatencyProbe("127.0.0.1", t.port)
                except OSError as exc:
                    out[t.name] = exc
            out.update(
                interleaved_latency(
                    probes, requests=settings.latency_requests, warmup=settings.latency_warmup
                )
            )
        finally:
            for probe in probes.values():
                probe.close()
    for name, probe in probes.items():
        if name not in out:
            out[name] = {
                **latency_summary(probe.samples),
                "idle_qos": qos,
                "interleaved_with": len(probes) - 1,
            }
    return out


def _rotated(names: Sequence[str], r: int) -> list[str]:
    k = r % len(names) if names else 0
    return [*names[k:], *names[:k]]


class _Run:
    """The running targets of one benchmark run and what was measured on them."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        workdir: Path,
        settings: Settings,
        names: Sequence[str],
        log: Log,
    ) -> None:
        self.stack, self.workdir, self.settings, self.log = stack, workdir, settings, log
        self.names = list(names)
        self.script = workdir / "infer.lua"
        self.script.write_text(wrk_script())
        self.be = stack.enter_context(tg.backends(workdir))
        self.running: dict[str, tg.Target] = {}
        self.results: dict[str, dict[str, Any]] = {
            n: {"description": tg.TARGETS[n], "error": None, "restarts": 0, "rounds": []}
            for n in names
        }

    def start(self, name: str) -> bool:
        try:
            self.running[name] = tg.start_target(self.stack, name, self.be, self.workdir)
        except (tg.StartError, LoadError, OSError) as exc:
            self.fail(name, f"failed to start: {exc}")
            return False
        self.log(f"started {name} on port {self.running[name].port}")
        return True

    def fail(self, name: str, message: str) -> None:
        self.results[name]["error"] = message
        self.running.pop(name, None)
        self.log(f"!! {name}: {message}")

    def warm_up(self, name: str) -> None:
        with contextlib.suppress(LoadError):
            run_wrk(
                self.running[name].url,
                self.script,
                duration_s=max(self.settings.warmup_s, 1),
                connections=self.settings.connections,
            )

    def _with_restarts(
        self, name: str, r: int, step: Callable[[tg.Target], T], error: Exception | None = None
    ) -> T | None:
        """``step(target)``; a proxy stopped from outside is started again and ``step`` retried.

        With ``error``, the first attempt has already failed with it. Any other failure ends
        the target's measurements (None).
        """
        while True:
            target = self.running[name]
            if error is None:
                try:
                    return step(target)
                except (LoadError, tg.StartError, OSError) as exc:
                    error = exc
            message = str(error)
            time.sleep(0.2)
            if target.is_alive():
                self.fail(name, f"round {r + 1}: {message}")
                return None
            try:  # a dead proxy explains the failure better than a socket error
                target.check_alive()
            except tg.StartError as dead:
                message = str(dead)
            if self.results[name]["restarts"] >= MAX_RESTARTS:
                self.fail(name, f"round {r + 1}: {message}")
                return None
            # Stopped from outside (this is a shared machine): start it again and retry.
            self.log(f"!! {name}: {message.splitlines()[0]}; starting it again")
            self.results[name]["restarts"] += 1
            if not self.start(name):
                return None
            self.warm_up(name)
            error = None

    def run_round(self, r: int) -> None:
        """Every running target once: load (a, d) one after another, then latency (c)."""
        loads: dict[str, dict[str, Any]] = {}
        for name in _rotated([n for n in self.names if n in self.running], r):
            res = self._with_restarts(
                name, r, lambda t: measure_load(t, self.be, self.settings, self.script)
            )
            if res is not None:
                loads[name] = res
        singles = measure_latency([self.running[n] for n in loads], self.settings)
        for name, res in loads.items():
            single = singles[name]
            if isinstance(single, Exception):  # measured again on its own
                single = self._with_restarts(name, r, self._latency_alone, single)
                if single is None:
                    continue
            res["single"] = single
            res["round"] = r
            self.results[name]["rounds"].append(res)
            self._log_round(name, r, res)

    def _latency_alone(self, target: tg.Target) -> dict[str, Any]:
        single = measure_latency([target], self.settings)[target.name]
        if isinstance(single, Exception):
            raise single
        return single

    def _log_round(self, name: str, r: int, res: dict[str, Any]) -> None:
        cpu, mirror = res["cpu_us_per_req"], res.get("mirror")
        self.log(
            f"round {r + 1}/{self.settings.rounds} {name:17s} {res['rps']:>9.0f} req/s, "
            f"1-conn p50 {res['single']['p50_us']:.0f} µs"
            + (f", {cpu:.1f} CPU µs/req" if cpu is not None else "")
            + (f", {res['errors']} errors" if res["errors"] else "")
            + (f", mirrored {mirror['mirrored_fraction']:.3f}" if mirror else "")
        )


def run(
    settings: Settings, names: Sequence[str], log: Log = print, keep_workdir: bool = False
) -> dict[str, Any]:
    """Start all targets, warm them up, run interleaved rounds; the raw results."""
    for binary in ("nginx", "wrk", "taskset"):
        require_binary(binary)
    with contextlib.suppress(OSError):  # the harness itself is load generation
        os.sched_setaffinity(0, {LOAD_CPU})
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    load_start = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="shadowproxy-bench-"))
        if keep_workdir:
            log(f"configs and logs are kept in {workdir}")
        else:  # registered first, so it runs after every process has stopped
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        bench = _Run(stack, workdir, settings, names, log)
        for name in names:
            bench.start(name)
        if settings.warmup_s:
            for name in list(bench.running):
                bench.warm_up(name)
                log(f"warmed up {name}")
        for r in range(settings.rounds):
            bench.run_round(r)
    return {
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t0, 1),
        "settings": asdict(settings),
        "loadavg": {"start": load_start, "end": os.getloadavg()[0]},
        "targets": bench.results,
    }
