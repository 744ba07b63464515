"""The whole loop: traffic through the real proxy, a local and a remote candidate, the
comparator, /admin/snapshot, /admin/feedback, the gauges, and ``shadowproxy report``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import yaml
from aiohttp import web

from shadowproxy.background import BACKGROUND_NICE
from tests.support.models import BuiltModel
from tests.support.proxy import make_config, metric_value, running_proxy
from tests.support.servers import Backend
from tests.support.waiting import wait_for

N = 300


def body(row: np.ndarray) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                     "data": row.astype(np.float32).tolist()}]}
    )  # fmt: skip


async def constant_model(request: web.Request) -> web.Response:
    """A remote candidate that answers the same thing whatever it is asked: rejected."""
    await request.read()
    return web.json_response(
        {"outputs": [
            {"name": "label", "shape": [1], "datatype": "INT64", "data": [1]},
            {"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": [0.1, 0.9]},
        ]}
    )  # fmt: skip


async def test_traffic_to_a_report_with_a_promoted_and_a_rejected_candidate(
    logreg_model: BuiltModel, candidate_backend: Backend, tmp_path: Path
) -> None:
    candidate_backend.handler = constant_model
    config = make_config(
        "http://unused",
        candidates=[
            {"name": "twin", "version": "2", "model": logreg_model.config(), "timeout_ms": 2000,
             "executor": {"kind": "process", "warmup_runs": 1, "max_wait_ms": 1}},
            {"name": "constant", "version": "3", "url": candidate_backend.url,
             "timeout_ms": 2000, "connect_timeout_ms": 2000},
        ],
        compare={"outputs": {"score": "probabilities", "label": "label"}, "seed": 3,
                 "snapshot": {"path": str(tmp_path / "snapshot.json"), "interval_s": 0.2}},
        promotion={"min_samples": 200, "gates": [
            {"metric": "label_agreement", "min": 0.98},
            {"metric": "score_mae", "max": 0.02},
            {"metric": "child_processes", "max": 0},
        ]},
    )  # fmt: skip
    # The replicas' shared secret: the reservoirs are keyed with it (clients send their own
    # request ids here) and the report checks the snapshots against it.
    key_file = tmp_path / "sampling-key"
    key_file.write_bytes(os.urandom(32))
    config["sampling"] = {"key_file": str(key_file)}
    # Production is the same model, served locally: the twin must agree with it exactly.
    config["production"] = {
        "name": "prod", "version": "1", "model": logreg_model.config(), "timeout_ms": 2000,
        "executor": {"kind": "thread", "warmup_runs": 1},
    }  # fmt: skip
    rows = np.random.default_rng(0).normal(size=(N, 4))
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/prod/infer"
        ids = []
        for i, row in enumerate(rows):
            async with session.post(url, data=body(row), headers={"X-Request-Id": f"r{i}"}) as r:
                assert r.status == 200
                ids.append(r.headers["X-Request-Id"])
        assert rt.comparator is not None
        comparator = rt.comparator
        await wait_for(lambda: comparator.processed >= N, timeout=20, what="every pair folded")
        admin = f"http://127.0.0.1:{rt.admin_port}"
        async with session.get(admin + "/admin/snapshot") as r:
            assert r.status == 200
            snapshot = await r.json()
        assert snapshot["schema"] == "shadowproxy.snapshot/v1"
        assert snapshot["targets"]["twin"]["compared"] == N
        assert snapshot["targets"]["constant"]["compared"] == N
        # Late ground truth joins by request id.
        async with session.post(
            admin + "/admin/feedback", json={"request_id": ids[0], "label": 1}
        ) as r:
            assert r.status == 202
        async with session.post(
            admin + "/admin/feedback", json={"request_id": "never-seen", "label": 1}
        ) as r:
            assert r.status == 404
        async with session.post(admin + "/admin/feedback", data=b"nope") as r:
            assert r.status == 400
        # A label that is not one is a 400, and the request stays open for a good label.
        for bad in (None, [], {"a": 1}, [[1], [2, 3]], [1, None]):
            async with session.post(
                admin + "/admin/feedback", json={"request_id": ids[1], "label": bad}
            ) as r:
                assert r.status == 400, bad
                assert (await r.json())["error"].startswith("label:")
        async with session.post(
            admin + "/admin/feedback", json={"request_id": ids[1], "label": 1}
        ) as r:
            assert r.status == 202
        # The gates are evaluated on the snapshot timer and exported for rollout tools.
        await wait_for(
            lambda: metric_value(rt, "shadowproxy_candidate_decision", candidate="constant") == -1,
            timeout=10,
            what="the decision gauges",
        )
        assert metric_value(rt, "shadowproxy_candidate_decision", candidate="twin") == 1
        # ... on a thread at background priority, which production's event loop preempts.
        timer_threads = [
            t for t in threading.enumerate() if t.name.startswith("shadowproxy-snapshots")
        ]
        assert timer_threads
        assert {os.getpriority(os.PRIO_PROCESS, t.native_id or 0) for t in timer_threads} == {
            BACKGROUND_NICE
        }
        assert metric_value(
            rt, "shadowproxy_gate_passed", candidate="twin", gate="label_agreement_min"
        ) == 1  # fmt: skip

        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        out = tmp_path / "report"
        # In a thread: the proxy answering the report's snapshot request runs on this loop.
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "shadowproxy", "report", "--config", str(config_path),
             "--source", admin, "--out", str(out)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr  # one candidate is promoted
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "shadowproxy.report/v1"
    assert report["decision"] == "promote" and report["recommended"] == "twin"
    by_name = {c["name"]: c for c in report["candidates"]}
    assert by_name["twin"]["decision"] == "promote"
    assert by_name["twin"]["metrics"]["label_agreement"] == 1.0
    assert by_name["twin"]["metrics"]["score_mae"] < 1e-6
    assert by_name["constant"]["decision"] == "reject"
    failed = {g["metric"] for g in by_name["constant"]["gates"] if g["passed"] is False}
    assert "score_mae" in failed
    # score histograms, latency CDF, divergence histogram and resource bars
    assert (out / "report.html").read_text().count("<img") >= 4
    assert "twin" in result.stdout and "decision: promote" in result.stdout

    # The snapshot written at shutdown says the same thing from the file alone.
    snap = tmp_path / "snapshot.json"
    assert json.loads(snap.read_text())["targets"]["twin"]["compared"] == N
    again = subprocess.run(
        [sys.executable, "-m", "shadowproxy", "report", "--config", str(config_path),
         "--source", str(snap), "--out", str(tmp_path / "r2"), "--candidate", "constant"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 1, again.stderr
    alone = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert alone["candidates"][0]["samples"] == N
    # The same replica twice would count its traffic twice: the same file, or a copy of
    # it taken at another time, is refused.
    copy = tmp_path / "copy.json"
    copy.write_bytes(snap.read_bytes())
    for second in (str(snap), str(copy)):
        twice = subprocess.run(
            [sys.executable, "-m", "shadowproxy", "report", "--config", str(config_path),
             "--source", str(snap), "--source", second, "--out", str(tmp_path / "r4")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert twice.returncode == 2, twice.stderr
        assert "count twice" in twice.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "shadowproxy", "report", "--config", str(config_path),
         "--source", "prometheus+http://127.0.0.1:9", "--out", str(tmp_path / "r3")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "Prometheus" in bad.stderr
    # Under another key the snapshot is refused; without one it is read as stored.
    (tmp_path / "other-key").write_bytes(os.urandom(32))
    runs = {}
    for name, sampling in (("other", {"key_file": str(tmp_path / "other-key")}), ("none", {})):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**config, "sampling": sampling}))
        runs[name] = subprocess.run(
            [sys.executable, "-m", "shadowproxy", "report", "--config",
             str(tmp_path / f"{name}.yaml"), "--source", str(snap), "--out",
             str(tmp_path / f"r-{name}"), "--candidate", "constant"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert runs["other"].returncode == 2
    assert "reservoir was drawn under the sampling key with id" in runs["other"].stderr
    assert runs["none"].returncode == 1, runs["none"].stderr  # constant: rejected, as above


async def test_a_restart_resumes_from_the_snapshot_and_sets_a_foreign_one_aside(
    backend: Backend, candidate_backend: Backend, tmp_path: Path
) -> None:
    from tests.support.proxy import running_proxy as run

    snap = tmp_path / "snapshot.json"
    config = make_config(
        backend.url,
        candidates=[{"name": "c", "url": candidate_backend.url, "timeout_ms": 2000}],
        compare={"seed": 1, "snapshot": {"path": str(snap), "interval_s": 60}},
    )
    for expected in (5, 10):  # the second run starts from the first run's 5
        async with run(config) as rt, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/m/infer"
            for _ in range(5):
                async with session.post(url, data=body(np.zeros(4))) as r:
                    assert r.status == 200
            assert rt.comparator is not None
            folded = rt.comparator
            await wait_for(lambda c=folded: c.processed >= 5, what="five pairs folded")
        assert json.loads(snap.read_text())["targets"]["c"]["requests"] == expected
    config["compare"]["seed"] = 2  # another layout: never mixed in ...
    async with run(config) as rt:
        # ... nor a reason to stop serving: the old state is set aside, counting starts anew.
        assert rt.comparator is not None and rt.comparator.targets == {}
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{rt.traffic_port}/v2/models/m/infer"
            async with session.post(url, data=body(np.zeros(4))) as r:
                assert r.status == 200
    (kept,) = tmp_path.glob("snapshot.json.superseded-*")
    assert json.loads(kept.read_text())["targets"]["c"]["requests"] == 10


async def test_the_comparator_can_be_left_out_of_a_process(backend: Backend) -> None:
    config = make_config(backend.url, compare={"enabled": False})
    async with running_proxy(config) as rt, aiohttp.ClientSession() as session:
        assert rt.comparator is None
        async with session.get(f"http://127.0.0.1:{rt.admin_port}/admin/snapshot") as r:
            assert r.status == 404
