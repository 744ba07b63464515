"""``shadowproxy demo`` in short mode: the three expected decisions and the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil


def test_the_demo_promotes_the_retrain_and_rejects_the_shifted_model_and_the_hog(
    tmp_path: Path,
) -> None:
    out = tmp_path / "report"
    # Output to files: a pipe nobody reads while the demo runs could fill up and stall it.
    log_out, log_err = (tmp_path / "stdout").open("w"), (tmp_path / "stderr").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowproxy", "demo", "--out", str(out), "--requests", "800"],
        stdout=log_out, stderr=log_err, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    # Every process the demo starts, seen while it runs, must be gone when it is done.
    started: dict[int, psutil.Process] = {}
    demo = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            for child in demo.children(recursive=True):
                started.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    proc.wait(600)
    log_out.close()
    log_err.close()
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
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
    assert len(started) >= 3  # two model servers and the proxy, and the proxy's workers
    gone, alive = psutil.wait_procs(list(started.values()), timeout=15)
    assert not alive, [p.pid for p in alive]


def test_ctrl_c_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    import signal

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
