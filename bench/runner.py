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

from . import comparator as comparator_bench
from . import executor as executor_bench
from . import faults as ft
from . import memory as memory_bench
from . import targets as tg
from .backends import backends
from .counting import MirrorCount, gc_figures
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
from .model import BuiltModel, build_logistic_regression
from .openloop import run_pinned as run_open_loop


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
    idle_qos: bool = True  # no deep idle states while measuring latency (1-conn, open loop)
    open_loop_s: float = 2.0  # (e): runs at half load, with and without (faulty) candidates
    # After an open-loop schedule, wait this long for answers; only a target that leaves
    # requests unanswered (nginx with a hanging mirror) takes that long.
    drain_s: float = 2.0
    fixed_rates: tuple[int, ...] = ()  # open-loop runs at these req/s, every target (info)
    fixed_rate_s: float = 1.0
    executor: bool = True  # the executor batching section (python -m bench executor)
    profile: str = "nginx"  # the backends (bench.backends.PROFILES)
    faults: tuple[str, ...] = tuple(ft.FAULTS)  # faulty candidates of the isolation runs
    comparator_pairs: int = 20_000  # per round, ``bench comparator`` (0: left out)
    # (f') a fresh process's memory after this many requests and after that many (None: off)
    memory_requests: tuple[int, int] | None = (10_000, 1_000_000)


MODES = {
    "full": Settings(
        "full",
        rounds=5,
        wrk_duration_s=5,
        warmup_s=2,
        latency_requests=3000,
        latency_warmup=200,
        fixed_rates=(500, 1000, 2000),  # 18 short runs per round, for information
    ),
    "quick": Settings(
        "quick",
        rounds=3,
        wrk_duration_s=2,
        warmup_s=1,
        latency_requests=1000,
        latency_warmup=100,
        open_loop_s=1.5,
        comparator_pairs=10_000,
        memory_requests=(10_000, 100_000),
    ),
    "smoke": Settings(
        "smoke",
        rounds=1,
        wrk_duration_s=1,
        warmup_s=0,
        latency_requests=200,
        latency_warmup=20,
        settle_s=0.2,
        open_loop_s=0.5,
        fixed_rates=(500,),  # one short rate, so the path is exercised
        fixed_rate_s=0.3,
        comparator_pairs=2_000,
        memory_requests=(1_000, 10_000),
    ),
}

# Production latency at half load: the rate is half the lower capacity of the targets below
# in the same round (the capacity of the configuration under test, the one with a local
# candidate, see MIRRORED_CAPACITY_TARGET), and that same rate goes to each of them. The
# faulty candidates and their baselines get a rate of their own (ISOLATION_CAPACITY_TARGETS).
HALF_LOAD_FRACTION = 0.5
HALF_LOAD_TARGETS = ("shadowproxy_off", "shadowproxy_onnx")
# The local candidate's worker runs under SCHED_IDLE: at wrk's saturation it gets no CPU and
# the proxy sheds its requests, so wrk's req/s is not the capacity of mirroring every request
# to it. That is read from short open-loop runs instead, where every request is mirrored:
# 10^6 ÷ the whole tree's CPU µs per request. Batches fill better at higher rates, so the
# first estimate (from CALIBRATION_RATE) is refined once, at CALIBRATION_FRACTION of it.
MIRRORED_CAPACITY_TARGET = "shadowproxy_onnx"
CALIBRATION_RATE = 2000.0
CALIBRATION_FRACTION = 0.8
CALIBRATION_S = 1.0
# Faulty candidates are judged at half the capacity of the proxy mirroring every request to
# a healthy HTTP candidate (the lower wrk req/s of these), a load the proxy really carries.
ISOLATION_CAPACITY_TARGETS = ("shadowproxy_off", "shadowproxy_http")

Log = Callable[[str], None]
T = TypeVar("T")
MAX_RESTARTS = 3  # per target and run, for a proxy stopped from outside


