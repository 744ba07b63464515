"""KServe V1: instances and columnar requests, predictions responses."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from shadowproxy.config.model import Outputs, Payload
from shadowproxy.errors import PayloadError
from shadowproxy.protocols import V1Protocol
from shadowproxy.tensors import TensorSpec

PROTOCOL = V1Protocol(Payload())
X = TensorSpec("x", "FP32", (-1, 3))
MULTI = [TensorSpec("age", "INT64", (-1,)), TensorSpec("emb", "FP64", (-1, 2))]


def decode(value: Any, inputs: list[TensorSpec] | None = None) -> dict[str, np.ndarray]:
    return PROTOCOL.decode_request(orjson.dumps(value), inputs or [X]).arrays


def encode(outputs: dict[str, np.ndarray]) -> Any:
    body = PROTOCOL.encode_response(outputs, model_name="m", model_version="", request_id="r")
    return orjson.loads(body)


def test_instances_are_feature_rows_of_a_single_input() -> None:
    decoded = PROTOCOL.decode_request(b'{"instances": [[1, 2, 3], [4.5, 5, 6]]}', [X])
    assert decoded.rows == 2 and decoded.id is None
    x = decoded.arrays["x"]
    assert x.dtype == np.float32 and x.tolist() == [[1, 2, 3], [4.5, 5, 6]]


def test_scalar_instances_feed_a_vector_input() -> None:
    x = decode({"instances": [1, 2]}, [TensorSpec("x", "INT32", (-1,))])["x"]
    assert x.dtype == np.int32 and x.tolist() == [1, 2]


def test_named_instances_feed_several_inputs() -> None:
    arrays = decode({"instances": [{"emb": [1, 2], "age": 30}, {"age": 41, "emb": [3, 4]}]}, MULTI)
    assert arrays["age"].dtype == np.int64 and arrays["age"].tolist() == [30, 41]
    assert arrays["emb"].dtype == np.float64 and arrays["emb"].tolist() == [[1, 2], [3, 4]]


def test_named_instances_also_work_for_a_single_input() -> None:
    assert decode({"instances": [{"x": [1, 2, 3]}]})["x"].tolist() == [[1, 2, 3]]


def test_columnar_inputs() -> None:
    assert decode({"inputs": [[1, 2, 3]]})["x"].tolist() == [[1, 2, 3]]
    arrays = decode({"inputs": {"age": [1, 2], "emb": [[0, 0], [1, 1]]}}, MULTI)
    assert arrays["age"].tolist() == [1, 2] and arrays["emb"].shape == (2, 2)


@pytest.mark.parametrize(
    ("value", "inputs", "reason", "message"),
    [
        ([[1, 2, 3]], None, "bad_body", "body: expected an object, got a list"),
        ({"rows": [[1, 2, 3]]}, None, "bad_body", 'exactly one of "instances" or "inputs"'),
        ({"instances": [[1, 2, 3]], "inputs": [[1, 2, 3]]}, None, "bad_body", "exactly one"),
        ({"instances": {"x": [1, 2, 3]}}, None, "bad_body", "instances: expected a list"),
        ({"instances": [[1, 2, 3], {"x": [1, 2, 3]}]}, None, "bad_body", "mix objects"),
        ({"instances": [[1, 2], [3, 4]]}, MULTI, "bad_body", "the model has 2 inputs"),
        ({"inputs": [[1, 2]]}, MULTI, "bad_body", "the model has 2 inputs"),
        ({"inputs": 5}, None, "bad_body", "inputs: expected a list or an object"),
        ({"inputs": {"age": 1, "emb": [[1, 2]]}}, MULTI, "bad_body", "inputs.age: expected a list"),
        ({"instances": [{"x": [1, 2, 3], "y": 1}]}, None, "unknown_input", "instances[0]: 'y'"),
        (
            {"instances": [{"age": 1, "emb": [1, 2]}, {"age": 2}]},
            MULTI,
            "missing_input",
            "instances[1]: missing model input 'emb'",
        ),
        ({"inputs": {"age": [1]}}, MULTI, "missing_input", "inputs: missing model input 'emb'"),
        (
            {"inputs": {"age": [1], "emb": [[1, 2]], "z": [0]}},
            MULTI,
            "unknown_input",
            "inputs: 'z'",
        ),
        (
            {"inputs": {"age": [1, 2], "emb": [[1, 2]]}},
            MULTI,
            "bad_shape",
            "inputs.emb: 1 rows, but inputs.age has 2",
        ),
        ({"instances": [[1, 2, 3, 4]]}, None, "bad_shape", "instances: shape [1, 4] does not fit"),
        ({"instances": [1, 2]}, None, "bad_shape", "instances: shape [2] does not fit"),
        ({"instances": [[1, 2, 3], [4, 5]]}, None, "ragged", "instances: ragged"),
        (
            {"instances": [{"age": 1.5, "emb": [1, 2]}]},
            MULTI,
            "bad_dtype",
            "instances[*].age: INT64 takes integers",
        ),
        (
            {"instances": [[1, "2", 3]]},
            None,
            "bad_dtype",
            "instances: FP32 takes numbers, got strings",
        ),
        (
            {"instances": [{"age": 2**63, "emb": [1, 2]}]},
            MULTI,
            "int_overflow",
            "instances[*].age: integer 9223372036854775808",
        ),
        (
            {"instances": [[1, 2, 1e300]]},
            None,
            "nonfinite",
            "instances: 1e+300 is not a finite FP32",
        ),
        ({"instances": []}, None, "empty_batch", "instances: the batch has no rows"),
        (
            {"inputs": {"age": [], "emb": []}},
            MULTI,
            "empty_batch",
            "inputs.age: the batch has no rows",
        ),
        ({"instances": [[0, 0, 0]] * 1025}, None, "batch_too_large", "instances: 1025 rows"),
    ],
)
def test_strictness(value: Any, inputs: list[TensorSpec] | None, reason: str, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode(value, inputs)
    assert caught.value.reason == reason
    assert message in str(caught.value)


def test_invalid_and_deep_bodies() -> None:
    for body, reason in ((b'{"instances": [', "bad_json"), (b'{"instances": [NaN]}', "nonfinite")):
        with pytest.raises(PayloadError) as caught:
            PROTOCOL.decode_request(body, [X])
        assert caught.value.reason == reason
    shallow = V1Protocol(Payload(max_depth=2))
    with pytest.raises(PayloadError) as caught:
        shallow.decode_request(b'{"instances": [[1, 2, 3]]}', [X])
    assert caught.value.reason == "too_deep"


def test_encode_single_output_is_one_value_per_row() -> None:
    assert encode({"p": np.array([[0.1, 0.9], [0.5, 0.5]], dtype=np.float32)}) == {
        "predictions": [[0.1, 0.9], [0.5, 0.5]]
    }
    assert encode({"y": np.array(["a", "b"], dtype=object)}) == {"predictions": ["a", "b"]}


def test_encode_several_outputs_is_one_object_per_row() -> None:
    body = encode(
        {"label": np.array([1, 0]), "probabilities": np.array([[0.2, 0.8], [0.9, 0.1]], np.float32)}
    )
    assert body == {
        "predictions": [
            {"label": 1, "probabilities": [0.2, 0.8]},
            {"label": 0, "probabilities": [0.9, 0.1]},
        ]
    }


def test_encode_refuses_outputs_with_different_rows() -> None:
    with pytest.raises(PayloadError) as caught:
        encode({"a": np.zeros(2), "b": np.zeros(3)})
    assert caught.value.reason == "bad_output"


def test_several_outputs_round_trip_as_named_instances() -> None:
    outputs = {"age": np.array([3, 4], dtype=np.int64), "emb": np.array([[0.5, 1], [2, 3]])}
    predictions = encode(outputs)["predictions"]
    arrays = decode({"instances": predictions}, MULTI)
    for name, original in outputs.items():
        assert arrays[name].dtype == original.dtype and np.array_equal(arrays[name], original)


# -- extract ---------------------------------------------------------------------------


def extract(predictions: Any, outputs: Outputs | None = None) -> Any:
    return PROTOCOL.extract(orjson.dumps({"predictions": predictions}), outputs or Outputs())


def test_plain_floats_and_lists_are_scores() -> None:
    got = extract([0.5, 1])
    assert got.labels is None and got.scores is not None and got.scores.tolist() == [[0.5], [1.0]]
    got = extract([[0, 1], [1, 0]])
    assert got.labels is None and got.scores is not None and got.scores.tolist() == [[0, 1], [1, 0]]


def test_plain_integers_and_strings_are_labels() -> None:
    got = extract([1, 0, 2])
    assert got.scores is None and got.labels is not None and got.labels.dtype == np.int64
    assert got.labels.tolist() == [1, 0, 2]
    got = extract(["cat", "dog"])
    assert got.labels is not None and got.labels.tolist() == ["cat", "dog"] and got.rows == 2


def test_prediction_objects_use_default_names() -> None:
    got = extract(
        [{"label": "a", "scores": [0.1, 0.9], "x": 1}, {"label": "b", "scores": [1, 0], "x": 2}]
    )
    assert got.labels is not None and got.labels.tolist() == ["a", "b"]
    assert got.scores is not None and got.scores.tolist() == [[0.1, 0.9], [1.0, 0.0]]


def test_prediction_objects_with_one_key_are_read_by_type() -> None:
    got = extract([{"value": 0.25}, {"value": 0.5}])
    assert got.labels is None and got.scores is not None and got.scores.tolist() == [[0.25], [0.5]]


def test_selectors_are_dotted_paths_in_each_prediction() -> None:
    got = extract(
        [{"out": {"p": 0.3, "cls": 2}}, {"out": {"p": 0.6, "cls": 1}}],
        Outputs(score="out.p", label="out.cls"),
    )
    assert got.scores is not None and got.scores.tolist() == [[0.3], [0.6]]
    assert got.labels is not None and got.labels.tolist() == [2, 1]


def test_extract_reads_local_model_responses() -> None:
    body = PROTOCOL.encode_response(
        {
            "label": np.array([1, 0]),
            "probabilities": np.array([[0.2, 0.8], [0.9, 0.1]], np.float32),
        },
        model_name="m",
        model_version="",
        request_id=None,
    )
    got = PROTOCOL.extract(body, Outputs())
    assert got.rows == 2 and got.labels is not None and got.labels.tolist() == [1, 0]
    assert got.scores is not None and got.scores.shape == (2, 2)


@pytest.mark.parametrize(
    ("body", "outputs", "reason", "message"),
    [
        (b'{"error": "no model"}', Outputs(), "bad_response", "no model"),
        (b"[1]", Outputs(), "bad_response", "no predictions"),
        (b'{"predictions": 1}', Outputs(), "bad_response", "expected a list of rows"),
        (b'{"predictions": []}', Outputs(), "empty_batch", "no rows"),
        (b'{"predictions": [1, {"a": 1}]}', Outputs(), "bad_response", "mix objects"),
        (b'{"predictions": [0.5]}', Outputs(score="p"), "bad_selector", "plain values"),
        (b'{"predictions": [{"p": 1}]}', Outputs(score="q"), "bad_selector", "'q'"),
        (
            b'{"predictions": [{"p": 1}, {"q": 1}]}',
            Outputs(score="p"),
            "bad_selector",
            "predictions[1]: no 'p'",
        ),
        (b'{"predictions": [{"a": 1, "b": 2}]}', Outputs(), "bad_selector", "no scores or labels"),
        (b'{"predictions": [[1], [2, 3]]}', Outputs(), "ragged", "ragged"),
        (b'{"predictions": [{"label": 0.5}]}', Outputs(), "bad_dtype", "fractions"),
        (b'{"predictions": [true, "x"]}', Outputs(), "bad_dtype", "strings"),
    ],
)
def test_extract_refusals(body: bytes, outputs: Outputs, reason: str, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        PROTOCOL.extract(body, outputs)
    assert caught.value.reason == reason
    assert message in str(caught.value)


def test_one_item_lists_of_integers_or_strings_are_labels() -> None:
    got = extract([[1], [0]])
    assert got.scores is None and got.labels is not None and got.labels.tolist() == [1, 0]
    got = extract([["a"], ["b"]])
    assert got.labels is not None and got.labels.tolist() == ["a", "b"]
    got = extract([[0.5], [1]])
    assert got.labels is None and got.scores is not None and got.scores.tolist() == [[0.5], [1]]


def test_an_answer_with_other_rows_than_the_request_is_the_models_error() -> None:
    one_row = {"total": np.array([[3.0]])}
    # One prediction for two instances: never a short answer to a client.
    with pytest.raises(PayloadError, match="not 2 rows") as caught:
        PROTOCOL.encode_response(one_row, model_name="m", model_version="", request_id=None,
                                 rows=2)  # fmt: skip
    assert caught.value.reason == "bad_output"
    # Without the request's rows (a caller that has none), the outputs' own count stands.
    body = PROTOCOL.encode_response(one_row, model_name="m", model_version="", request_id=None)
    assert orjson.loads(body) == {"predictions": [[3.0]]}
