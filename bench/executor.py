"""What micro-batching buys the process executor: rows/s at ``max_batch`` 1 and 32.

Many 1-row requests are kept in flight (a closed loop: each answer submits the next) through
two process executors that differ only in ``max_batch``, for the same time each, in rounds
that alternate which one goes first. ``batching_speedup`` is, per round, rows/s with batching
over rows/s without. A further series of sequential 1-row requests on the ``max_batch: 1``
executor gives the round trip of one request (queue, transfer both ways, model run).

The process pins itself to the proxy's CPU before spawning the workers, which inherit the
pinning: proxy side and workers share one CPU, as they do in the ``shadowproxy_onnx`` target.

    python -m bench executor [--quick|--smoke] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .load import PROXY_CPU, die_with_parent, gc_paused, percentile
from .model import INPUT_NAME, BuiltModel, build_logistic_regression

BATCHES = (1, 32)
TIMEOUT_S = 5.0  # generous: only the throughput is measured, nothing should time out
ROW = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)  # the values of bench/load.py's BODY


@dataclass(frozen=True)
class ExecutorSettings:
    rounds: int
    duration_s: float  # per executor and round
    round_trips: int  # sequential requests per round for the round-trip figure
    concurrency: int = 256  # 1-row requests in flight; below the default queue_rows of 1024
    warmup_s: float = 0.3  # in flight but not counted, at the start of each measurement


EXECUTOR_MODES = {
    "full": ExecutorSettings(rounds=5, duration_s=2.0, round_trips=2000),
    "quick": ExecutorSettings(rounds=3, duration_s=1.0, round_trips=1000),
    "smoke": ExecutorSettings(rounds=1, duration_s=0.3, round_trips=100, warmup_s=0.1),
}


def _executor_config(max_batch: int) -> Any:
    from shadowproxy.config.model import Executor

    # Everything else at its default, as a candidate with only ``kind: process`` would run.
    return Executor(kind="process", max_batch=max_batch)


async def _start(model: BuiltModel, max_batch: int) -> Any:
    from shadowproxy.config.model import ModelFile
    from shadowproxy.executor import create_executor

    ex = create_executor(
        f"bench-batch-{max_batch}",
        ModelFile(path=model.path, sha256=model.sha256),
        _executor_config(max_batch),
        where=f"executor bench (max_batch {max_batch})",
    )
    await ex.start()
    return ex


class _ClosedLoop:
    """Keeps ``concurrency`` 1-row requests in flight: each answer submits the next one."""

    def __init__(self, ex: Any, concurrency: int) -> None:
        self.ex, self.concurrency = ex, concurrency
        self.inputs = {INPUT_NAME: ROW}
        self.counting = self.stopping = False
        self.in_flight = self.rows = self.failures = 0
        self.drained = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._submit()

    async def stop(self) -> None:
        """Stop submitting and wait for the requests in flight."""
        self.stopping = True
        if self.in_flight:
            await asyncio.wait_for(self.drained, TIMEOUT_S * 2)

    def _submit(self) -> None:
        self.in_flight += 1
        self.ex.submit(self.inputs, 1, TIMEOUT_S).add_done_callback(self._answered)

    def _answered(self, fut: asyncio.Future[Any]) -> None:
        self.in_flight -= 1
        failed = fut.cancelled() or fut.exception() is not None
        if self.counting:
            if failed:
                self.failures += 1
            else:
                self.rows += 1
        if not self.stopping:
            self._submit()
        elif not self.in_flight and not self.drained.done():
            self.drained.set_result(None)


async def throughput(ex: Any, settings: ExecutorSettings) -> dict[str, float]:
    """Rows/s with ``settings.concurrency`` 1-row requests always in flight."""
    loop = _ClosedLoop(ex, settings.concurrency)
    loop.start()
    await asyncio.sleep(settings.warmup_s)
    before = ex.resources()
    cpu0, t0 = time.process_time(), time.perf_counter()
    loop.counting = True
    await asyncio.sleep(settings.duration_s)
    loop.counting = False
    elapsed, proxy_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    after = ex.resources()
    await loop.stop()
    batches = after.batches - before.batches
    return {
        "rows": loop.rows,
        "failures": loop.failures,
        "seconds": elapsed,
        "rows_per_s": loop.rows / elapsed,
        "mean_batch_rows": (after.rows - before.rows) / batches if batches else 0.0,
        # The submitting side's CPU (this process, all threads) per row answered.
        "proxy_cpu_us_per_row": proxy_cpu * 1e6 / loop.rows if loop.rows else 0.0,
    }


async def round_trip(ex: Any, count: int) -> dict[str, float]:
    """One request at a time: µs from submit to answer, and where the time went."""
    inputs = {INPUT_NAME: ROW}
    total: list[float] = []
    compute: list[float] = []
    ipc: list[float] = []
    queue: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(count):
        t0 = clock()
        answer = await ex.submit(inputs, 1, TIMEOUT_S)
        total.append((clock() - t0) / 1000)
        compute.append(answer.compute_s * 1e6)
        ipc.append(answer.ipc_s * 1e6)
        queue.append(answer.queue_s * 1e6)
    total.sort()
    return {
        "n": count,
        "p50_us": percentile(total, 50),
        "p99_us": percentile(total, 99),
        "mean_us": statistics.fmean(total),
        "compute_mean_us": statistics.fmean(compute),
        "ipc_mean_us": statistics.fmean(ipc),
        "queue_mean_us": statistics.fmean(queue),
    }


async def measure(model: BuiltModel, settings: ExecutorSettings, log: Any = None) -> dict:
    """Every round: throughput at each ``max_batch`` (order alternating), then round trips."""
    executors: dict[int, Any] = {}
    rounds: list[dict[str, Any]] = []
    try:
        for batch in BATCHES:
            executors[batch] = await _start(model, batch)
        with gc_paused():
            for r in range(settings.rounds):
                order = BATCHES if r % 2 == 0 else BATCHES[::-1]
                res: dict[str, Any] = {"round": r, "throughput": {}}
                for batch in order:
                    res["throughput"][str(batch)] = await throughput(executors[batch], settings)
                res["round_trip"] = await round_trip(executors[1], settings.round_trips)
                one, many = (res["throughput"][str(b)]["rows_per_s"] for b in BATCHES)
                res["batching_speedup"] = many / one if one else None
                rounds.append(res)
                if log:
                    log(
                        f"executor round {r + 1}/{settings.rounds}: "
                        f"{one:,.0f} rows/s at max_batch 1, {many:,.0f} at {BATCHES[-1]}, "
                        f"round trip p50 {res['round_trip']['p50_us']:.0f} µs"
                    )
    finally:
        for ex in executors.values():
            with contextlib.suppress(Exception):
                await ex.close()
    return {
        "settings": asdict(settings),
        "executor": asdict(_executor_config(BATCHES[0])),
        "batches": list(BATCHES),
        "cpu": sorted(os.sched_getaffinity(0)),
        "rounds": rounds,
    }


def _run_here(model: BuiltModel, settings: ExecutorSettings, log: Any) -> dict[str, Any]:
    with contextlib.suppress(OSError):  # workers inherit it: all on the proxy's CPU
        os.sched_setaffinity(0, {PROXY_CPU})
    import uvloop

    return uvloop.run(measure(model, settings, log))


def run_pinned(
    model: BuiltModel, mode: str, out: Path, *, log: Any = None, timeout_s: float = 300
) -> dict[str, Any]:
    """``python -m bench executor`` in a child process (pinned there), for ``bench run``.

    A child keeps the harness on the load CPU and leaves nothing of the executors behind
    in it. Its workers die with it, and it dies with the harness (parent-death signals).
    """
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "executor",
        f"--{mode}",
        "--model",
        str(model.path),
        "--sha256",
        model.sha256,
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"the executor bench did not finish within {timeout_s:.0f}s") from exc
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if log:
        for line in output.splitlines():
            if line.startswith("executor round"):
                log(line)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"the executor bench exited with {proc.returncode}:\n{output[-2000:]}")
    return json.loads(out.read_text())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="5 rounds of 2 s per executor")
    mode.add_argument("--quick", action="store_true", help="3 rounds of 1 s per executor")
    mode.add_argument("--smoke", action="store_true", help="1 round of 0.3 s: it works")
    parser.add_argument("--model", type=Path, help="ONNX file (default: build the bench model)")
    parser.add_argument("--sha256", help="the model's sha256 (with --model)")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")


def main(args: argparse.Namespace) -> int:
    """``python -m bench executor``: measure, print a summary, optionally write JSON."""
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = EXECUTOR_MODES[mode]

    def log(msg: str) -> None:
        print(msg, flush=True)

    folder = None
    try:
        if args.model is not None:
            if not args.sha256:
                print("error: --model needs --sha256", file=sys.stderr)
                return 2
            model = BuiltModel(args.model, args.sha256)
        else:
            folder = Path(tempfile.mkdtemp(prefix="shadowproxy-bench-executor-"))
            model = build_logistic_regression(folder)
        result = {"mode": mode, **_run_here(model, settings, log)}
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    if args.out:  # the raw rounds; ``bench run`` summarises them with the rest
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    _print_summary(result)
    return 0


def _print_summary(result: dict[str, Any]) -> None:
    from .report import compute_ratios, summarize_section
    from .tables import executor_table

    summarize_section("executor", result)
    speedup = compute_ratios({}, result)["batching_speedup"]
    print("\n" + "\n".join(executor_table(result)))
    if speedup["value"] is not None:
        print(f"\nbatching_speedup {speedup['value']:.2f} (goal {speedup['goal']})")