def measure_load(target: tg.Target, settings: Settings, script: Path) -> dict[str, Any]:
    """(a) wrk closed-loop throughput and (d) proxy CPU per request, plus mirror counts and
    the proxy's resident memory."""
    target.check_alive()
    meter = CpuMeter(target.proxy_pid) if target.proxy_pid is not None else None
    mirror = MirrorCount(target) if target.mirrors else None
    gc_before = target.gc_full() if target.is_shadowproxy else None
    if meter:
        meter.start()
    wrk = run_wrk(
        target.url,
        script,
        duration_s=settings.wrk_duration_s,
        connections=settings.connections,
        threads=settings.threads,
    )
    cpu = meter.stop() if meter else None
    result: dict[str, Any] = {**wrk.to_json()}
    result["cpu_us"] = cpu.tree_us if cpu else None

    def per_req(us: float) -> float | None:
        return us / wrk.requests if wrk.requests else None

    result["cpu_us_per_req"] = per_req(cpu.tree_us) if cpu else None
    if cpu and target.is_shadowproxy:
        # The proxy process apart from its executor workers: what mirroring costs the proxy.
        result["proxy_cpu_us"] = cpu.own_us
        result["proxy_cpu_us_per_req"] = per_req(cpu.own_us)
    if gc_before is not None:
        gc_after = target.gc_full()
        assert gc_after is not None
        result["gc_full"] = gc_figures(gc_before, gc_after, settings.wrk_duration_s)
    if mirror:
        result["mirror"] = mirror.figures(wrk.requests, settings.settle_s)
    rss = target.rss()
    if rss is not None:  # after the load: what a replica holds while serving
        result["memory"] = rss
    return result


def measure_open_loop(
    target: tg.Target, settings: Settings, rate: float, duration_s: float
) -> dict[str, Any]:
    """One open-loop run at ``rate`` req/s (latency from the scheduled send times)."""
    target.check_alive()
    mirror = MirrorCount(target) if target.mirrors else None
    # CPU per request below saturation: where a local candidate's worker, under SCHED_IDLE,
    # gets the CPU it needs, so every request is mirrored (at saturation it gets none).
    pid = target.proxy_pid if target.is_shadowproxy else None
    meter = CpuMeter(pid) if pid is not None else None
    if meter:
        meter.start()
    with no_deep_idle(settings.idle_qos) as qos:
        res = run_open_loop(
            target.port,
            rate=rate,
            duration_s=duration_s,
            connections=settings.connections,
            drain_s=settings.drain_s,
        )
    cpu = meter.stop() if meter else None
    result: dict[str, Any] = {**res.to_json(), "idle_qos": qos}
    if cpu and res.completed:
        result["cpu_us_per_req"] = cpu.tree_us / res.completed
        result["proxy_cpu_us_per_req"] = cpu.own_us / res.completed
    if mirror:
        result["mirror"] = mirror.figures(res.completed, settings.settle_s)
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


