"""Input reference: reading training data (CSV, .npy), building, JSON, atomic save, loading."""

from __future__ import annotations

import json
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest

from shadowproxy.compare.bins import BinLayout, Histogram
from shadowproxy.compare.reference import (
    MAX_BINS,
    REFERENCE_SCHEMA,
    FeatureReference,
    Reference,
    build_reference,
    check_bins,
    load_training_data,
)
from shadowproxy.errors import StateError

CSV = """age,city, income ,score
34,paris,52000.5,0.1
,berlin,NaN,0.2
51,paris,,0.3
27,,61000,0.4
45,rome,48000,nan
62,paris,75000,0.6
"""


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    path.write_text(CSV)
    return path


@pytest.fixture
def reference(csv_path: Path) -> Reference:
    return build_reference(csv_path, bins=4)


def test_csv_columns_are_typed_and_missing_cells_marked(csv_path: Path) -> None:
    columns, names = load_training_data(csv_path)
    assert names == ("age", "city", "income", "score")
    age, city, income, _ = columns
    assert age.dtype == np.float64 and np.isnan(age[1]) and age[0] == 34.0
    assert city.dtype == object and city.tolist() == [
        "paris",
        "berlin",
        "paris",
        None,
        "rome",
        "paris",
    ]
    assert np.isnan(income[[1, 2]]).all() and income[0] == 52000.5


def test_csv_feature_selection(csv_path: Path) -> None:
    columns, names = load_training_data(csv_path, ["score", "city"])
    assert names == ("score", "city") and columns[1].dtype == object
    with pytest.raises(ValueError, match="height"):
        load_training_data(csv_path, ["age", "height"])


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "empty"), ("a,b\n1\n", "row 2"), ("a,a\n1,2\n", "unique")],
)
def test_bad_csv_is_refused_naming_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_training_data(path)
    assert "bad.csv" in str(info.value)


def test_reference_from_csv(reference: Reference, csv_path: Path) -> None:
    assert reference.rows == 6 and reference.schema == REFERENCE_SCHEMA
    assert reference.names == ("age", "city", "income", "score")
    city = reference.feature("city")
    assert city.kind == "categorical" and city.layout is None and city.counts == ()
    assert city.categories == {"paris": 3, "berlin": 1, "rome": 1}
    assert city.nan_rate == pytest.approx(1 / 6)
    income = reference.feature("income")
    assert income.kind == "numeric" and income.layout is not None
    assert sum(income.counts) == 4 and income.nan_rate == pytest.approx(2 / 6)
    # The stored counts are what the same layout counts over the training column.
    columns, _ = load_training_data(csv_path)
    hist = Histogram(income.layout)
    hist.add(columns[2])
    assert income.counts == tuple(hist.counts.tolist())
    assert income.histogram() == Histogram.from_json({**hist.to_json(), "nan": 0})
    with pytest.raises(KeyError, match="height"):
        reference.feature("height")


def test_reference_from_npy(tmp_path: Path) -> None:
    data = np.random.default_rng(12).normal(size=(1000, 3))
    data[::10, 1] = np.nan
    path = tmp_path / "train.npy"
    np.save(path, data)
    ref = build_reference(path, bins=5)
    assert ref.names == ("f0", "f1", "f2") and ref.rows == 1000
    assert all(f.kind == "numeric" for f in ref.features)
    f1 = ref.feature("f1")
    assert f1.nan_rate == 0.1 and sum(f1.counts) == 900
    assert f1.layout == BinLayout.from_quantiles(data[:, 1], 5)
    named = build_reference(path, features=["a", "b", "c"], bins=5)
    assert named.names == ("a", "b", "c")
    assert named.feature("b").counts == f1.counts
    with pytest.raises(ValueError, match="3 columns"):
        load_training_data(path, ["a", "b"])


