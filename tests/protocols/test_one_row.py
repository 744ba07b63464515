"""The comparator's fast path for one-row answers agrees with the full extraction.

``extract_row`` may decline any body (None), but a row it returns must be what ``extract``
reads from the same body, and it must decline every body ``extract`` refuses.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowproxy.config.model import Outputs, Payload
from shadowproxy.errors import PayloadError
from shadowproxy.protocols.base import OneRow, PayloadProtocol
from shadowproxy.protocols.custom import JsonProtocol
from shadowproxy.protocols.v1 import V1Protocol
from shadowproxy.protocols.v2 import V2Protocol

PROTOCOL = V2Protocol(Payload())
V1 = V1Protocol(Payload())
DEFAULTS = Outputs()
NAMED = Outputs(score="probabilities", label="label")

numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.booleans(),
    st.none(),
)
label_values = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.text(max_size=5),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
)
shapes = st.lists(st.one_of(st.integers(0, 3), st.booleans()), min_size=0, max_size=3)
names = st.sampled_from(["probabilities", "label", "scores", "labels", "other"])


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": draw(names),
        "datatype": draw(st.sampled_from(["FP32", "INT64"])),
    }
    if draw(st.booleans()):
        entry["shape"] = draw(shapes)
    data = draw(
        st.one_of(
            st.lists(numbers, max_size=4),
            st.lists(label_values, max_size=2),
            st.lists(st.lists(numbers, max_size=2), max_size=2),
        )
    )
    if draw(st.integers(0, 9)):  # mostly present
        entry["data"] = data
    return entry


@st.composite
def plain_answers(draw: st.DrawFn) -> dict[str, Any]:
    """One-row answers as models write them: most take the fast path."""
    width = draw(st.integers(1, 4))
    scores = draw(st.lists(st.floats(0, 1, width=32), min_size=width, max_size=width))
    # (a NUL in a label sends it to the full reader: numpy text drops trailing NULs)
    text = st.text(st.characters(blacklist_characters="\x00"), max_size=4)
    label = draw(st.one_of(st.integers(-5, 5), text))
    label_shape = draw(st.sampled_from([[1], [1, 1]]))
    score_shape = draw(st.sampled_from([[1, width], [1, width, 1]] + ([[1]] if width == 1 else [])))
    outputs = [
        {"name": "label", "shape": label_shape, "datatype": "INT64", "data": [label]},
        {"name": "probabilities", "shape": score_shape, "datatype": "FP32", "data": scores},
    ]
    if draw(st.booleans()):
        outputs.reverse()
    return {"model_name": "m", "outputs": outputs}


def _agree(body: bytes, outputs: Outputs, protocol: PayloadProtocol = PROTOCOL) -> OneRow | None:
    row = protocol.extract_row(body, outputs)
    try:
        full = protocol.extract(body, outputs)
    except PayloadError:
        assert row is None, body  # what extract refuses, the fast path never accepts
        return None
    if row is None:
        return None
    fast = row.comparable()
    assert fast.rows == full.rows == 1
    if full.scores is None:
        assert fast.scores is None
    else:
        assert fast.scores is not None
        assert fast.scores.dtype == full.scores.dtype == np.float64
        np.testing.assert_array_equal(fast.scores, full.scores)
    if full.labels is None:
        assert fast.labels is None
    else:
        assert fast.labels is not None
        assert fast.labels.astype(str).tolist() == full.labels.astype(str).tolist()
    return row


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tensors(), max_size=3), st.sampled_from([DEFAULTS, NAMED, Outputs(score="other")]))
def test_a_row_from_the_fast_path_is_what_extract_reads(
    entries: list[dict[str, Any]], outputs: Outputs
) -> None:
    _agree(json.dumps({"outputs": entries}).encode(), outputs)  # orjson stops at 64 bits


@settings(max_examples=200, deadline=None)
@given(plain_answers(), st.sampled_from([DEFAULTS, NAMED]))
def test_plain_one_row_answers_take_the_fast_path(answer: dict[str, Any], outputs: Outputs) -> None:
    row = _agree(orjson.dumps(answer), outputs)
    assert row is not None  # the fast path is taken, not merely harmless


def test_what_the_fast_path_leaves_to_extract() -> None:
    def body(label: Any = 1, scores: Any = (0.2, 0.8), shape: Any = (1, 2)) -> bytes:
        return orjson.dumps(
            {"outputs": [
                {"name": "label", "shape": [1], "datatype": "INT64", "data": [label]},
                {"name": "probabilities", "shape": list(shape), "datatype": "FP32",
                 "data": list(scores)},
            ]}
        )  # fmt: skip

    assert PROTOCOL.extract_row(body(), DEFAULTS) == OneRow([0.2, 0.8], "1")
    assert PROTOCOL.extract_row(body(label="a"), DEFAULTS) == OneRow([0.2, 0.8], "a")
    assert PROTOCOL.extract_row(body(scores=(0, 1)), DEFAULTS) == OneRow([0.0, 1.0], "1")
    declined = [
        body(shape=(2, 1)),  # two rows
        body(scores=(True, 0.5)),  # a boolean among numbers
        body(scores=(None, 0.5)),  # null reads as NaN: extract's business
        body(scores=(2**60, 0.5)),  # beyond float64's exact integers
        body(label=2**63),  # beyond int64
        body(label=1.0),  # integral float: extract reads it as 1
        body(label="a\x00"),  # numpy text drops trailing NULs
        b'{"outputs": [{"name": "probabilities", "shape": [1, 2], "data": [NaN, 1]}]}',
        b'{"outputs": {"name": "label"}}',
        b'{"outputs": [{"name": ["label"], "data": [1]}]}',  # an unhashable name
        b"not json",
        b"[" * 300 + b"]" * 300,
    ]
    for declined_body in declined:
        assert PROTOCOL.extract_row(declined_body, DEFAULTS) is None, declined_body
    # A selector naming a missing output: extract refuses, so the fast path declines.
    assert PROTOCOL.extract_row(body(), Outputs(score="missing")) is None


# -- v1 and json: rows of plain values or objects -----------------------------------------

leaves = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
row_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
row_objects = st.dictionaries(
    st.sampled_from(["probabilities", "label", "scores", "a", "a.b"]),
    st.one_of(row_values, st.dictionaries(st.sampled_from(["b", "c"]), row_values, max_size=2)),
    max_size=3,
)
v1_outputs = st.sampled_from(
    [DEFAULTS, NAMED, Outputs(score="a.b"), Outputs(label="a"), Outputs(score="scores")]
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(row_values, row_objects), max_size=2), v1_outputs)
def test_v1_rows_from_the_fast_path_are_what_extract_reads(
    rows: list[Any], outputs: Outputs
) -> None:
    _agree(json.dumps({"predictions": rows}).encode(), outputs, V1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(row_values, row_objects, st.lists(st.one_of(row_values, row_objects), max_size=2)),
    st.sampled_from(["predictions", "result.rows", ""]),
    v1_outputs,
)
def test_json_rows_from_the_fast_path_are_what_extract_reads(
    found: Any, path: str, outputs: Outputs
) -> None:
    protocol = JsonProtocol(Payload(response_rows=path))
    if path == "":
        body: Any = found
    elif path == "result.rows":
        body = {"result": {"rows": found}}
    else:
        body = {"predictions": found}
    _agree(json.dumps(body).encode(), outputs, protocol)


@pytest.mark.parametrize(
    ("prediction", "outputs", "expected"),
    [
        ({"probabilities": [0.2, 0.8], "label": 1}, DEFAULTS, OneRow([0.2, 0.8], "1")),
        ({"scores": 0.7, "labels": "yes"}, DEFAULTS, OneRow([0.7], "yes")),
        ({"a": {"b": [1, 0.5]}}, Outputs(score="a.b"), OneRow([1.0, 0.5], None)),
        ({"only": 3}, DEFAULTS, OneRow(None, "3")),  # rule 3 on the single value
        ([0.1, 0.9], DEFAULTS, OneRow([0.1, 0.9], None)),
        (0.25, DEFAULTS, OneRow([0.25], None)),
        (["cat"], DEFAULTS, OneRow(None, "cat")),
        (7, DEFAULTS, OneRow(None, "7")),
    ],
)
def test_plain_v1_predictions_take_the_fast_path(
    prediction: Any, outputs: Outputs, expected: OneRow
) -> None:
    body = json.dumps({"predictions": [prediction]}).encode()
    assert _agree(body, outputs, V1) == expected
