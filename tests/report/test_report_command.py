"""``shadowproxy report`` on bad input: every failure is exit 2 naming the argument, and
no crash can ever exit 1 (reject) or another decision's code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shadowproxy import cli
from shadowproxy.compare.persist import write_snapshot
from tests.compare.test_comparator import fold, records

CONFIG = """\
production: {name: prod, version: "1", url: "http://127.0.0.1:9"}
candidates: [{name: cand, version: "2", url: "http://127.0.0.1:10"}]
baseline: {name: base, version: "1", url: "http://127.0.0.1:11"}
compare: {outputs: {score: probabilities, label: label}, seed: 7}
promotion: {min_samples: 10}
"""


def report(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "shadowproxy", "report", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    from tests.compare.test_comparator import config

    path = tmp_path / "snapshot.json"
    write_snapshot(path, fold(config(), records(40, seed=1)).snapshot())
    return path


def test_an_out_that_cannot_be_a_folder_is_exit_2(tmp_path: Path, snapshot: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out in (a_file, a_file / "sub"):
        result = report(tmp_path, "--source", str(snapshot), "--out", str(out))
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"--out: cannot write the report to {out}")
    good = report(tmp_path, "--source", str(snapshot), "--out", str(tmp_path / "r"))
    assert good.returncode == 0 and (tmp_path / "r" / "report.json").is_file()  # no gates


def test_a_snapshot_whose_counts_contradict_each_other_is_exit_2(
    tmp_path: Path, snapshot: Path
) -> None:
    data: dict[str, Any] = json.loads(snapshot.read_text())
    data["targets"]["cand"]["agree"] = 10**6
    snapshot.write_text(json.dumps(data))
    result = report(tmp_path, "--source", str(snapshot), "--out", str(tmp_path / "r"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"--source: {snapshot}: target state of 'cand' is malformed")
    assert "Traceback" not in result.stderr


def test_the_baseline_is_not_a_candidate_to_report_on(tmp_path: Path, snapshot: Path) -> None:
    # The folded records name only "cand"; the baseline's name is refused all the same.
    for name in ("base", "nope"):
        result = report(tmp_path, "--source", str(snapshot), "--out", str(tmp_path / "r"),
                        "--candidate", name)  # fmt: skip
        assert result.returncode == 2
        assert result.stderr.startswith(f"--candidate: no candidate {name!r} in the sources (cand)")


def test_a_defect_exits_70_with_its_traceback_never_a_decision(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_args: object) -> int:
        raise RuntimeError("a defect")

    monkeypatch.setattr(cli, "cmd_report", broken)
    code = cli.main(["report", "--config", "c.yaml", "--source", "s", "--out", "o"])
    assert code == cli.EXIT_INTERNAL == 70
    assert "internal error in report" in caplog.text and "RuntimeError: a defect" in caplog.text
