"""Strict conversion of parsed JSON values to arrays, and of responses to scores/labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shadowproxy.errors import PayloadError
from shadowproxy.protocols import arrays, jsonio
from shadowproxy.tensors import TensorSpec


def convert(values: object, datatype: str, *, allow_nonfinite: bool = False) -> np.ndarray:
    return arrays.to_array(values, datatype, where="x.data", allow_nonfinite=allow_nonfinite)


def failure(values: object, datatype: str, *, allow_nonfinite: bool = False) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        convert(values, datatype, allow_nonfinite=allow_nonfinite)
    assert str(caught.value).startswith("x.data: ")
    return caught.value


@pytest.mark.parametrize(
    ("values", "datatype", "expected"),
    [
        ([[1.5, 2], [3, 4]], "FP32", np.array([[1.5, 2], [3, 4]], dtype=np.float32)),
        ([1, 2], "FP64", np.array([1.0, 2.0])),
        ([1, -2], "INT8", np.array([1, -2], dtype=np.int8)),
        ([0, 2**64 - 1], "UINT64", np.array([0, 2**64 - 1], dtype=np.uint64)),
        ([-(2**63), 2**63 - 1], "INT64", np.array([-(2**63), 2**63 - 1], dtype=np.int64)),
        ([True, False], "BOOL", np.array([True, False])),
        ([["a", "b"]], "BYTES", np.array([["a", "b"]], dtype=object)),
        ([], "INT32", np.empty((0,), dtype=np.int32)),
        (65504.0, "FP16", np.array(65504.0, dtype=np.float16)),
    ],
)
def test_valid_values_convert_to_the_datatype(
    values: object, datatype: str, expected: np.ndarray
) -> None:
    out = convert(values, datatype)
    assert out.dtype == expected.dtype
    assert out.shape == expected.shape
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    ("values", "datatype", "reason"),
    [
        ([[1, 2], [3]], "FP32", "ragged"),
        ([1, [2]], "INT64", "ragged"),
        ([["a"], "b"], "BYTES", "ragged"),
        (["1.5"], "FP32", "bad_dtype"),
        ([1, "a"], "INT32", "bad_dtype"),
        ([True, 2], "INT64", "bad_dtype"),
        ([1.5, False], "FP64", "bad_dtype"),
        ([True], "FP32", "bad_dtype"),
        ([None, 1.0], "FP32", "bad_dtype"),
        ([{}], "FP64", "bad_dtype"),
        ([1.5], "INT32", "bad_dtype"),
        ([2.0], "INT32", "bad_dtype"),
        ([1, 0], "BOOL", "bad_dtype"),
        ([1], "BYTES", "bad_dtype"),
        (["a", None], "BYTES", "bad_dtype"),
        ([128], "INT8", "int_overflow"),
        ([-1], "UINT8", "int_overflow"),
        ([2**63], "INT64", "int_overflow"),
        ([-1, 2**63], "INT64", "int_overflow"),
        ([-1, 2**64 - 1], "UINT64", "int_overflow"),
        ([2**70], "INT64", "int_overflow"),
        ([1e39], "FP32", "nonfinite"),
        ([70000], "FP16", "nonfinite"),
        ([float("nan")], "FP64", "nonfinite"),
    ],
)
def test_strict_conversion_reasons(values: object, datatype: str, reason: str) -> None:
    assert failure(values, datatype).reason == reason


def test_over_long_json_integers_overflow_every_integer_type() -> None:
    # orjson reads integers beyond 64 bits as floats; they must not pass as huge floats.
    parsed = jsonio.parse(b"[18446744073709551616]", max_depth=2, allow_nonfinite=False)
    error = failure(parsed, "UINT64")
    assert error.reason == "int_overflow"
    assert "1.8446744073709552e+19 does not fit UINT64" in str(error)
    long_literal = jsonio.parse(b"[" + b"9" * 40 + b"]", max_depth=2, allow_nonfinite=False)
    assert failure(long_literal, "INT64").reason == "int_overflow"
    # A float input takes them as the number they are.
    assert convert(long_literal, "FP64")[0] == pytest.approx(1e40)


def test_overflowing_narrow_floats_pass_when_nonfinite_is_allowed() -> None:
    out = convert([1e39, -1e39, 1.0], "FP32", allow_nonfinite=True)
    assert out.dtype == np.float32
    assert np.isposinf(out[0]) and np.isneginf(out[1]) and out[2] == 1.0


def test_messages_name_the_offending_value() -> None:
    assert "integer 128 does not fit INT8" in str(failure([1, 128], "INT8"))
    assert "integer 123456789012...(40 digits)" in str(failure([int("1234567890" * 4)], "INT64"))
    assert "1e+39" in str(failure([1.0, 1e39], "FP32"))
    assert "null" in str(failure(["a", None], "BYTES"))


def test_check_shape_allows_dynamic_dimensions_only() -> None:
    spec = TensorSpec("x", "FP32", (-1, 4))
    arrays.check_shape((7, 4), spec, "x")
    with pytest.raises(PayloadError, match=r"x: shape \[7, 3\] does not fit .*'x'") as caught:
        arrays.check_shape((7, 3), spec, "x")
    assert caught.value.reason == "bad_shape"
    with pytest.raises(PayloadError):
        arrays.check_shape((7, 4, 1), spec, "x")
    arrays.check_shape((3, 3, 3), TensorSpec("free", "FP32", ()), "free")


def test_check_rows_limits() -> None:
    arrays.check_rows(5, 5, "w")
    with pytest.raises(PayloadError) as caught:
        arrays.check_rows(0, 5, "w")
    assert caught.value.reason == "empty_batch"
    with pytest.raises(PayloadError) as caught:
        arrays.check_rows(6, 5, "w")
    assert caught.value.reason == "batch_too_large"


def test_scores_read_numbers_and_null_as_nan() -> None:
    scores = arrays.scores_array([[1, 0.5], [None, 2]], "s")
    assert scores.dtype == np.float64
    assert scores[0].tolist() == [1.0, 0.5] and np.isnan(scores[1, 0]) and scores[1, 1] == 2.0
    bad: list[Any]
    for bad in (["0.5"], [True], [{}]):
        with pytest.raises(PayloadError) as caught:
            arrays.scores_array(bad, "s")
        assert caught.value.reason == "bad_dtype"


def test_labels_are_int64_or_strings() -> None:
    ints = arrays.labels_array([1, 0, 2.0, True], "l")
    assert ints.dtype == np.int64 and ints.tolist() == [1, 0, 2, 1]
    strings = arrays.labels_array(["cat", "dog"], "l")
    assert strings.dtype == object and strings.tolist() == ["cat", "dog"]
    for bad, reason in (
        ([0.5], "bad_dtype"),
        (["a", 1], "bad_dtype"),
        ([2**64 - 1], "int_overflow"),
    ):
        with pytest.raises(PayloadError) as caught:
            arrays.labels_array(bad, "l")
        assert caught.value.reason == reason


def test_jsonable_refuses_bytes_that_are_not_text() -> None:
    with pytest.raises(PayloadError) as caught:
        arrays.jsonable(np.array([b"\xff"], dtype=object))
    assert caught.value.reason == "bad_output"
    datatype, value = arrays.jsonable(np.array([[b"a", "b"]], dtype=object))
    assert (datatype, value) == ("BYTES", [["a", "b"]])