def _rotated(names: Sequence[T], r: int) -> list[T]:
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
        model: BuiltModel | None = None,
        model_error: str | None = None,
    ) -> None:
        self.stack, self.workdir, self.settings, self.log = stack, workdir, settings, log
        self.names = list(names)
        self.model, self.model_error = model, model_error
        self.script = workdir / "infer.lua"
        self.script.write_text(wrk_script())
        self.be = stack.enter_context(backends(workdir, settings.profile))
        self.faulty = {spec.name: spec for spec in ft.plan(settings.faults, names)}
        self.servers = stack.enter_context(
            ft.fault_servers(
                workdir,
                sorted({spec.fault for spec in self.faulty.values()}),
                self.be.production_port,
                idle_qos=settings.idle_qos,
                # Production's p50 as the single-connection latency (c) would measure it.
                probe_requests=min(settings.latency_requests, 1000),
            )
        )
        self.running: dict[str, tg.Target] = {}
        self.results: dict[str, dict[str, Any]] = {
            n: {"description": tg.TARGETS[n], "error": None, "restarts": 0, "rounds": []}
            for n in names
        }
        for name, spec in self.faulty.items():
            self.results[name] = {
                "description": spec.description,
                "family": spec.family,
                "fault": spec.fault,
                "baseline": spec.baseline,
                "error": None,
                "restarts": 0,
                "rounds": [],
            }
        self.comparator: dict[str, Any] = {"error": None, "rounds": []}

    def start(self, name: str) -> bool:
        spec = self.faulty.get(name)
        needs_model = spec.needs_model if spec is not None else name in tg.NEEDS_MODEL
        if needs_model and self.model is None:
            self.fail(name, f"failed to start: {self.model_error or 'no ONNX model'}")
            return False
        try:
            if spec is not None:
                self.running[name] = ft.start_fault_target(
                    self.stack,
                    spec,
                    self.servers,
                    self.be.production_port,
                    self.workdir,
                    self.model,
                )
            else:
                self.running[name] = tg.start_target(
                    self.stack, name, self.be, self.workdir, self.model
                )
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
        """Every running target once: load (a, d) one after another, latency (c), then the
        open-loop runs (e, f) and the comparator's cost."""
        loads: dict[str, dict[str, Any]] = {}
        for name in _rotated([n for n in self.names if n in self.running], r):
            res = self._with_restarts(
                name, r, lambda t: measure_load(t, self.settings, self.script)
            )
            if res is not None:
                loads[name] = res
        singles = measure_latency([self.running[n] for n in loads], self.settings)
        kept: dict[str, dict[str, Any]] = {}
        for name, res in loads.items():
            single = singles[name]
            if isinstance(single, Exception):  # measured again on its own
                single = self._with_restarts(name, r, self._latency_alone, single)
                if single is None:
                    continue
            res["single"] = single
            res["round"] = r
            self.results[name]["rounds"].append(res)
            kept[name] = res
            self._log_round(name, r, res)
        # The round's records are already kept: these runs add to them.
        self._half_load(r, kept)
        self._fixed_rates(r, kept)
        self._comparator_cost(r)

    def _half_load(self, r: int, loads: dict[str, dict[str, Any]]) -> None:
        """(e) Open loop at half the lower capacity of the compared targets (wrk's req/s, or
        for the local candidate its mirrored capacity), the same rate for both; (e') the
        faulty candidates at half the capacity of mirroring to a healthy HTTP candidate (see
        ``ISOLATION_CAPACITY_TARGETS``), their baselines and healthy references at that rate
        too."""
        capacity = min((loads[n]["rps"] for n in HALF_LOAD_TARGETS if n in loads), default=0.0)
        if MIRRORED_CAPACITY_TARGET in loads:
            capacity = min(capacity, self._mirrored_capacity(r, loads[MIRRORED_CAPACITY_TARGET]))
        if capacity <= 0:
            return
        rate = HALF_LOAD_FRACTION * capacity
        faulty = [n for n in self.faulty if n in self.running]
        baselines = {self.faulty[n].baseline for n in faulty}
        iso_capacity = min(
            (loads[n]["rps"] for n in ISOLATION_CAPACITY_TARGETS if n in loads), default=0.0
        )
        iso_rate = HALF_LOAD_FRACTION * iso_capacity if iso_capacity > 0 else rate
        runs: list[tuple[str, float, str]] = [
            (n, rate, "half_load") for n in loads if n in HALF_LOAD_TARGETS
        ]
        for name in sorted(baselines):
            if name not in loads:
                continue
            if name not in HALF_LOAD_TARGETS:
                runs.append((name, iso_rate, "half_load"))  # its only open-loop run
            elif iso_rate != rate:
                runs.append((name, iso_rate, "isolation_load"))
        runs += [(n, iso_rate, "half_load") for n in faulty]
        # Healthy candidates at the same rate: the reference that tells a fault's cost from
        # mirroring's. They have no other open-loop run.
        healthy = {self.faulty[n].healthy for n in faulty}
        runs += [(n, iso_rate, "isolation_load") for n in sorted(healthy) if n in loads]
        for name, at, key in _rotated(runs, r):
            if name not in self.running:
                continue
            res = self._with_restarts(name, r, self._open_loop(at, self.settings.open_loop_s))
            if res is None:
                continue
            if name in loads:
                loads[name][key] = res
            else:
                self.results[name]["rounds"].append({"round": r, key: res})
            what = "half load" if at == rate else "isolation load"
            self._log_open_loop(name, r, what, res)

    def _mirrored_capacity(self, r: int, load: dict[str, Any]) -> float:
        """req/s the local-candidate target could serve mirroring every request (see
        ``CALIBRATION_RATE``); kept in its round as ``mirrored_capacity``."""
        name = MIRRORED_CAPACITY_TARGET
        capacity, rate, runs = float("inf"), CALIBRATION_RATE, []
        for _ in range(2):
            run = self._with_restarts(name, r, self._open_loop(rate, CALIBRATION_S))
            cpu = run.get("cpu_us_per_req") if run else None
            mirrored = (run or {}).get("mirror", {}).get("mirrored_fraction", 0.0)
            if not cpu or mirrored < 0.99:
                break  # not measured, or requests were shed: the last estimate stands
            capacity = 1e6 / cpu
            runs.append(run)
            self.log(
                f"round {r + 1}/{self.settings.rounds} {name:<22} mirroring every request at "
                f"{rate:,.0f} req/s: {cpu:.1f} CPU µs/req (tree), capacity {capacity:,.0f} req/s"
            )
            rate = CALIBRATION_FRACTION * capacity
        if runs:
            load["mirrored_capacity"] = {"rps": capacity, "calibration": runs}
        return capacity

    def _fixed_rates(self, r: int, loads: dict[str, dict[str, Any]]) -> None:
        """(f) Open loop at each fixed rate of the mode, every target (for information)."""
        for rate in self.settings.fixed_rates:
            for name in _rotated(list(loads), r):
                if name not in self.running:
                    continue
                step = self._open_loop(rate, self.settings.fixed_rate_s)
                res = self._with_restarts(name, r, step)
                if res is not None:
                    loads[name].setdefault("fixed_rate", {})[str(rate)] = res
                    self._log_open_loop(name, r, f"{rate} req/s", res)

    def _comparator_cost(self, r: int) -> None:
        """What a pair costs the comparator (``bench comparator``), on the proxy's CPU."""
        if not self.settings.comparator_pairs or self.comparator["error"]:
            return
        try:
            res = comparator_bench.run_pinned(self.settings.comparator_pairs)
        except LoadError as exc:
            self.comparator["error"] = str(exc)
            self.log(f"!! comparator: {exc}")
            return
        self.comparator["rounds"].append({"round": r, **res})
        self.log(
            f"round {r + 1}/{self.settings.rounds} comparator {res['us_per_pair']:.1f} µs/pair "
            f"(hand-over {res['handoff_us_per_pair']:.2f}, fold {res['fold_us_per_pair']:.1f})"
        )

    def _open_loop(self, rate: float, duration_s: float) -> Callable[[tg.Target], dict[str, Any]]:
        return lambda t: measure_open_loop(t, self.settings, rate, duration_s)

    def _log_open_loop(self, name: str, r: int, what: str, res: dict[str, Any]) -> None:
        lat = res["latency_us"]
        self.log(
            f"round {r + 1}/{self.settings.rounds} {name:17s} open loop {what}: "
            f"{res['achieved_rps']:,.0f} of {res['rate']:,.0f} req/s, "
            + (f"p50 {lat['p50']:.0f} µs, p99 {lat['p99']:.0f} µs" if lat else "no answers")
            + (f", {res['errors']} errors" if res["errors"] else "")
        )

    def _latency_alone(self, target: tg.Target) -> dict[str, Any]:
        single = measure_latency([target], self.settings)[target.name]
        if isinstance(single, Exception):
            raise single
        return single

    def _log_round(self, name: str, r: int, res: dict[str, Any]) -> None:
        cpu, mirror = res["cpu_us_per_req"], res.get("mirror")
        compare = (mirror or {}).get("compare")
        self.log(
            f"round {r + 1}/{self.settings.rounds} {name:17s} {res['rps']:>9.0f} req/s, "
            f"1-conn p50 {res['single']['p50_us']:.0f} µs"
            + (f", {cpu:.1f} CPU µs/req" if cpu is not None else "")
            + (f", {res['errors']} errors" if res["errors"] else "")
            + (f", mirrored {mirror['mirrored_fraction']:.3f}" if mirror else "")
            + (f", compared {compare['compared_fraction']:.3f}" if compare else "")
        )

    def memory(self) -> dict[str, Any] | None:
        """(f') Memory growth of a fresh process of the first of MEMORY_TARGETS measured."""
        requests = self.settings.memory_requests
        name = next((n for n in memory_bench.MEMORY_TARGETS if n in self.names), None)
        if requests is None or name is None:
            return None
        if name in tg.NEEDS_MODEL and self.model is None:
            return {"error": self.model_error or "no ONNX model", "target": name, "rounds": []}
        self.log(f"memory: a fresh {name}, after {requests[0]:,} and {requests[1]:,} requests")
        try:
            return memory_bench.measure(
                name,
                self.be,
                self.workdir,
                self.model,
                requests,
                script=self.script,
                connections=self.settings.connections,
                settle_s=self.settings.settle_s,
                log=self.log,
            )
        except (LoadError, tg.StartError, OSError) as exc:
            self.log(f"!! memory: {exc}")
            return {"error": str(exc), "target": name, "rounds": []}

    def raw_targets(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The results of the regular targets, and of the faulty-candidate targets."""
        regular = {n: self.results[n] for n in self.names}
        faulty = {n: self.results[n] for n in self.faulty}
        return regular, faulty


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
        model, model_error = None, None
        needs_model = (
            settings.executor
            or any(n in tg.NEEDS_MODEL for n in names)
            or any(spec.needs_model for spec in ft.plan(settings.faults, names))
        )
        if needs_model:
            try:
                model = build_logistic_regression(workdir / "model")
                log(f"built the ONNX model {model.path.name} (sha256 {model.sha256[:12]}…)")
            except (ImportError, OSError, ValueError) as exc:  # e.g. skl2onnx not installed
                model_error = f"the ONNX model could not be built: {exc!r}"
                log(f"!! {model_error}")
        bench = _Run(stack, workdir, settings, names, log, model, model_error)
        if bench.servers.calibration:
            cal = bench.servers.calibration
            log(
                f"production p50 {cal['production_p50_us']:.0f} µs; the slow candidate answers "
                f"after {cal['slow_delay_us']:.0f} µs (its p50 {cal['slow_p50_us']:.0f} µs)"
            )
        for name in [*names, *bench.faulty]:
            bench.start(name)
        if settings.warmup_s:
            for name in list(bench.running):
                bench.warm_up(name)
                log(f"warmed up {name}")
        for r in range(settings.rounds):
            bench.run_round(r)
        executor = None
        if settings.executor:
            executor = (
                _executor_section(model, settings.mode, workdir, log)
                if model is not None
                else {"error": model_error, "rounds": []}
            )
        memory = bench.memory()
    regular, faulty = bench.raw_targets()
    return {
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t0, 1),
        "settings": asdict(settings),
        "loadavg": {"start": load_start, "end": os.getloadavg()[0]},
        "targets": regular,
        "isolation": {
            "faults": {f: ft.FAULTS[f] for f in settings.faults},
            "calibration": bench.servers.calibration,
            "targets": faulty,
        },
        "executor": executor,
        "comparator": bench.comparator if settings.comparator_pairs else None,
        "memory": memory,
    }


def _executor_section(model: BuiltModel, mode: str, workdir: Path, log: Log) -> dict[str, Any]:
    """The executor batching figures; a failure is recorded, it does not end the run."""
    log("executor: throughput at max_batch 1 and 32, then round trips")
    try:
        return {
            "error": None,
            **executor_bench.run_pinned(model, mode, workdir / "executor.json", log=log),
        }
    except (RuntimeError, OSError, ValueError) as exc:
        log(f"!! executor: {exc}")
        return {"error": str(exc), "rounds": []}
