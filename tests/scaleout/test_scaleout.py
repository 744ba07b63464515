"""Scale-out: replicas that split the traffic give the answer of one that saw all of it.

Two replicas of one config serve half the traffic each; a third sees all of it. Their
admin listeners answer on one port, one on 127.0.0.1 and one on ::1, so one host name
stands for both (as a headless Service does), and a real Prometheus scrapes both. The
report merged from the two replicas (admin URLs, the DNS form, snapshot files) must equal
the single replica's bit for bit wherever merging is exact; the report from Prometheus must
equal the merged one on what it can compute, keep the binned figures within their bounds,
and leave the sample-based gate undecided, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from shadowproxy.cli import main
from shadowproxy.compare.binned import BIN_BOUNDS, EXACT, NEEDS_SNAPSHOTS, NORMAL_INTERVAL
from shadowproxy.runtime import Runtime
from tests.scaleout.hosts import with_hosts
from tests.scaleout.prometheus import PrometheusServer, prometheus_server
from tests.scaleout.replicas import (
    PRODUCTION,
    RETRAIN,
    SHIFTED,
    TRUTH,
    bounded,
    dual_stack_port,
    feedback,
    reference,
    replica_config,
    send,
    stub_model,
    traffic,
)
from tests.support.proxy import running_proxy
from tests.support.waiting import wait_for

N = 400
NAME = "replicas.shadowproxy.test"
# Each process measures its own exchanges: latencies differ between the whole replica and
# the two halves. Means merge to floating-point rounding.
MEASURED = {"latency_p50_ms", "latency_p99_ms", "latency_p99_ratio"}
ROUNDED = {"score_mae", "score_bias", "noise_adjusted_score_mae"}


def admin(rt: Runtime, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{rt.admin_port}"


async def report(
    tmp: Path, name: str, config: Path, sources: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any], str]:
    """``shadowproxy report`` in a thread (the replicas answer on this loop)."""
    args = ["report", "--config", str(config), "--out", str(tmp / name)]
    for source in sources:
        args += ["--source", source]
    code = await asyncio.to_thread(main, args)
    captured = capsys.readouterr()
    path = tmp / name / "report.json"
    document = json.loads(path.read_text()) if code != 2 else {}
    return code, document, captured.out + captured.err


def without_source(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != "source"}


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in document["candidates"]}


async def test_replicas_give_the_answer_of_one_process_that_saw_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = dual_stack_port()
    rows = traffic(N)
    # Started first: its discovery takes a few seconds, which the traffic below covers.
    with prometheus_server(tmp_path / "prometheus", [f"127.0.0.1:{port}", f"[::1]:{port}"]) as prom:
        async with contextlib.AsyncExitStack() as models:
            urls = [
                await models.enter_async_context(stub_model(name, weights, bias))
                for name, (weights, bias) in
                (("churn", PRODUCTION), ("retrain", RETRAIN), ("shifted", SHIFTED))
            ]  # fmt: skip
            base = replica_config(*urls, reference(tmp_path))
            config_path = tmp_path / "config.yaml"
            config_path.write_text(yaml.safe_dump(base))

            def replica(host: str, admin_port: int, snapshot: str) -> dict[str, Any]:
                return {**base, "admin": {"host": host, "port": admin_port},
                        "compare": {**base["compare"], "snapshot": {
                            "path": str(tmp_path / snapshot), "interval_s": 60}}}  # fmt: skip

            async with contextlib.AsyncExitStack() as replicas:
                a = await replicas.enter_async_context(
                    running_proxy(replica("127.0.0.1", port, "a.json"))
                )
                b = await replicas.enter_async_context(
                    running_proxy(replica("::1", port, "b.json"))
                )
                whole = await replicas.enter_async_context(
                    running_proxy(replica("127.0.0.1", 0, "whole.json"))
                )
                await run_traffic(a, b, whole, rows)
                # While Prometheus discovers its targets, the reports from the replicas.
                reports = await read_reports(tmp_path, config_path, a, b, whole, capsys)
                await wait_for_prometheus(prom, whole)
                reports["prometheus"] = await report(
                    tmp_path, "prometheus-report", config_path, [prom.source], capsys
                )
                await refused_sources(tmp_path, config_path, base, a, prom, capsys)
            # The replicas drained and wrote their last snapshots.
            files = await report(
                tmp_path, "files", config_path,
                [str(tmp_path / "a.json"), str(tmp_path / "b.json")], capsys,
            )  # fmt: skip

    code, single, _ = reports["whole"]
    assert code == 0 and single["recommended"] == "retrain"
    assert by_name(single)["shifted"]["decision"] == "reject"
    merged = reports["admins"][1]
    check_merge_is_exact(single, merged)
    # The same two states, read three ways, give the same report bit for bit.
    for name, (code, document, _) in (("dns", reports["dns"]), ("files", files)):
        assert code == 0, name
        assert without_source(document) == without_source(merged), name
    assert reports["dns"][1]["source"]["origins"] == [
        f"http://127.0.0.1:{port}", f"http://[::1]:{port}"
    ]  # fmt: skip
    assert files[1]["source"] == {
        "kind": "snapshot", "sources": [str(tmp_path / "a.json"), str(tmp_path / "b.json")],
        "replicas": 2, "origins": [str(tmp_path / "a.json"), str(tmp_path / "b.json")],
    }  # fmt: skip
    check_prometheus_report(reports["prometheus"], merged, port, tmp_path / "prometheus-report")


async def run_traffic(a: Runtime, b: Runtime, whole: Runtime, rows: Any) -> None:
    """Split the traffic between a and b, send all of it to ``whole``, then the feedback."""
    halves = [(a if i % 2 == 0 else b, f"req-{i}", row) for i, row in enumerate(rows)]
    async with aiohttp.ClientSession() as session:
        await bounded(
            [send(session, f"http://127.0.0.1:{rt.traffic_port}", rid, row)
             for rt, rid, row in halves]
            + [send(session, f"http://127.0.0.1:{whole.traffic_port}", rid, row)
               for _, rid, row in halves]
        )  # fmt: skip
        for rt, expected in ((a, N // 2), (b, N // 2), (whole, N)):
            comparator = rt.comparator
            assert comparator is not None
            await wait_for(lambda c=comparator, n=expected: c.processed >= n, timeout=20,
                           what="every pair folded")  # fmt: skip
        # Ground truth arrives later, at the replica that served the request.
        truth = [int(row @ TRUTH > 0) for _, _, row in halves]
        split = await bounded(
            [feedback(session, admin(rt, "[::1]" if rt is b else "127.0.0.1"), rid, label)
             for (rt, rid, _), label in zip(halves, truth, strict=True)]
        )  # fmt: skip
        joined = await bounded(
            [feedback(session, admin(whole), rid, label)
             for (_, rid, _), label in zip(halves, truth, strict=True)]
        )  # fmt: skip
    # Every request had a labelled pair, in its replica and in the whole one.
    assert split == joined == [202] * N, [outcomes(rt) for rt in (a, b, whole)]


def outcomes(rt: Runtime) -> dict[str, dict[str, int]]:
    """Each target's exchange outcomes in one replica (what a failed pairing shows)."""
    assert rt.comparator is not None
    return {name: st.candidate_outcomes for name, st in rt.comparator.targets.items()}


