"""Gate semantics and the decision rules built on them."""

from __future__ import annotations

import math

import pytest

from shadowproxy.config.model import Gate
from shadowproxy.report.gates import (
    GateResult,
    candidate_decision,
    evaluate_gates,
    normalised_margin,
    overall_decision,
    recommend,
)
from tests.report.samples import metric

MIN = Gate(metric="label_agreement", min=0.98)
MAX = Gate(metric="score_psi", max=0.1)


def one(gate: Gate, entry: dict | None, samples: int = 5000, min_samples: int = 1000) -> GateResult:
    metrics = {} if entry is None else {gate.metric: entry}
    (result,) = evaluate_gates([gate], metrics, samples, min_samples)
    return result


@pytest.mark.parametrize(
    ("gate", "entry", "expected"),
    [
        # min gate: the whole interval decides
        (MIN, metric(0.993, 0.991, 0.995), True),
        (MIN, metric(0.99, 0.98, 0.995), True),  # ci_low exactly at the minimum passes
        (MIN, metric(0.95, 0.94, 0.96), False),
        (MIN, metric(0.981, 0.975, 0.985), None),  # straddles
        (MIN, metric(0.97, 0.96, 0.98), None),  # ci_high at the threshold: not below it
        # max gate, mirrored
        (MAX, metric(0.05, 0.03, 0.07), True),
        (MAX, metric(0.08, 0.06, 0.1), True),
        (MAX, metric(0.2, 0.15, 0.25), False),
        (MAX, metric(0.09, 0.07, 0.12), None),
        (MAX, metric(0.11, 0.1, 0.12), None),
        # no interval: the value is compared
        (MAX, metric(0.1), True),
        (MAX, metric(0.1000001), False),
        (MIN, metric(0.98), True),
        (MIN, metric(0.979), False),
        # one end missing: that side falls back to the value
        (MIN, metric(0.99, None, 0.995), True),
        (MIN, metric(0.97, 0.96, None), False),
        # not measurable
        (MIN, metric(None, 0.9, 1.0), None),
        (MIN, metric(math.nan), None),
        (MIN, None, None),
    ],
)
def test_gate_semantics(gate: Gate, entry: dict | None, expected: bool | None) -> None:
    result = one(gate, entry)
    assert result.passed is expected
    assert result.metric == gate.metric
    assert result.op == ("min" if gate.min is not None else "max")
    assert result.threshold == (gate.min if gate.min is not None else gate.max)


def test_reasons_are_plain_language() -> None:
    passed = one(MIN, metric(0.993, 0.991, 0.995))
    assert passed.reason == (
        "label agreement 0.993 (95% CI 0.991–0.995): the whole interval is at or above "
        "the minimum 0.98"
    )
    failed = one(MAX, metric(0.2, 0.15, 0.25))
    assert "above the maximum 0.1" in failed.reason and "score psi 0.2" in failed.reason
    straddle = one(MIN, metric(0.981, 0.975, 0.985))
    assert "straddles the minimum 0.98" in straddle.reason
    assert "more samples" in straddle.reason
    assert one(MIN, None).reason == "label agreement not measured yet"
    assert one(MAX, metric(0.05)).reason == "score psi 0.05 is at or below the maximum 0.1"


def test_confidence_level_appears_in_reason() -> None:
    (r,) = evaluate_gates([MIN], {"label_agreement": metric(0.99, 0.985, 0.995)}, 5000, 10, 0.99)
    assert "99% CI" in r.reason


def test_below_min_samples_every_gate_is_undecided() -> None:
    metrics = {
        "label_agreement": metric(0.5, 0.4, 0.6),  # clearly failing
        "score_psi": metric(0.01, 0.0, 0.02),  # clearly passing
    }
    results = evaluate_gates([MIN, MAX], metrics, samples=400, min_samples=1000)
    assert [r.passed for r in results] == [None, None]
    assert all("400 of the 1000 samples needed (600 more)" in r.reason for r in results)
    # the values are still reported
    assert results[0].value == 0.5 and results[0].ci_low == 0.4
    assert candidate_decision(results, 400, 1000) == "insufficient_data"
    # at exactly min_samples the gates are decided
    decided = evaluate_gates([MIN, MAX], metrics, samples=1000, min_samples=1000)
    assert [r.passed for r in decided] == [False, True]


def test_samples_gate_falls_back_to_the_sample_count() -> None:
    gate = Gate(metric="samples", min=2000)
    assert evaluate_gates([gate], {}, 5000, 1000)[0].passed is True
    assert evaluate_gates([gate], {}, 1500, 1000)[0].passed is False


def test_gate_with_both_bounds_gives_two_results() -> None:
    gate = Gate(metric="score_bias", min=-0.01, max=0.01)
    results = evaluate_gates([gate], {"score_bias": metric(0.0, -0.02, 0.005)}, 5000, 1000)
    assert [(r.op, r.passed) for r in results] == [("min", None), ("max", True)]


def _r(
    passed: bool | None,
    op: str = "min",
    threshold: float = 1.0,
    value: float = 1.0,
    lo: float | None = None,
    hi: float | None = None,
) -> GateResult:
    return GateResult("m", op, threshold, value, lo, hi, passed, "")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("passed", "samples", "expected"),
    [
        ([True, True], 5000, "promote"),
        ([True, False], 5000, "reject"),
        ([None, False], 5000, "reject"),
        ([True, None], 5000, "insufficient_data"),
        ([], 5000, "promote"),
        ([], 10, "insufficient_data"),
    ],
)
def test_candidate_decision(passed: list, samples: int, expected: str) -> None:
    assert candidate_decision([_r(p) for p in passed], samples, 1000) == expected


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        (["promote", "reject"], "promote"),
        (["insufficient_data", "promote"], "promote"),
        (["insufficient_data", "insufficient_data"], "insufficient_data"),
        (["reject", "reject"], "reject"),
        (["reject", "insufficient_data"], "reject"),
        ([], "insufficient_data"),
    ],
)
def test_overall_decision(decisions: list[str], expected: str) -> None:
    assert overall_decision(decisions) == expected


def test_normalised_margin_uses_the_conservative_end() -> None:
    assert normalised_margin(_r(True, "min", 0.5, 0.8, lo=0.6, hi=0.9)) == pytest.approx(0.2)
    assert normalised_margin(_r(True, "max", 2.0, 1.0, lo=0.5, hi=1.5)) == pytest.approx(0.25)
    # threshold 0: divided by 1 instead
    assert normalised_margin(_r(True, "max", 0.0, -0.5)) == pytest.approx(0.5)


def test_recommend_picks_the_largest_smallest_margin() -> None:
    # a: margins 0.5 and 0.01 -> 0.01; b: margins 0.1 and 0.1 -> 0.1
    a = [_r(True, "min", 1.0, 1.6, lo=1.5), _r(True, "max", 1.0, 0.9, hi=0.99)]
    b = [_r(True, "min", 1.0, 1.2, lo=1.1), _r(True, "max", 1.0, 0.8, hi=0.9)]
    worse = [_r(False, "min", 1.0, 5.0)]
    assert recommend([("a", 9000, "promote", a), ("b", 2000, "promote", b)]) == "b"
    assert recommend([("a", 9000, "promote", a), ("c", 9000, "reject", worse)]) == "a"
    assert recommend([("c", 9000, "reject", worse)]) is None
    # ties go to more samples, then to config order
    assert recommend([("a", 1000, "promote", b), ("b", 2000, "promote", b)]) == "b"
    assert recommend([("a", 2000, "promote", b), ("b", 2000, "promote", b)]) == "a"
