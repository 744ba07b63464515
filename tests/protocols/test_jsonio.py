"""Strict JSON parsing: depth on raw bytes, non-finite numbers, invalid text."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from shadowproxy.errors import PayloadError
from shadowproxy.protocols import jsonio


def reason_of(body: bytes, *, max_depth: int = 32, allow_nonfinite: bool = False) -> str:
    with pytest.raises(PayloadError) as caught:
        jsonio.parse(body, max_depth=max_depth, allow_nonfinite=allow_nonfinite)
    return caught.value.reason


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"1", 0),
        (b'"[[["', 0),
        (b"[]", 1),
        (b'{"a": [{}]}', 3),
        (b'["[[[[", {"k": "]]]"}]', 2),
        (b'["\\"[[[", 1]', 1),
        (b'["\\\\", [[]]]', 3),
        (b"[[], [[]], []]", 3),
    ],
)
def test_nesting_depth_ignores_brackets_inside_strings(body: bytes, depth: int) -> None:
    assert jsonio.nesting_depth(body) == depth


def test_depth_at_the_limit_parses_and_one_more_is_too_deep() -> None:
    at_limit = b"[" * 8 + b"]" * 8
    assert jsonio.parse(at_limit, max_depth=8, allow_nonfinite=False) == [[[[[[[[]]]]]]]]
    assert reason_of(b"[" * 9 + b"]" * 9, max_depth=8) == "too_deep"


def test_depth_far_beyond_the_parser_limit_is_too_deep_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(PayloadError, match="100000 levels") as caught:
        jsonio.parse(deep, max_depth=512, allow_nonfinite=False)
    assert caught.value.reason == "too_deep"


def test_many_shallow_brackets_are_not_deep() -> None:
    wide = b"[" + b",".join([b"[1]"] * 5000) + b"]"
    assert len(jsonio.parse(wide, max_depth=2, allow_nonfinite=False)) == 5000


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[1,]", b"{'a': 1}", b"\xff\xfe", b'"\\ud800"', b"[1] [2]", b"nul"],
)
def test_invalid_json_is_bad_json(body: bytes) -> None:
    assert reason_of(body) == "bad_json"
    assert reason_of(body, allow_nonfinite=True) == "bad_json"


@pytest.mark.parametrize("body", [b"[NaN]", b"[Infinity]", b"[-Infinity]", b"[1e400]", b"-1e999"])
def test_nonfinite_numbers_are_refused_by_default(body: bytes) -> None:
    assert reason_of(body) == "nonfinite"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"instances": [[1, 2], [3, NaN]]}', "$.instances[1][1] is nan"),
        (b'{"inputs": [{"name": "x", "data": [1, -Infinity]}]}', "$.inputs[0].data[1] is -inf"),
        (b'{"a b": {"c": [1e999]}}', '$["a b"].c[0] is inf'),
        (b"NaN", "$ is nan"),
    ],
)
def test_a_refused_nonfinite_number_is_named_by_its_path(body: bytes, where: str) -> None:
    with pytest.raises(PayloadError) as caught:
        jsonio.parse(body, max_depth=8, allow_nonfinite=False)
    assert str(caught.value).startswith(f"{where}, a non-finite number")


def test_a_long_key_is_cut_short_in_the_path() -> None:
    key = "k" * 500
    with pytest.raises(PayloadError) as caught:
        jsonio.parse(b'{"%s": NaN}' % key.encode(), max_depth=8, allow_nonfinite=False)
    assert str(caught.value).startswith('$["' + "k" * 64 + '"…] is nan')


def test_nonfinite_numbers_are_read_when_allowed() -> None:
    value = jsonio.parse(b"[NaN, Infinity, -Infinity, 1e400, 2]", max_depth=4, allow_nonfinite=True)
    assert math.isnan(value[0])
    assert value[1:4] == [math.inf, -math.inf, math.inf]
    assert value[4] == 2 and type(value[4]) is int


def test_nonfinite_with_other_errors_is_still_bad_json() -> None:
    assert reason_of(b"[NaN,", allow_nonfinite=True) == "bad_json"
    assert reason_of(b"[NaN] x") == "bad_json"


def test_integers_keep_64_bits_and_longer_ones_become_floats() -> None:
    parsed = jsonio.parse(
        b"[18446744073709551615, -9223372036854775808, 18446744073709551616]",
        max_depth=2,
        allow_nonfinite=False,
    )
    assert parsed[0] == 2**64 - 1 and type(parsed[0]) is int
    assert parsed[1] == -(2**63) and type(parsed[1]) is int
    assert type(parsed[2]) is float


def test_dumps_writes_float32_in_shortest_form() -> None:
    body = jsonio.dumps({"x": np.array([0.1, 1 / 3], dtype=np.float32)})
    assert body == b'{"x":[0.1,0.33333334]}'
    expected = np.array([0.1, 1 / 3], dtype=np.float32)
    assert np.array_equal(np.array(json.loads(body)["x"], dtype=np.float32), expected)


def test_an_integer_beyond_float64_is_valid_json_read_exactly() -> None:
    # orjson reads integers beyond int64 as doubles and refuses those beyond float64; the
    # body is valid JSON all the same: the decoders name the integer that does not fit.
    huge = 10**400
    assert jsonio.parse(b"[1, %d]" % huge, max_depth=4, allow_nonfinite=False) == [1, huge]


def test_an_integer_beyond_the_digit_limit_is_int_overflow() -> None:
    body = b"[" + b"9" * (sys.get_int_max_str_digits() + 1) + b"]"
    assert reason_of(body) == "int_overflow"
    assert reason_of(body, allow_nonfinite=True) == "int_overflow"
