"""Bin layouts and histograms: bin semantics, exact merges, JSON and layout checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.compare.bins import BinLayout, Histogram
from shadowproxy.errors import StateError
from tests.compare.strategies import partitions

LAYOUT = BinLayout((-1.0, 0.0, 0.5, 2.0))


def roundtrip(d: dict) -> dict:
    # Through JSON text, strictly (no NaN tokens), as a snapshot would travel.
    return json.loads(json.dumps(d, allow_nan=False))


def test_index_follows_half_open_bins() -> None:
    values = np.array([-np.inf, -5.0, -1.0, -0.5, 0.0, 0.49, 0.5, 2.0, 1e300, np.inf, np.nan])
    assert LAYOUT.index(values).tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 4, 4, -1]
    assert LAYOUT.bins == 5


def test_index_keeps_shape() -> None:
    assert LAYOUT.index(np.zeros((2, 3))).shape == (2, 3)


@pytest.mark.parametrize(
    "edges",
    [(), (1.0, 1.0), (2.0, 1.0), (0.0, float("nan")), (0.0, float("inf")), ("a",)],
)
def test_bad_edges_are_refused(edges: tuple) -> None:
    with pytest.raises(ValueError, match="edges"):
        BinLayout(edges)


def test_edges_are_normalised_to_floats() -> None:
    a = BinLayout((0, 1, np.float32(2.0)))  # type: ignore[arg-type]  # normalised on purpose
    b = BinLayout((0.0, 1.0, 2.0))
    assert a == b and a.fingerprint() == b.fingerprint()
    assert all(type(e) is float for e in a.edges)


def test_fingerprint_is_stable_and_sensitive() -> None:
    fp = LAYOUT.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert BinLayout((-1.0, 0.0, 0.5, 2.0)).fingerprint() == fp
    # One ulp of difference in one edge is a different layout.
    assert BinLayout((-1.0, 0.0, np.nextafter(0.5, 1.0), 2.0)).fingerprint() != fp


def test_from_quantiles_balances_bins() -> None:
    data = np.random.default_rng(1).normal(size=10_000)
    layout = BinLayout.from_quantiles(data, bins=10)
    assert layout.bins == 10
    hist = Histogram(layout)
    hist.add(data)
    assert hist.counts.min() >= 990 and hist.counts.max() <= 1010


def test_from_quantiles_drops_duplicates_and_nonfinite() -> None:
    data = np.array([1.0] * 90 + [2.0] * 10 + [np.nan, np.inf, -np.inf])
    layout = BinLayout.from_quantiles(data, bins=10)
    assert layout.edges == (1.0, 2.0)
    assert BinLayout.from_quantiles(np.full(5, 3.0), bins=4).edges == (3.0,)


@pytest.mark.parametrize("data", [np.array([]), np.array([np.nan, np.inf])])
def test_from_quantiles_needs_finite_data(data: np.ndarray) -> None:
    with pytest.raises(ValueError, match="finite"):
        BinLayout.from_quantiles(data)


@pytest.mark.parametrize("bins", [1, 0, 2.5, True])
def test_from_quantiles_refuses_bad_bins(bins: object) -> None:
    with pytest.raises(ValueError, match="bins"):
        BinLayout.from_quantiles(np.arange(10.0), bins=bins)  # type: ignore[arg-type]


def test_uniform() -> None:
    layout = BinLayout.uniform(0.0, 1.0, 4)
    assert layout.edges == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert layout.bins == 6
    with pytest.raises(ValueError, match="lo"):
        BinLayout.uniform(1.0, 1.0, 4)
    with pytest.raises(ValueError, match="bins"):
        BinLayout.uniform(0.0, 1.0, 0)


def test_histogram_counts_match_a_plain_loop() -> None:
    values = np.random.default_rng(2).normal(scale=2.0, size=1000)
    values[::50] = np.nan
    hist = Histogram(LAYOUT)
    hist.add(values[:300])
    hist.add(values[300:].reshape(35, 20))
    expected = [0] * LAYOUT.bins
    for v in values:
        if not np.isnan(v):
            expected[sum(v >= e for e in LAYOUT.edges)] += 1
    assert hist.counts.tolist() == expected
    assert hist.nan == 20
    assert hist.total == 1000
    assert hist.counts.dtype == np.int64


@settings(max_examples=150, deadline=None)
@given(
    partitions(st.floats(allow_nan=True, allow_infinity=True, width=64)),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=6, unique=True).map(
        sorted
    ),
)
def test_merge_of_parts_equals_one_process(split: tuple[list, list[list]], edges: list) -> None:
    data, parts = split
    layout = BinLayout(tuple(edges))
    whole = Histogram(layout)
    whole.add(np.asarray(data, dtype=np.float64))
    merged = Histogram(layout)
    for part in parts:
        h = Histogram(layout)
        h.add(np.asarray(part, dtype=np.float64))
        merged.merge(h)
    assert merged == whole
    assert merged.counts.tolist() == whole.counts.tolist() and merged.nan == whole.nan


def test_merge_refuses_another_layout_naming_both() -> None:
    other = BinLayout.uniform(0.0, 1.0, 3)
    a, b = Histogram(LAYOUT), Histogram(other)
    with pytest.raises(StateError) as info:
        a.merge(b)
    assert LAYOUT.fingerprint() in str(info.value)
    assert other.fingerprint() in str(info.value)
    assert a.total == 0  # nothing was half-merged


def test_histogram_json_roundtrip_is_exact() -> None:
    layout = BinLayout((0.1, 1 / 3, 2.0000000000000004))
    hist = Histogram(layout)
    hist.add(np.array([0.0, 0.2, 0.5, 3.0, np.nan, np.inf]))
    back = Histogram.from_json(roundtrip(hist.to_json()))
    assert back == hist
    assert back.layout.edges == layout.edges
    assert BinLayout.from_json(roundtrip(layout.to_json())) == layout


def test_layout_from_json_refuses_a_wrong_fingerprint_naming_both() -> None:
    d = roundtrip(LAYOUT.to_json())
    d["edges"][0] = -2.0
    with pytest.raises(StateError) as info:
        BinLayout.from_json(d)
    assert LAYOUT.fingerprint() in str(info.value)
    assert BinLayout((-2.0, 0.0, 0.5, 2.0)).fingerprint() in str(info.value)


def test_histogram_from_json_checks_the_expected_layout() -> None:
    other = BinLayout.uniform(0.0, 1.0, 3)
    d = roundtrip(Histogram(other).to_json())
    with pytest.raises(StateError) as info:
        Histogram.from_json(d, layout=LAYOUT)
    assert other.fingerprint() in str(info.value) and LAYOUT.fingerprint() in str(info.value)
    assert Histogram.from_json(d, layout=other).layout == other


@pytest.mark.parametrize(
    "change",
    [
        {"counts": [1, 2]},
        {"counts": [0, 0, -1, 0, 0]},
        {"counts": [0, 0, 1.5, 0, 0]},
        {"nan": -1},
        {"schema": "shadowproxy.histogram/v0"},
        {"layout": None},
    ],
)
def test_histogram_from_json_refuses_malformed(change: dict) -> None:
    d = {**Histogram(LAYOUT).to_json(), **change}
    with pytest.raises(StateError):
        Histogram.from_json(d)
