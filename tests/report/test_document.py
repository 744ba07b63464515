"""report.json: the contract's shape, decisions and exit codes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from shadowproxy.config.model import Gate, Promotion
from shadowproxy.report import build_report, exit_code, write_report
from tests.report.samples import PRODUCTION, PROMOTION, evidence

CONTRACT_TOP = {"schema", "decision", "recommended", "production", "candidates"}
CONTRACT_CANDIDATE = {"name", "version", "samples", "decision", "metrics", "gates"}
CONTRACT_GATE = {"metric", "op", "threshold", "value", "ci_low", "ci_high", "passed", "reason"}


def two_candidates() -> dict:
    evs = [evidence("churn-rc", good=True), evidence("churn-bad", good=False)]
    return build_report(PRODUCTION, evs, PROMOTION)


def test_report_matches_the_contract_shape() -> None:
    report = two_candidates()
    assert CONTRACT_TOP <= set(report)
    assert report["schema"] == "shadowproxy.report/v1"
    assert report["decision"] == "promote"
    assert report["recommended"] == "churn-rc"
    assert report["production"] == {"name": "churn", "version": "1.4.0"}
    good, bad = report["candidates"]
    for c in (good, bad):
        assert CONTRACT_CANDIDATE <= set(c)
        assert isinstance(c["samples"], int)
        assert [g["metric"] for g in c["gates"]] == [
            "label_agreement",
            "score_psi",
            "latency_p99_ratio",
            "threads",
        ]
        for g in c["gates"]:
            assert set(g) == CONTRACT_GATE
            assert g["op"] in ("min", "max")
            assert isinstance(g["reason"], str) and g["reason"]
    assert (good["name"], good["version"], good["samples"]) == ("churn-rc", "2.0.0", 12000)
    assert good["decision"] == "promote" and bad["decision"] == "reject"
    # metrics: name -> value, every measured metric, not only the gated ones
    assert good["metrics"]["label_agreement"] == 0.993
    assert good["metrics"]["score_mae"] == 0.02
    assert good["gates"][0] == {
        "metric": "label_agreement",
        "op": "min",
        "threshold": 0.98,
        "value": 0.993,
        "ci_low": 0.991,
        "ci_high": 0.995,
        "passed": True,
        "reason": good["gates"][0]["reason"],
    }
    assert [g["passed"] for g in bad["gates"]] == [False, False, None, True]


def test_report_survives_a_json_round_trip_unchanged(tmp_path: Path) -> None:
    report = two_candidates()
    paths = write_report(report, tmp_path / "out" / "nested")
    assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert orjson.loads(paths[0].read_bytes()) == report
    assert b'\n  "schema"' in paths[0].read_bytes()  # indented, for people and diffs
    # no temporary file is left behind
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [
        "report.html",
        "report.json",
        "report.md",
    ]


def test_writing_again_replaces_the_files(tmp_path: Path) -> None:
    write_report(two_candidates(), tmp_path)
    report = build_report(PRODUCTION, [evidence("churn-bad", good=False)], PROMOTION)
    write_report(report, tmp_path)
    assert orjson.loads((tmp_path / "report.json").read_bytes())["decision"] == "reject"


def test_top_level_decisions() -> None:
    rejected = build_report(PRODUCTION, [evidence("x", good=False)], PROMOTION)
    assert (rejected["decision"], rejected["recommended"]) == ("reject", None)
    early = build_report(PRODUCTION, [evidence("x", good=True, samples=10)], PROMOTION)
    assert early["decision"] == "insufficient_data"
    assert early["candidates"][0]["decision"] == "insufficient_data"
    assert all(g["passed"] is None for g in early["candidates"][0]["gates"])


def test_unmeasured_metric_is_insufficient_data() -> None:
    ev = evidence("x", good=True)
    ev["metrics"]["score_psi"] = {"value": None, "ci_low": None, "ci_high": None}
    report = build_report(PRODUCTION, [ev], PROMOTION)
    assert report["decision"] == "insufficient_data"
    assert report["candidates"][0]["metrics"]["score_psi"] is None
    assert report["candidates"][0]["gates"][1]["reason"] == "score psi not measured yet"


def test_recommended_is_the_candidate_furthest_from_its_tightest_gate() -> None:
    promotion = Promotion(min_samples=100, gates=(Gate(metric="label_agreement", min=0.9),))
    close = evidence("close", good=True)
    close["metrics"]["label_agreement"] = {"value": 0.92, "ci_low": 0.91, "ci_high": 0.93}
    far = evidence("far", good=True, samples=500)
    far["metrics"]["label_agreement"] = {"value": 0.99, "ci_low": 0.97, "ci_high": 1.0}
    report = build_report(PRODUCTION, [close, far], promotion)
    assert [c["decision"] for c in report["candidates"]] == ["promote", "promote"]
    assert report["recommended"] == "far"


@pytest.mark.parametrize(
    ("decision", "code"), [("promote", 0), ("reject", 1), ("insufficient_data", 3)]
)
def test_exit_codes(decision: str, code: int) -> None:
    assert exit_code(decision) == code


def test_unknown_decision_has_no_exit_code() -> None:
    with pytest.raises(ValueError, match="unknown decision"):
        exit_code("maybe")


def test_build_report_is_deterministic() -> None:
    assert orjson.dumps(two_candidates()) == orjson.dumps(two_candidates())