class _Trap:
    """Touches a file when unpickled: proof that a pickle payload was (or was not) run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))


def test_object_npy_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.npy"
    array = np.empty((2, 2), dtype=object)
    array[:] = [[_Trap(marker), 1], [2, 3]]
    np.save(path, array, allow_pickle=True)
    with pytest.raises(ValueError, match="evil.npy") as info:
        build_reference(path)
    assert "dtype object" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("array", "match"),
    [(np.arange(5.0), "2-D"), (np.array([["a", "b"]]), "numeric"), (np.zeros((0, 2)), "no rows")],
)
def test_other_npy_shapes_are_refused(tmp_path: Path, array: np.ndarray, match: str) -> None:
    path = tmp_path / "x.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=match):
        build_reference(path)


def test_a_feature_without_values_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,\n2,\n")
    with pytest.raises(ValueError, match="'b'"):
        build_reference(path)


def test_json_roundtrip_is_exact(reference: Reference) -> None:
    d = json.loads(json.dumps(reference.to_json(), allow_nan=False))
    back = Reference.from_json(d)
    assert back == reference
    assert back.fingerprint() == reference.fingerprint() == d["fingerprint"]


def test_fingerprint_depends_on_content(reference: Reference, csv_path: Path) -> None:
    assert build_reference(csv_path, bins=4).fingerprint() == reference.fingerprint()
    assert build_reference(csv_path, bins=3).fingerprint() != reference.fingerprint()


def test_from_json_refuses_a_changed_reference_naming_both_fingerprints(
    reference: Reference,
) -> None:
    d = json.loads(json.dumps(reference.to_json()))
    d["rows"] = 7
    changed = Reference(reference.features, 7).fingerprint()
    with pytest.raises(StateError) as info:
        Reference.from_json(d)
    assert reference.fingerprint() in str(info.value) and changed in str(info.value)


@pytest.mark.parametrize(
    "change",
    [
        {"schema": "shadowproxy.reference/v0"},
        {"features": [{"name": "x", "kind": "numeric", "nan_rate": 0.0}]},
        {"features": [{"name": "x", "kind": "text", "nan_rate": 0.0}]},
        {"rows": -1},
        {"features": 3},
    ],
)
def test_from_json_refuses_malformed(reference: Reference, change: dict) -> None:
    d = {**json.loads(json.dumps(reference.to_json())), **change}
    d.pop("fingerprint")
    with pytest.raises(StateError):
        Reference.from_json(d)


def test_save_is_atomic_and_loads_back(reference: Reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = out / "reference.json"
    path.write_text("old")
    reference.save(path)
    assert os.listdir(out) == ["reference.json"]
    assert Reference.load(path) == reference


def test_failed_save_leaves_the_old_file_and_no_temp(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = out / "reference.json"
    reference.save(path)
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        Reference(reference.features, 99).save(path)
    assert os.listdir(out) == ["reference.json"]
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", ["{not json", '{"schema": "nope"}', "[]"])
def test_load_refuses_bad_content_naming_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broken-ref.json"
    path.write_text(content)
    with pytest.raises(StateError, match="broken-ref.json"):
        Reference.load(path)


def test_feature_reference_checks_its_kind() -> None:
    layout = BinLayout((0.0,))
    with pytest.raises(ValueError, match="'x'"):
        FeatureReference("x", "numeric", layout, counts=(1,))
    with pytest.raises(ValueError, match="'y'"):
        FeatureReference("y", "categorical", layout, counts=(1, 2))
    with pytest.raises(ValueError, match="nan_rate"):
        FeatureReference("z", "categorical", categories={"a": 1}, nan_rate=1.5)
    with pytest.raises(ValueError, match="unique"):
        Reference((FeatureReference("a", "categorical"),) * 2, rows=1)


# -- bad input is refused with a message naming the file ----------------------------------


@pytest.mark.parametrize("where", ["missing-folder", "directory", "file-as-folder"])
def test_save_refuses_an_unwritable_destination_naming_it(
    reference: Reference, tmp_path: Path, where: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "dir").mkdir()
    (out / "plain").write_text("a file")
    path = {
        "missing-folder": out / "nope" / "reference.json",
        "directory": out / "dir",
        "file-as-folder": out / "plain" / "reference.json",
    }[where]
    with pytest.raises(OSError) as info:
        reference.save(path)
    # The destination is named, not the temporary file the atomic write would have used.
    assert info.value.filename == str(path)
    assert info.value.strerror
    assert sorted(os.listdir(out)) == ["dir", "plain"]  # no temporary file left behind
    assert os.listdir(out / "dir") == []


def test_npy_whose_header_claims_more_than_the_file_holds_is_refused_before_loading(
    tmp_path: Path,
) -> None:
    # 2.4 TB promised, 64 bytes present: nothing may be allocated for the promise.
    path = tmp_path / "big.npy"
    with path.open("wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (100_000_000_000, 3)}
        )
        fh.write(b"\0" * 64)
    with pytest.raises(ValueError, match="big.npy") as info:
        build_reference(path)
    assert "2400000000000 bytes" in str(info.value) and "holds 64" in str(info.value)


def test_truncated_npy_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros((100, 2)))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ValueError, match="cut.npy") as info:
        load_training_data(path)
    assert "cut short" in str(info.value)


def test_fortran_ordered_and_integer_npy_still_load(tmp_path: Path) -> None:
    data = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(4, 3))
    path = tmp_path / "f.npy"
    np.save(path, data)
    columns, names = load_training_data(path)
    assert names == ("f0", "f1", "f2")
    assert [c.tolist() for c in columns] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]


def test_csv_with_a_byte_order_mark_matches_its_first_column(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + CSV.encode("utf-8"))
    columns, names = load_training_data(path, ["age", "score"])
    assert names == ("age", "score") and columns[0][0] == 34.0
    assert load_training_data(path)[1][0] == "age"


def test_csv_that_is_not_utf8_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("city,n\nparis,1\nzürich,2\n".encode("latin-1"))
    with pytest.raises(ValueError) as info:
        load_training_data(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not UTF-8 text")
    assert "line 3" in message and "0xfc" in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('a,b\n1,"2\n3,4\n', 2),  # the last cell would swallow the rest of the file
        ('"a,b\n1,2\n3,4\n', 1),  # the header would swallow every row
        ('a,b\n"x"y,2\n', 2),
    ],
)
def test_malformed_csv_is_refused_naming_the_file_and_line(
    tmp_path: Path, text: str, line: int
) -> None:
    path = tmp_path / "quote.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        build_reference(path)
    assert str(info.value).startswith(f"{path}, line {line}: malformed CSV: ")


def test_unclosed_quote_says_so(tmp_path: Path) -> None:
    path = tmp_path / "quote.csv"
    path.write_text('a,b\n1,"2\n3,4\n')
    with pytest.raises(ValueError, match="never closed"):
        load_training_data(path)


@pytest.mark.parametrize("bins", [0, 1, -3, MAX_BINS + 1, 10**12, True])
def test_bins_out_of_range_are_refused_before_reading(csv_path: Path, bins: int) -> None:
    with pytest.raises(ValueError, match=f"from 2 to {MAX_BINS}"):
        check_bins(bins)
    # Also for data with no numeric column, where no layout would ever check them.
    categorical = csv_path.with_name("cats.csv")
    categorical.write_text("city\nparis\nrome\n")
    for path in (csv_path, categorical):
        with pytest.raises(ValueError, match="bins"):
            build_reference(path, bins=bins)


def test_bins_within_range_are_accepted(csv_path: Path) -> None:
    check_bins(2)
    check_bins(MAX_BINS)
    assert build_reference(csv_path, bins=MAX_BINS).rows == 6


def test_npy_with_bytes_after_its_array_is_refused(tmp_path: Path) -> None:
    # Two np.save calls on one open file: only the first array would be read.
    path = tmp_path / "twice.npy"
    with path.open("wb") as fh:
        np.save(fh, np.zeros((10, 2)))
        np.save(fh, np.ones((10, 2)))
    with pytest.raises(ValueError, match="twice.npy") as info:
        load_training_data(path)
    assert "trailing bytes" in str(info.value) and "160 bytes of data" in str(info.value)
