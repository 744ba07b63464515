"""The launcher behind ``make run`` / ``make demo``: stub model servers, proxy, traffic."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import yaml

from shadowproxy.devtools.stub_model import score_rows
from tests.support.proxy import free_port

REPO = Path(__file__).resolve().parents[2]


def test_demo_mode_serves_traffic_through_the_proxy_and_exits(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "configs" / "local-dev.yaml").read_text())
    config["listen"]["port"], config["admin"]["port"] = free_port(), free_port()
    config["production"]["url"] = f"http://127.0.0.1:{free_port()}"
    config["candidates"][0]["url"] = f"http://127.0.0.1:{free_port()}"
    config["pair_log"]["path"] = str(tmp_path / "pairs.jsonl")
    config["compare"]["snapshot"]["path"] = str(tmp_path / "snapshot.json")
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(config))

    done = subprocess.run(
        [sys.executable, "-m", "shadowproxy.devtools.run_local", "--config", str(path),
         "--traffic", "60"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "statuses {200: 60}" in done.stdout
    name = config["candidates"][0]["name"]
    assert f'shadowproxy_pairs_total{{model="{name}"' in done.stdout
    assert len((tmp_path / "pairs.jsonl").read_text().splitlines()) == 60
    assert "drained, exiting" in done.stderr  # the proxy was stopped cleanly, not killed


def test_stub_scores_are_logistic_and_differ_between_weights() -> None:
    rows = [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    production = score_rows(rows, [0.8, -0.5, 0.3], 0.0)
    candidate = score_rows(rows, [0.82, -0.48, 0.3], 0.0)
    assert production[0] == 0.5  # z = 0
    assert abs(production[1] - 1 / (1 + math.exp(-0.3))) < 1e-12
    assert abs(candidate[1] - 1 / (1 + math.exp(-0.34))) < 1e-12
    assert score_rows([[1e6, 0.0, 0.0]], [1.0, 0.0, 0.0], 0.0) == [1.0]  # no overflow
