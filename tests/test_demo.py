"""``shadowproxy demo`` in short mode: the three expected decisions and the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil


def test_the_demo_promotes_the_retrain_and_rejects_the_shifted_model_and_the_hog(
    tmp_path: Path,
) -> None:
    out = tmp_path / "report"
    before = {p.pid for p in psutil.process_iter()}
    result = subprocess.run(
        [sys.executable, "-m", "shadowproxy", "demo", "--out", str(out), "--requests", "800"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    decisions = {c["name"]: c["decision"] for c in report["candidates"]}
    assert decisions == {"retrain": "promote", "shifted": "reject", "hog": "reject"}, json.dumps(
        [{c["name"]: c["gates"]} for c in report["candidates"]], indent=1
    )
    assert report["decision"] == "promote" and report["recommended"] == "retrain"
    gates = {
        c["name"]: {g["metric"]: g["passed"] for g in c["gates"]} for c in report["candidates"]
    }
    assert gates["shifted"]["label_agreement"] is False or gates["shifted"]["score_psi"] is False
    assert gates["hog"]["label_agreement"] is True  # the same answers: only its cost fails
    assert False in (gates["hog"]["cpu_ratio"], gates["hog"]["rss_delta_mb"])
    for name in ("report.json", "report.md", "report.html", "snapshot.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert "report.html" in result.stdout and "SHIFTED" in result.stdout + result.stderr
    # Nothing the demo started is left running.
    leftovers = [
        p for p in psutil.process_iter(["pid", "cmdline"])
        if p.pid not in before and any("shadowproxy" in part for part in (p.info["cmdline"] or []))
    ]  # fmt: skip
    assert not leftovers, [p.info["cmdline"] for p in leftovers]


def test_ctrl_c_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    import signal
    import time

    before = {p.pid for p in psutil.process_iter()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowproxy", "demo", "--out", str(tmp_path / "r")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    started: list[psutil.Process] = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait until the servers and the proxy are up
        if "mirrors every request" in line:
            break
        assert time.monotonic() < deadline, "the demo never started its proxy"
    me = psutil.Process()
    started = [p for p in me.children(recursive=True) if p.pid != proc.pid]
    assert len(started) >= 3  # two model servers and the proxy (and its workers)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    gone, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, [p.pid for p in alive]
    leftovers = [
        p for p in psutil.process_iter(["pid", "cmdline"])
        if p.pid not in before and any("shadowproxy" in part for part in (p.info["cmdline"] or []))
    ]  # fmt: skip
    assert not leftovers, [p.info["cmdline"] for p in leftovers]
