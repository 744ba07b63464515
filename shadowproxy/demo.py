"""``shadowproxy demo``: the whole product on one machine, in about a minute.

What runs (all on loopback, all started and stopped here, Ctrl-C included):

* the production model (``production.onnx``) as its own HTTP model server: a
  ``shadowproxy serve`` process serving the ONNX file on the v2 routes;
* the faithful retrain (``candidate-retrain.onnx``) as a second HTTP model server: the
  remote-candidate path, with its resources scraped from its ``/metrics``;
* shadowproxy in front of production, mirroring every request to that server and to two local
  ONNX candidates in isolated worker processes: a model trained on shifted data
  (``candidate-shifted.onnx``) and a resource hog with production's exact answers
  (``candidate-hog.onnx``, the ``n_jobs`` trap caught before production).

Traffic is the bundled breast-cancer test rows (``configs/demo/traffic.npy``), then rows with
a covariate shift on two features (``traffic-shifted.npy``), marked as such. The report is
evaluated on the proxy's comparator state and written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from shadowproxy.devtools.ports import free_ports

ASSETS = Path(__file__).resolve().parent.parent / "configs" / "demo"
GATES = [
    {"metric": "label_agreement", "min": 0.97},
    {"metric": "score_mae", "max": 0.03},
    {"metric": "score_psi", "max": 0.2},
    {"metric": "cpu_ratio", "max": 3},
    {"metric": "rss_delta_mb", "max": 150},
    {"metric": "error_rate", "max": 0.01},
]


def model_server_config(
    model: dict[str, str], name: str, version: str, ports: tuple[int, int]
) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": ports[0]},
        "admin": {"host": "127.0.0.1", "port": ports[1]},
        "production": {
            "name": name, "version": version, "model": model, "timeout_ms": 5000,
            "executor": {"kind": "thread", "warmup_runs": 2},
        },
        "shutdown": {"drain_delay_s": 0, "grace_s": 2},
    }  # fmt: skip


def proxy_config(
    assets: Path, models: dict[str, Any], ports: dict[str, tuple[int, int]], work: Path, seed: int,
    min_samples: int,
) -> dict[str, Any]:  # fmt: skip
    def model(key: str) -> dict[str, str]:
        entry = models["models"][f"candidate-{key}"]
        return {"path": str(assets / entry["file"]), "sha256": entry["sha256"]}

    prod, retrain, proxy = ports["production"], ports["retrain"], ports["proxy"]
    local = {"kind": "process", "max_batch": 32, "max_wait_ms": 2, "warmup_runs": 2,
             "idle_priority": False}  # fmt: skip
    return {
        "listen": {"host": "127.0.0.1", "port": proxy[0]},
        "admin": {"host": "127.0.0.1", "port": proxy[1]},
        "protocol": "v2",
        "production": {
            "name": "cancer", "version": "1.0", "url": f"http://127.0.0.1:{prod[0]}",
            "timeout_ms": 5000, "metrics_url": f"http://127.0.0.1:{prod[1]}/metrics",
            "metrics_interval_s": 1,
        },
        "candidates": [
            {"name": "retrain", "version": "1.1", "url": f"http://127.0.0.1:{retrain[0]}",
             "timeout_ms": 5000, "max_in_flight": 256,
             "metrics_url": f"http://127.0.0.1:{retrain[1]}/metrics", "metrics_interval_s": 1},
            {"name": "shifted", "version": "2.0", "model": model("shifted"), "timeout_ms": 5000,
             "max_in_flight": 256, "executor": local},
            # Every call of the hog takes tens of milliseconds: a deep budget and a long
            # deadline, so that it is judged on what it costs, not dropped for it.
            {"name": "hog", "version": "1.0-njobs", "model": model("hog"), "timeout_ms": 60000,
             "max_in_flight": 8192, "executor": {**local, "threads": 4, "queue_rows": 8192}},
        ],
        "compare": {
            "outputs": {"score": "probabilities", "label": "label"},
            "features": list(models["features"]),
            "reference": str(assets / "reference.json"),
            "seed": seed,
            "snapshot": {"path": str(work / "snapshot.json"), "interval_s": 5},
        },
        "promotion": {"min_samples": min_samples, "confidence": 0.95, "gates": GATES},
        "shutdown": {"drain_delay_s": 0, "grace_s": 5},
    }  # fmt: skip


class Processes:
    """Every child the demo starts; all of them are stopped on the way out."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.children: list[subprocess.Popen[bytes]] = []

    def serve(self, name: str, config: dict[str, Any]) -> subprocess.Popen[bytes]:
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = (self.work / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "shadowproxy", "serve", "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.children.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.children:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def wait_ready(
    admin_port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{admin_port}/healthz/ready"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not become ready in {timeout:g} s")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return orjson.loads(resp.read())


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def request_body(row: np.ndarray) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "X", "shape": [1, len(row)], "datatype": "FP32",
                     "data": row.tolist()}]}
    )  # fmt: skip