async def wait_for_prometheus(prom: PrometheusServer, whole: Runtime) -> None:
    """Until Prometheus's latest scrape of both replicas holds all traffic and feedback."""
    assert whole.comparator is not None
    targets = whole.comparator.targets.values()
    await prom.wait_until("count(shadowproxy_comparator_layout_info)", 2)
    await prom.wait_until(
        "sum(shadowproxy_comparator_requests_total)", sum(t.requests for t in targets)
    )
    await prom.wait_until(
        "sum(shadowproxy_comparator_feedback_rows_total)", sum(t.feedback_rows for t in targets)
    )


async def read_reports(
    tmp: Path, config: Path, a: Runtime, b: Runtime, whole: Runtime,
    capsys: pytest.CaptureFixture[str],
) -> dict[str, tuple[int, dict[str, Any], str]]:  # fmt: skip
    """The reports of the whole replica, of both halves' admin URLs and of their DNS name."""
    # One name, two addresses (and one listed twice): resolved in a private hosts file.
    command = with_hosts(
        [sys.executable, "-m", "shadowproxy", "report", "--config", str(config),
         "--source", f"dns+http://{NAME}:{a.admin_port}", "--out", str(tmp / "dns")],
        [("127.0.0.1", NAME), ("::1", NAME), ("127.0.0.1", NAME)],
        tmp,
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out = {
        "whole": await report(tmp, "whole", config, [admin(whole)], capsys),
        "admins": await report(tmp, "admins", config, [admin(a), admin(b, "[::1]")], capsys),
    }
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    out["dns"] = (0, json.loads((tmp / "dns" / "report.json").read_text()), stdout.decode())
    return out


async def refused_sources(
    tmp: Path, config: Path, base: dict[str, Any], a: Runtime, prom: PrometheusServer,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Sources that would not give the exact answer are refused, each saying why."""
    code, _, text = await report(tmp, "mixed", config, [prom.source, admin(a)], capsys)
    assert code == 2 and "cannot be combined" in text and "count twice" in text
    other = tmp / "other-seed.yaml"
    other.write_text(yaml.safe_dump({**base, "compare": {**base["compare"], "seed": 6}}))
    code, _, seed_text = await report(tmp, "other", other, [prom.source], capsys)
    assert code == 2 and "refusing to mix" in seed_text


def check_merge_is_exact(single: dict[str, Any], merged: dict[str, Any]) -> None:
    """Every figure that does not depend on one process's own clock is the same."""
    assert merged["decision"] == single["decision"]
    assert merged["recommended"] == single["recommended"]
    one, two = by_name(single), by_name(merged)
    assert set(one) == set(two) == {"retrain", "shifted"}
    for name, c in one.items():
        m = two[name]
        assert m["samples"] == c["samples"] > 100
        for metric, entry in c["evidence"]["metrics"].items():
            other = m["evidence"]["metrics"][metric]
            if metric in MEASURED:
                continue
            if metric in ROUNDED:
                assert other["value"] == pytest.approx(entry["value"], rel=1e-12), metric
                # The bootstrap runs over the seeded sample, which merges exactly.
                assert (other["ci_low"], other["ci_high"]) == (entry["ci_low"], entry["ci_high"])
            else:
                assert other == entry, (name, metric)
        for key in ("flip_matrix", "slices", "examples", "input_drift"):
            assert m["evidence"][key] == c["evidence"][key], (name, key)
        for key in ("score_hist", "abs_diff_hist", "input_psi"):
            assert m["evidence"]["plots"][key] == c["evidence"]["plots"][key], (name, key)
        assert [g["passed"] for g in m["gates"]] == [g["passed"] for g in c["gates"]]
    assert one["shifted"]["samples"] < one["retrain"]["samples"]  # the sampled half


def check_prometheus_report(
    result: tuple[int, dict[str, Any], str], merged: dict[str, Any], port: int, out: Path
) -> None:
    code, document, _ = result
    source = document["source"]
    assert source["kind"] == "prometheus" and source["replicas"] == 2
    assert source["origins"] == sorted([f"127.0.0.1:{port}", f"[::1]:{port}"])
    assert "score_ks_pvalue" in source["figures"]["needs_snapshots"]
    # The retrain's sample-based gate cannot be decided from Prometheus; the shifted
    # model fails on exact figures anyway.
    assert code == 1 and document["decision"] == "reject"
    prom, snap = by_name(document), by_name(merged)
    for name, c in prom.items():
        s = snap[name]
        assert c["samples"] == s["samples"]
        metrics, expected = c["evidence"]["metrics"], s["evidence"]["metrics"]
        for metric in EXACT:
            if metric in expected:
                got = {k: metrics[metric][k] for k in ("value", "ci_low", "ci_high")}
                assert got == expected[metric], (name, metric)
        for metric in NORMAL_INTERVAL:
            assert metrics[metric]["value"] == pytest.approx(expected[metric]["value"], rel=1e-9)
        for metric in BIN_BOUNDS:
            # Fewer rows than the sample holds: the snapshot's figure is the raw data's. The
            # latency extremes travel in seconds, hence the rounding allowance.
            low, high = metrics[metric]["ci_low"], metrics[metric]["ci_high"]
            assert low * (1 - 1e-12) <= s["metrics"][metric] <= high * (1 + 1e-12), metric
        for metric in NEEDS_SNAPSHOTS:
            assert c["metrics"][metric] is None and metric in c["unavailable"]
        for key in ("flip_matrix", "input_drift"):
            assert c["evidence"][key] == s["evidence"][key], (name, key)
        for plot in ("score_hist", "abs_diff_hist", "input_psi", "resources"):
            assert c["evidence"]["plots"][plot] == s["evidence"]["plots"][plot], (name, plot)
        assert "examples" not in c["evidence"] or not c["evidence"]["examples"]
    gate = next(g for g in prom["retrain"]["gates"] if g["metric"] == "score_ks_pvalue")
    assert gate["passed"] is None and "needs snapshot or admin sources" in gate["reason"]
    assert prom["retrain"]["decision"] == "insufficient_data"
    assert snap["retrain"]["decision"] == "promote"
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (markdown, page):
        assert "Comparator state from Prometheus" in text
        assert "needs snapshot or admin sources" in text
