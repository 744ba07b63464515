"""Quantile sketch: relative accuracy, zeros and negatives, exact merges, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.compare.sketch import QuantileSketch
from shadowproxy.errors import StateError
from tests.compare.strategies import partitions

QS = np.array([0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0])


def assert_within(sketch: QuantileSketch, data: np.ndarray, qs: np.ndarray = QS) -> None:
    got = sketch.quantile(qs)
    # The sketch answers the order statistic of rank floor(q * (n - 1)), numpy's "lower".
    true = np.quantile(data, qs, method="lower")
    bound = sketch.alpha * np.abs(true) * (1 + 1e-12) + sketch.min_value
    assert np.all(np.abs(got - true) <= bound), (got, true)


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_lognormal_quantiles_within_alpha(alpha: float) -> None:
    x = np.random.default_rng(6).lognormal(mean=1.0, sigma=2.0, size=100_000)
    sketch = QuantileSketch(alpha=alpha)
    for chunk in np.array_split(x, 10):
        sketch.add(chunk)
    assert sketch.count == x.size
    assert_within(sketch, x, np.linspace(0, 1, 201))
    # Exact at the ends: the extremes are tracked exactly.
    assert sketch.quantile(0.0) == x.min() and sketch.quantile(1.0) == x.max()


def test_accuracy_is_not_trivially_met() -> None:
    # The same check with a ten times smaller alpha must fail for a coarse sketch.
    x = np.random.default_rng(7).lognormal(size=10_000)
    coarse = QuantileSketch(alpha=0.1)
    coarse.add(x)
    got = coarse.quantile(QS[1:-1])
    true = np.quantile(x, QS[1:-1], method="lower")
    assert np.all(np.abs(got - true) <= 0.1 * true * (1 + 1e-12))
    assert np.any(np.abs(got - true) > 0.01 * true)


def test_zeros_and_negatives() -> None:
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.normal(0, 10, 20_000), np.zeros(3000), -rng.lognormal(size=5000)])
    rng.shuffle(x)
    sketch = QuantileSketch()
    sketch.add(x)
    assert sketch.zero == 3000
    assert_within(sketch, x, np.linspace(0, 1, 101))
    assert sketch.quantile(0.0) == x.min()


def test_all_negative_mirrors_all_positive() -> None:
    x = np.random.default_rng(9).lognormal(size=1001)
    pos, neg = QuantileSketch(), QuantileSketch()
    pos.add(x)
    neg.add(-x)
    assert neg.negative == pos.positive and not neg.positive
    # With 1001 values these q and 1 - q select mirrored ranks exactly.
    assert neg.quantile(0.5) == -pos.quantile(0.5)
    assert (neg.quantile(0.0), neg.quantile(1.0)) == (-pos.quantile(1.0), -pos.quantile(0.0))


def test_huge_values_do_not_overflow() -> None:
    sketch = QuantileSketch()
    sketch.add(np.array([1.7e308, -1.7e308, 1e300]))
    assert sketch.quantile(1.0) == 1.7e308 and sketch.quantile(0.0) == -1.7e308
    assert abs(sketch.quantile(0.5) - 1e300) <= 0.01 * 1e300


def test_tiny_values_count_as_zero() -> None:
    sketch = QuantileSketch(min_value=1e-6)
    sketch.add(np.array([1e-7, -1e-7, 0.0, 1.0]))
    assert sketch.zero == 3 and sketch.count == 4
    assert sketch.quantile(0.5) == 0.0


def test_nonfinite_values_are_left_out() -> None:
    sketch = QuantileSketch()
    sketch.add(np.array([np.nan, np.inf, -np.inf, 2.0]))
    assert (sketch.count, sketch.nonfinite) == (1, 3)
    assert sketch.quantile(0.5) == 2.0


def test_empty_and_scalar_or_array_answers() -> None:
    sketch = QuantileSketch()
    assert math.isnan(sketch.quantile(0.5))
    assert np.isnan(sketch.quantile(np.array([0.1, 0.9]))).all()
    sketch.add(np.arange(1.0, 101.0))
    assert isinstance(sketch.quantile(0.5), float)
    assert sketch.quantile(np.array([[0.1, 0.5], [0.9, 1.0]])).shape == (2, 2)


@pytest.mark.parametrize("q", [-0.1, 1.5, math.nan])
def test_bad_q(q: float) -> None:
    sketch = QuantileSketch()
    sketch.add(np.ones(3))
    with pytest.raises(ValueError, match="q must"):
        sketch.quantile(q)


@pytest.mark.parametrize(("alpha", "min_value"), [(0.0, 1e-9), (1.0, 1e-9), (0.01, 0.0)])
def test_bad_arguments(alpha: float, min_value: float) -> None:
    with pytest.raises(ValueError, match="alpha" if min_value else "min_value"):
        QuantileSketch(alpha, min_value)


def test_bucket_count_is_bounded_by_the_value_range() -> None:
    sketch = QuantileSketch()
    rng = np.random.default_rng(10)
    for _ in range(20):
        sketch.add(rng.lognormal(sigma=3.0, size=50_000))
    bound = math.log(sketch.max / sketch.min) / math.log(sketch.gamma) + 2
    assert len(sketch.positive) <= bound
    assert sketch.count == 1_000_000


@settings(max_examples=150, deadline=None)
@given(partitions(st.floats(allow_nan=True, allow_infinity=True, width=64)))
def test_merge_of_parts_equals_one_process(split: tuple[list, list[list]]) -> None:
    data, parts = split
    whole = QuantileSketch()
    whole.add(np.asarray(data, dtype=np.float64))
    merged = QuantileSketch()
    for part in parts:
        s = QuantileSketch()
        s.add(np.asarray(part, dtype=np.float64))
        merged.merge(s)
    assert merged == whole
    assert merged.positive == whole.positive and merged.negative == whole.negative
    assert (merged.zero, merged.nonfinite) == (whole.zero, whole.nonfinite)
    if whole.count:
        assert np.array_equal(merged.quantile(QS), whole.quantile(QS))


def test_merge_refuses_another_alpha() -> None:
    with pytest.raises(StateError, match="0.02"):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))


def test_json_roundtrip_is_exact_and_sparse() -> None:
    sketch = QuantileSketch(alpha=0.02, min_value=1e-4)
    sketch.add(np.array([0.0, 1e-5, -3.0, 5.0, 5.0, 1e6, np.nan]))
    d = json.loads(json.dumps(sketch.to_json(), allow_nan=False))
    assert sum(d["positive"].values()) == 3 and len(d["positive"]) == 2
    back = QuantileSketch.from_json(d)
    assert back == sketch
    assert np.array_equal(back.quantile(QS), sketch.quantile(QS))
    empty = QuantileSketch.from_json(json.loads(json.dumps(QuantileSketch().to_json())))
    assert empty.count == 0


@pytest.mark.parametrize(
    "change",
    [
        {"alpha": 2.0},
        {"zero": -1},
        {"positive": {"3": 1.5}},
        {"positive": {"x": 1}},
        {"min": None},
        {"schema": "other"},
    ],
)
def test_from_json_refuses_malformed(change: dict) -> None:
    sketch = QuantileSketch()
    sketch.add(np.array([1.0, 2.0]))
    with pytest.raises(StateError):
        QuantileSketch.from_json({**sketch.to_json(), **change})