async def send_traffic(
    port: int, admin_port: int, batches: list[tuple[str, np.ndarray]], concurrency: int
) -> int:
    """Send every row of every batch through the proxy, with a live progress bar."""
    import aiohttp
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    url = f"http://127.0.0.1:{port}/v2/models/cancer/infer"
    sent = 0

    async def post_rows(session: aiohttp.ClientSession, rows: list[np.ndarray],
                        progress: Progress, task: TaskID) -> None:  # fmt: skip
        nonlocal sent
        while rows:
            row = rows.pop()
            async with session.post(url, data=request_body(row)) as resp:
                await resp.read()
            sent += 1
            progress.advance(task)

    async def show_counters(
        session: aiohttp.ClientSession, progress: Progress, task: TaskID
    ) -> None:
        while True:
            await asyncio.sleep(0.5)
            async with session.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
                text = await r.text()
            progress.update(
                task,
                pairs=int(metric_sum(text, "shadowproxy_pairs_total")),
                drops=int(metric_sum(text, "shadowproxy_shadow_dropped_total")),
            )

    async with aiohttp.ClientSession() as session:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("pairs {task.fields[pairs]:>6}  drops {task.fields[drops]:>4}"),
            TimeElapsedColumn(),
        ) as progress:  # fmt: skip
            for label, array in batches:
                task = progress.add_task(label, total=len(array), pairs=0, drops=0)
                rows = list(array[::-1])  # popped from the end: sent in file order
                ticker = asyncio.ensure_future(show_counters(session, progress, task))
                try:
                    await asyncio.gather(
                        *(post_rows(session, rows, progress, task) for _ in range(concurrency))
                    )
                    await asyncio.sleep(0.6)  # the counters' last refresh for this part
                finally:
                    ticker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticker
    return sent


def print_summary(report: dict[str, Any], html: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"shadowproxy demo: decision {report['decision'].upper()}")
    for column in ("candidate", "decision", "deciding gate"):
        table.add_column(column)
    for c in report["candidates"]:
        failed = [g for g in c["gates"] if g["passed"] is False]
        open_ = [g for g in c["gates"] if g["passed"] is None]
        deciding = (failed or open_ or [None])[0]
        reason = "every gate passed" if deciding is None else deciding["reason"]
        table.add_row(f"{c['name']} {c['version']}", c["decision"], reason)
    console = Console()
    console.print(table)
    console.print(f"report: {html}")


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="shadowproxy-demo-") as tmp:
        yield Path(tmp)


def run(args: argparse.Namespace) -> int:
    from shadowproxy.compare.comparator import merge_snapshots
    from shadowproxy.compare.decide import report_for
    from shadowproxy.compare.reference import Reference
    from shadowproxy.config import config_from_dict
    from shadowproxy.report.writer import write_report

    assets = args.assets
    models = json.loads((assets / "models.json").read_text())
    traffic = np.load(assets / "traffic.npy", allow_pickle=False)
    shifted = np.load(assets / "traffic-shifted.npy", allow_pickle=False)
    if args.requests:
        traffic = traffic[: args.requests]
        shifted = shifted[: max(1, args.requests // 4)]
    min_samples = max(100, min(1000, len(traffic) // 2))
    with workdir() as work:
        procs = Processes(work)
        try:
            ports: dict[str, tuple[int, int]] = {}
            for key in ("production", "retrain", "proxy"):
                traffic_port, admin_port = free_ports(2)
                ports[key] = (traffic_port, admin_port)
            entry = models["models"]
            for key, name, version in (
                ("production", "cancer", "1.0"),
                # Served under production's name: the candidate gets the very same request.
                ("retrain", "cancer", "1.1"),
            ):
                file = entry["production" if key == "production" else f"candidate-{key}"]
                m = {"path": str(assets / file["file"]), "sha256": file["sha256"]}
                proc = procs.serve(key, model_server_config(m, name, version, ports[key]))
                wait_ready(ports[key][1], proc, f"the {key} model server")
            config = proxy_config(assets, models, ports, work, args.seed, min_samples)
            proxy = procs.serve("proxy", config)
            wait_ready(ports["proxy"][1], proxy, "shadowproxy")
            print(
                "production and the retrain serve on their own ports; shadowproxy on "
                f"127.0.0.1:{ports['proxy'][0]} mirrors every request to all three candidates"
            )
            sent = asyncio.run(
                send_traffic(
                    ports["proxy"][0], ports["proxy"][1],
                    [("test rows", traffic), ("SHIFTED rows (input drift)", shifted)],
                    args.concurrency,
                )
            )  # fmt: skip
            admin = f"http://127.0.0.1:{ports['proxy'][1]}"
            deadline = time.monotonic() + 60
            while True:
                snapshot = get_json(admin + "/admin/snapshot")
                done = snapshot["comparator"]["processed"]
                if done >= sent or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            time.sleep(1.5)  # one more scrape of the model servers' resources
            snapshot = get_json(admin + "/admin/snapshot")
        finally:
            procs.stop()
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "snapshot.json").write_bytes(orjson.dumps(snapshot))
        (out / "config.yaml").write_text(yaml.safe_dump(config))
        typed = config_from_dict(config)
        reference = Reference.load(assets / "reference.json")
        report = report_for(typed, merge_snapshots([("demo", snapshot)]), reference)
        paths = write_report(report, out)
    print_summary(report, paths[-1].resolve())
    if done < sent:
        # A report over part of the traffic would read as the demo's result: say so and fail.
        print(
            f"demo: the comparator folded {done} of {sent} requests within 60 s; the report "
            "covers only those",
            file=sys.stderr,
        )
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("shadowproxy-report"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=0, help="fewer requests (0: all)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--assets", type=Path, default=ASSETS, help=argparse.SUPPRESS)
