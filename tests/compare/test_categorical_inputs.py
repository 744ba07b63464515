"""Categorical input features: reading them from requests, counting, merging, chi-square."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import orjson
import pytest
import scipy.stats as sps
from hypothesis import given
from hypothesis import strategies as st

from shadowproxy.compare.categories import CategoryCounts
from shadowproxy.compare.comparator import Comparator, merge_snapshots
from shadowproxy.compare.evidence import Evaluator, evidence
from shadowproxy.compare.inputs import feature_rows
from shadowproxy.compare.reference import build_reference
from shadowproxy.compare.target import TargetState
from shadowproxy.config import config_from_dict
from shadowproxy.config.model import Config
from shadowproxy.errors import StateError
from shadowproxy.pairing.record import Exchange, PairRecord
from shadowproxy.protocols import protocol_for
from tests.compare.strategies import partitions

COLOURS = ("red", "green", "blue")


def _config(protocol: str = "v1", **compare: object) -> Config:
    return config_from_dict(
        {
            "protocol": protocol,
            "production": {"name": "prod", "version": "1", "url": "http://127.0.0.1:9"},
            "candidates": [{"name": "cand", "version": "2", "url": "http://127.0.0.1:10"}],
            "compare": {"features": ["age", "colour"], "seed": 3, **compare},
        }
    )


def _reference(tmp_path: Path, weights: tuple[float, ...] = (0.5, 0.3, 0.2)):
    rng = np.random.default_rng(5)
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["age", "colour"])
        for age, colour in zip(
            rng.normal(40, 10, 3000), rng.choice(COLOURS, 3000, p=weights), strict=True
        ):
            out.writerow([f"{age:.2f}", colour])
    return build_reference(path, ["age", "colour"], bins=8)


def _record(i: int, age: float, colour: object) -> PairRecord:
    answer = orjson.dumps({"predictions": [0.5]})
    return PairRecord(
        f"r{i}",
        0.0,
        "POST",
        "/v1/models/m:predict",
        orjson.dumps({"instances": [[age, colour]]}),
        "",
        Exchange("production", "prod", "1", "ok", 200, 0.01, answer),
        {"cand": Exchange("candidate", "cand", "2", "ok", 200, 0.01, answer)},
    )


# -- reading columns from requests --------------------------------------------------


def test_v1_rows_give_a_numeric_and_a_categorical_column() -> None:
    protocol = protocol_for(_config())
    body = orjson.dumps({"instances": [[31.5, "red"], [None, None], [40, 7], [True, 2.0]]})
    cols = feature_rows(protocol, body, ["age", "colour"], {"colour"})
    assert cols is not None
    np.testing.assert_array_equal(cols["age"], [31.5, np.nan, 40.0, 1.0])
    assert cols["colour"].tolist() == ["red", None, "7", "2"]
    # Text in a numeric column leaves the body out, as when no feature is categorical.
    text = orjson.dumps({"instances": [[31.5, "red"], ["x", True]]})
    assert feature_rows(protocol, text, ["age", "colour"], {"colour"}) is None
    assert feature_rows(
        protocol, orjson.dumps({"instances": [[1, True]]}), ["age", "colour"], {"colour"}
    )["colour"].tolist() == ["true"]


def test_v2_flat_data_is_cut_into_rows_of_the_feature_count() -> None:
    protocol = protocol_for(_config("v2"))
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "BYTES",
                     "data": [20, "blue", 30.0, "green"]}]}
    )  # fmt: skip
    cols = feature_rows(protocol, body, ["age", "colour"], {"colour"})
    assert cols is not None
    np.testing.assert_array_equal(cols["age"], [20.0, 30.0])
    assert cols["colour"].tolist() == ["blue", "green"]


def test_json_protocol_reads_the_configured_fields() -> None:
    protocol = protocol_for(_config("json"))
    body = orjson.dumps([{"age": 50, "colour": "green"}, {"age": 51.5, "colour": "red"}])
    cols = feature_rows(protocol, body, ["age", "colour"], {"colour"})
    assert cols is not None
    np.testing.assert_array_equal(cols["age"], [50.0, 51.5])
    assert cols["colour"].tolist() == ["green", "red"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"instances": [[1, "red", 3]]}',  # three values for two features
        b'{"instances": [[1, ["red"]]]}',  # nested value
        b'{"instances": [[1, "red"], 2]}',  # ragged
        b'{"instances": []}',
        b'{"other": 1}',
    ],
)
def test_bodies_without_a_feature_matrix_give_nothing(body: bytes) -> None:
    assert feature_rows(protocol_for(_config()), body, ["age", "colour"], {"colour"}) is None


def test_numeric_only_features_keep_the_all_or_nothing_conversion() -> None:
    protocol = protocol_for(_config())
    assert feature_rows(protocol, b'{"instances": [[1, "red"]]}', ["age", "colour"]) is None
    cols = feature_rows(protocol, b'{"instances": [[1, null]]}', ["age", "colour"])
    assert cols is not None and np.isnan(cols["colour"][0])


# -- counting and merging -----------------------------------------------------------


def test_counts_follow_the_reference_categories_and_pool_the_rest() -> None:
    counts = CategoryCounts(("blue", "red"))
    counts.add(["red", "red", None, "purple", "blue", "teal"])
    assert counts.counts.tolist() == [1, 2, 2]
    assert (counts.unseen, counts.missing, counts.total) == (2, 1, 6)


@given(partitions(st.sampled_from(["a", "b", "c", "zzz", None])))
def test_merging_split_counts_equals_counting_everything(case: tuple[list, list[list]]) -> None:
    data, parts = case
    whole = CategoryCounts(("a", "b", "c"))
    whole.add(data)
    merged = CategoryCounts(("a", "b", "c"))
    for part in parts:
        piece = CategoryCounts(("a", "b", "c"))
        piece.add(part)
        merged.merge(CategoryCounts.from_json(orjson.loads(orjson.dumps(piece.to_json()))))
    assert merged == whole


def test_counts_over_other_categories_are_never_merged() -> None:
    with pytest.raises(StateError, match="different category lists"):
        CategoryCounts(("a", "b")).merge(CategoryCounts(("a", "c")))
    with pytest.raises(StateError, match="cells"):
        CategoryCounts.from_json({"categories": ["a"], "counts": [1], "missing": 0})


def test_snapshots_without_categorical_counts_still_load() -> None:
    state = TargetState("candidate", "cand", "2", 0)
    data = state.to_json()
    del data["categorical"], data["category_layouts"]
    assert TargetState.from_json(data).categorical == {}


# -- the comparator and the report's evidence ---------------------------------------


def _fold(cfg: Config, reference, colours: list[object], start: int = 0) -> Comparator:
    comparator = Comparator(cfg, reference)
    rng = np.random.default_rng(start)
    for i, colour in enumerate(colours, start=start):
        comparator.update(_record(i, float(rng.normal(40, 10)), colour))
    comparator.flush()
    return comparator


def test_chi_square_on_live_traffic_matches_scipy(tmp_path: Path) -> None:
    reference = _reference(tmp_path)
    cfg = _config()
    rng = np.random.default_rng(9)
    live = rng.choice(["red", "green", "blue", "purple"], 900, p=[0.3, 0.3, 0.3, 0.1]).tolist()
    live[:25] = [None] * 25
    comparator = _fold(cfg, reference, live)
    ev = evidence(
        comparator.targets["cand"], Evaluator(cfg.promotion, cfg.compare.seed), reference=reference
    )
    drift = {d["feature"]: d for d in ev["input_drift"]}
    colour = drift["colour"]
    assert colour["kind"] == "categorical" and drift["age"]["kind"] == "numeric"

    # Reference computation: the reference's categories, then one pooled unseen cell
    # with the add-half pseudo-count; missing values are not categories.
    ref = next(f for f in reference.features if f.name == "colour").categories
    cats = sorted(ref)
    observed = [live.count(c) for c in cats] + [live.count("purple")]
    expected_counts = np.array([ref[c] for c in cats] + [0.5])
    expected = expected_counts / expected_counts.sum() * sum(observed)
    want = sps.chisquare(observed, expected)
    assert colour["chi2"] == pytest.approx(want.statistic, rel=1e-12)
    assert colour["chi2_pvalue"] == pytest.approx(want.pvalue, rel=1e-9, abs=1e-300)
    assert colour["chi2_pvalue"] < 1e-6  # the shift (and the unseen value) is detected
    assert colour["nan_rate"] == pytest.approx(25 / 900)
    assert colour["unseen_rate"] == pytest.approx(live.count("purple") / 900)
    assert ev["metrics"]["input_psi_max"]["value"] == pytest.approx(
        max(d["psi"] for d in drift.values())
    )


def test_traffic_like_the_reference_passes_the_chi_square(tmp_path: Path) -> None:
    reference = _reference(tmp_path)
    cfg = _config()
    live = np.random.default_rng(4).choice(COLOURS, 1500, p=[0.5, 0.3, 0.2]).tolist()
    comparator = _fold(cfg, reference, live)
    ev = evidence(
        comparator.targets["cand"], Evaluator(cfg.promotion, cfg.compare.seed), reference=reference
    )
    colour = next(d for d in ev["input_drift"] if d["feature"] == "colour")
    assert colour["chi2_pvalue"] > 0.01 and colour["psi"] < 0.02 and colour["unseen_rate"] == 0


def test_replicas_merge_to_the_counts_of_one_process(tmp_path: Path) -> None:
    reference = _reference(tmp_path)
    cfg = _config()
    live = np.random.default_rng(2).choice([*COLOURS, "teal", None], 600).tolist()
    one = _fold(cfg, reference, live)
    left, right = _fold(cfg, reference, live[:250]), _fold(cfg, reference, live[250:], start=250)
    merged = merge_snapshots([("left", left.snapshot()), ("right", right.snapshot())])
    assert merged["cand"].categorical == one.targets["cand"].categorical
    assert merged["cand"].categorical["colour"].total == 600


def test_snapshot_of_another_reference_is_refused(tmp_path: Path) -> None:
    cfg = _config()
    first = Comparator(cfg, _reference(tmp_path))
    (tmp_path / "other").mkdir()
    other = _reference(tmp_path / "other", weights=(0.2, 0.3, 0.5))
    with pytest.raises(StateError, match="another layout"):
        Comparator(cfg, other).load(first.snapshot())
