"""Streaming moments: agreement with numpy, stable merges, non-finite values, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.compare.moments import Moments
from shadowproxy.errors import StateError
from tests.compare.strategies import partitions


def close(a: float, b: float, scale: float) -> bool:
    # 1e-9 relative, with an absolute floor tied to the data's magnitude for values that
    # cancel to (near) zero.
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * scale)


def test_matches_numpy() -> None:
    x = np.random.default_rng(3).normal(5.0, 2.0, size=10_001)
    m = Moments()
    for chunk in np.array_split(x, 7):
        m.add(chunk)
    assert m.count == x.size
    assert m.mean == pytest.approx(x.mean(), rel=1e-12)
    assert m.variance == pytest.approx(x.var(ddof=1), rel=1e-10)
    assert m.std == pytest.approx(x.std(ddof=1), rel=1e-10)
    assert (m.min, m.max) == (x.min(), x.max())


def test_stable_with_a_large_offset() -> None:
    # A naive sum of squares loses every digit here; the pairwise update does not.
    x = 1e9 + np.random.default_rng(4).normal(size=5000)
    m = Moments()
    for chunk in np.array_split(x, 50):
        m.add(chunk)
    assert m.variance == pytest.approx(np.var(x - 1e9, ddof=1), rel=1e-6)


def test_nonfinite_values_are_counted_apart() -> None:
    m = Moments()
    m.add(np.array([1.0, np.nan, 3.0, np.inf, -np.inf]))
    assert (m.count, m.nonfinite) == (2, 3)
    assert (m.mean, m.min, m.max) == (2.0, 1.0, 3.0)


def test_empty_and_single_value() -> None:
    m = Moments()
    assert m.count == 0
    assert all(math.isnan(v) for v in (m.mean, m.variance, m.std, m.min, m.max))
    m.add(np.array([]))
    assert m.count == 0
    m.add(np.array([4.0]))
    assert (m.mean, m.min, m.max) == (4.0, 4.0, 4.0)
    assert math.isnan(m.variance)


@settings(max_examples=150, deadline=None)
@given(
    partitions(
        st.one_of(
            st.floats(-1e6, 1e6, allow_nan=False),
            st.sampled_from([math.nan, math.inf]),
        )
    )
)
def test_merge_of_parts_equals_one_process(split: tuple[list, list[list]]) -> None:
    data, parts = split
    whole = Moments()
    whole.add(np.asarray(data, dtype=np.float64))
    merged = Moments()
    for part in parts:
        m = Moments()
        m.add(np.asarray(part, dtype=np.float64))
        merged.merge(m)
    finite = [v for v in data if math.isfinite(v)]
    scale = max([1.0, *(abs(v) for v in finite)])
    assert (merged.count, merged.nonfinite) == (whole.count, whole.nonfinite)
    assert close(merged.mean, whole.mean, scale)
    assert close(merged.m2, whole.m2, scale * scale * max(1, len(finite)))
    assert close(merged.variance, whole.variance, scale * scale)
    assert close(merged.min, whole.min, scale) and close(merged.max, whole.max, scale)
    if len(finite) > 1:
        assert close(whole.variance, float(np.var(finite, ddof=1)), scale * scale)


def test_merge_refuses_other_types() -> None:
    with pytest.raises(StateError, match="list"):
        Moments().merge([1.0])  # type: ignore[arg-type]


def test_json_roundtrip_is_exact() -> None:
    m = Moments()
    m.add(np.random.default_rng(5).normal(size=333) / 3)
    m.add(np.array([np.nan]))
    d = json.loads(json.dumps(m.to_json(), allow_nan=False))
    back = Moments.from_json(d)
    assert back.to_json() == m.to_json()
    assert (back.mean, back.m2, back.min, back.max) == (m.mean, m.m2, m.min, m.max)
    empty = Moments.from_json(json.loads(json.dumps(Moments().to_json(), allow_nan=False)))
    assert empty.count == 0 and math.isnan(empty.min)


@pytest.mark.parametrize(
    "change",
    [{"count": -1}, {"mean": "x"}, {"m2": -1.0}, {"min": None}, {"schema": "other"}],
)
def test_from_json_refuses_malformed(change: dict) -> None:
    m = Moments()
    m.add(np.array([1.0, 2.0]))
    with pytest.raises(StateError):
        Moments.from_json({**m.to_json(), **change})
