"""Custom JSON rows mapped by config (protocol: json)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from shadowproxy.config.model import Outputs, Payload
from shadowproxy.errors import PayloadError
from shadowproxy.protocols import JsonProtocol
from shadowproxy.tensors import TensorSpec

FEATURES = ("age", "income", "tenure")
X = TensorSpec("x", "FP32", (-1, 3))


def protocol(rows: str = "", response_rows: str = "predictions", **kw: Any) -> JsonProtocol:
    outputs = kw.pop("outputs", None)
    features = kw.pop("features", FEATURES)
    return JsonProtocol(Payload(rows=rows, response_rows=response_rows, **kw), features, outputs)


def row(age: Any = 30, income: Any = 1.5, tenure: Any = 2, **extra: Any) -> dict[str, Any]:
    return {"age": age, "income": income, "tenure": tenure, **extra}


def test_one_row_object_is_one_row_in_feature_order() -> None:
    decoded = protocol().decode_request(
        orjson.dumps({"tenure": 2, "id": "a", "income": 1.5, "age": 30}), [X]
    )
    assert decoded.rows == 1
    assert decoded.arrays["x"].dtype == np.float32
    assert decoded.arrays["x"].tolist() == [[30, 1.5, 2]]


def test_a_list_of_row_objects() -> None:
    decoded = protocol().decode_request(orjson.dumps([row(), row(age=40)]), [X])
    assert decoded.arrays["x"].tolist() == [[30, 1.5, 2], [40, 1.5, 2]]


def test_rows_at_a_dotted_path_and_dotted_features() -> None:
    json_protocol = protocol(rows="data.rows", features=("a", "nested.b"))
    body = {"data": {"rows": [{"a": 1, "nested": {"b": 2}}, {"a": 3, "nested": {"b": 4}}]}}
    spec = TensorSpec("x", "INT64", (-1, 2))
    decoded = json_protocol.decode_request(orjson.dumps(body), [spec])
    assert decoded.arrays["x"].dtype == np.int64 and decoded.arrays["x"].tolist() == [
        [1, 2],
        [3, 4],
    ]


def test_an_object_at_the_rows_path_is_one_row() -> None:
    decoded = protocol(rows="row").decode_request(orjson.dumps({"row": row()}), [X])
    assert decoded.rows == 1


def test_a_single_feature() -> None:
    decoded = protocol(features=("age",)).decode_request(
        b'[{"age": 1}, {"age": 2}]', [TensorSpec("x", "FP64", (-1, 1))]
    )
    assert decoded.arrays["x"].tolist() == [[1.0], [2.0]]


@pytest.mark.parametrize(
    ("body", "reason", "message"),
    [
        (b"5", "bad_body", "body: expected a list of rows, got an integer"),
        (b"[1, 2]", "bad_body", "body[0]: expected an object, got an integer"),
        (
            orjson.dumps([row(), {"age": 1, "income": 2}]),
            "missing_input",
            "body[1]: missing feature 'tenure'",
        ),
        (
            orjson.dumps([row(), row(income="high")]),
            "bad_dtype",
            "body[*].income: FP32 takes numbers",
        ),
        (orjson.dumps([row(tenure=None)]), "bad_dtype", "body[*].tenure: takes numbers, got null"),
        (
            orjson.dumps([row(age=True)]),
            "bad_dtype",
            "body[*].age: FP32 takes numbers, got true/false",
        ),
        (orjson.dumps([row(age=[1, 2])]), "bad_shape", "body[*].age: each value must be a single"),
        (orjson.dumps([row(), row(age=[2])]), "ragged", "body[*].age: ragged"),
        (orjson.dumps([row(age=[1]), row(age=[2])]), "bad_shape", "body[*].age: each value"),
        (orjson.dumps([row(income=1e39)]), "nonfinite", "body[*].income: 1e+39"),
        (b"[]", "empty_batch", "body: the batch has no rows"),
        (orjson.dumps([row()] * 1025), "batch_too_large", "1025 rows"),
        (b"[{", "bad_json", "not valid JSON"),
        (b'[{"age": NaN, "income": 1, "tenure": 1}]', "nonfinite", "non-finite"),
    ],
)
def test_strictness(body: bytes, reason: str, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        protocol().decode_request(body, [X])
    assert caught.value.reason == reason
    assert message in str(caught.value)


def test_integer_features_refuse_overflow() -> None:
    spec = TensorSpec("x", "INT8", (-1, 3))
    with pytest.raises(PayloadError, match=r"body\[\*\]\.income: integer 300") as caught:
        protocol().decode_request(orjson.dumps([row(income=300)]), [spec])
    assert caught.value.reason == "int_overflow"


def test_rows_path_not_found_is_bad_body() -> None:
    with pytest.raises(PayloadError, match="data.rows: not found") as caught:
        protocol(rows="data.rows").decode_request(b'{"data": {}}', [X])
    assert caught.value.reason == "bad_body"


def test_feature_count_must_fit_the_model_input() -> None:
    with pytest.raises(PayloadError, match="does not fit the shape") as caught:
        protocol().decode_request(orjson.dumps(row()), [TensorSpec("x", "FP32", (-1, 4))])
    assert caught.value.reason == "bad_shape"


def test_models_the_protocol_cannot_feed() -> None:
    two = [X, TensorSpec("y", "FP32", (-1, 1))]
    with pytest.raises(PayloadError, match="the model has 2") as caught:
        protocol().decode_request(orjson.dumps(row()), two)
    assert caught.value.reason == "bad_model"
    with pytest.raises(PayloadError, match="compare.features") as caught:
        protocol(features=()).decode_request(orjson.dumps(row()), [X])
    assert caught.value.reason == "bad_model"


@pytest.mark.parametrize(
    ("inputs", "problem"),
    [
        ([X], None),
        ([TensorSpec("x", "FP32", (-1, -1))], None),
        ([X, TensorSpec("y", "FP32", (-1, 1))], "the model has 2 ('x', 'y')"),
        ([TensorSpec("idx", "INT64", (-1,))], "'idx' has shape [-1]"),
        ([TensorSpec("x", "FP32", (-1, 4))], "names 3 columns; the model's 'x' takes 4"),
    ],
)
def test_a_model_the_protocol_can_never_feed_is_named_before_any_request(
    inputs: list[TensorSpec], problem: str | None
) -> None:
    found = protocol().model_problem(inputs)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        # And every request to it would indeed be refused.
        with pytest.raises(PayloadError):
            protocol().decode_request(orjson.dumps(row()), inputs)


# -- encode and extract ----------------------------------------------------------------

CLASSIFIER: dict[str, np.ndarray] = {
    "label": np.array([1, 0], dtype=np.int64),
    "probabilities": np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32),
}


def encode(json_protocol: JsonProtocol, outputs: dict[str, np.ndarray]) -> bytes:
    return json_protocol.encode_response(outputs, model_name="m", model_version="", request_id=None)


def test_encode_writes_rows_at_the_configured_paths() -> None:
    json_protocol = protocol(response_rows="result.rows", outputs=Outputs(score="s.p", label="cls"))
    body = orjson.loads(encode(json_protocol, CLASSIFIER))
    assert body == {
        "result": {
            "rows": [{"s": {"p": [0.25, 0.75]}, "cls": 1}, {"s": {"p": [0.5, 0.5]}, "cls": 0}]
        }
    }
    got = json_protocol.extract(orjson.dumps(body), Outputs(score="s.p", label="cls"))
    assert got.labels is not None and got.labels.tolist() == [1, 0]
    assert got.scores is not None and got.scores.tolist() == [[0.25, 0.75], [0.5, 0.5]]


def test_encode_defaults_to_score_and_label_keys_in_a_bare_list() -> None:
    json_protocol = protocol(response_rows="")
    body = orjson.loads(encode(json_protocol, CLASSIFIER))
    assert body == [{"score": [0.25, 0.75], "label": 1}, {"score": [0.5, 0.5], "label": 0}]
    got = json_protocol.extract(orjson.dumps(body), Outputs())
    assert got.labels is not None and got.labels.tolist() == [1, 0]
    assert got.scores is not None and got.scores.shape == (2, 2)


def test_encode_picks_outputs_by_type_when_names_are_unknown() -> None:
    outputs: dict[str, np.ndarray] = {
        "cls": np.array(["a", "b"], dtype=object),
        "margin": np.array([0.5, -1.0]),
    }
    body = orjson.loads(encode(protocol(), outputs))
    assert body == {"predictions": [{"score": 0.5, "label": "a"}, {"score": -1.0, "label": "b"}]}


def test_encode_refuses_overlapping_paths() -> None:
    json_protocol = protocol(outputs=Outputs(score="a", label="a.b"))
    with pytest.raises(PayloadError) as caught:
        encode(json_protocol, CLASSIFIER)
    assert caught.value.reason == "bad_output"


def test_extract_a_single_object_body() -> None:
    got = protocol(response_rows="").extract(b'{"score": 0.9, "label": "spam"}', Outputs())
    assert got.rows == 1
    assert got.scores is not None and got.scores.tolist() == [[0.9]]
    assert got.labels is not None and got.labels.tolist() == ["spam"]


def test_extract_plain_rows_at_the_default_path() -> None:
    got = protocol().extract(b'{"predictions": [0.1, 0.7]}', Outputs())
    assert got.scores is not None and got.scores.tolist() == [[0.1], [0.7]]


@pytest.mark.parametrize(
    ("body", "outputs", "reason"),
    [
        (b'{"other": []}', Outputs(), "bad_response"),
        (b'{"predictions": "x"}', Outputs(), "bad_response"),
        (b'{"predictions": [{"score": 1}]}', Outputs(label="cls"), "bad_selector"),
        (b'{"predictions": [{"score": "high"}]}', Outputs(), "bad_dtype"),
        (b"not json", Outputs(), "bad_json"),
    ],
)
def test_extract_refusals(body: bytes, outputs: Outputs, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        protocol().extract(body, outputs)
    assert caught.value.reason == reason


def test_an_answer_with_other_rows_than_the_request_is_refused() -> None:
    json_protocol = protocol()
    with pytest.raises(PayloadError, match="answered 2 rows for 3") as caught:
        json_protocol.encode_response(CLASSIFIER, model_name="m", model_version="",
                                      request_id=None, rows=3)  # fmt: skip
    assert caught.value.reason == "bad_output"
    assert orjson.loads(
        json_protocol.encode_response(
            CLASSIFIER, model_name="m", model_version="", request_id=None, rows=2
        )  # fmt: skip
    )
