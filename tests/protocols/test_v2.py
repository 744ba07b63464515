"""Open Inference Protocol REST: decoding, encoding, extraction, health and metadata bodies."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from shadowproxy.config.model import Outputs, Payload
from shadowproxy.errors import PayloadError
from shadowproxy.protocols import V2Protocol, metadata
from shadowproxy.tensors import DATATYPES, TensorSpec

X = TensorSpec("x", "FP32", (-1, 3))
PROTOCOL = V2Protocol(Payload())

# Extremes and awkward values of every datatype, two rows of two.
SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([[0, 255], [1, 128]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535], [1, 2]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1], [1, 2]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1], [2**63, 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 127], [0, -1]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1], [0, -1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1], [0, -1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1], [0, -1]], dtype=np.int64),
    "FP16": np.array([[0.1, 65504], [-6e-8, 1 / 3]], dtype=np.float16),
    "FP32": np.array([[0.1, 3.4028235e38], [-1e-45, 1 / 3]], dtype=np.float32),
    "FP64": np.array([[0.1, 1.7976931348623157e308], [5e-324, 1 / 3]]),
    "BYTES": np.array([["a", ""], ["é ☃", '"quoted"\n']], dtype=object),
}


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def body(*inputs: Any, **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def tensor(data: Any, shape: list[int] | None = None, **fields: Any) -> dict[str, Any]:
    entry = {"name": "x", "shape": [1, 3] if shape is None else shape, "datatype": "FP32"}
    return {**entry, "data": data, **fields}


def encode(outputs: dict[str, np.ndarray], request_id: str | None = None) -> bytes:
    return PROTOCOL.encode_response(
        outputs, model_name="churn", model_version="3", request_id=request_id
    )


def as_request(response: bytes) -> tuple[bytes, list[TensorSpec]]:
    """A response's outputs sent back as a request, with matching specs."""
    outputs = orjson.loads(response)["outputs"]
    specs = [TensorSpec(o["name"], o["datatype"], (-1, *o["shape"][1:])) for o in outputs]
    return orjson.dumps({"inputs": outputs}), specs


def test_samples_cover_every_datatype() -> None:
    assert set(SAMPLES) == set(DATATYPES)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_every_datatype_round_trips_exactly(datatype: str) -> None:
    original = SAMPLES[datatype]
    response = encode({"t": original})
    request, specs = as_request(response)
    assert specs[0].datatype == datatype
    decoded = PROTOCOL.decode_request(request, specs)
    out = decoded.arrays["t"]
    assert out.dtype == original.dtype
    assert out.shape == original.shape
    assert np.array_equal(out, original)
    if datatype == "BYTES":
        assert all(type(item) is str for item in out.reshape(-1))


def test_bytes_outputs_as_bytes_come_back_as_text() -> None:
    original = np.array([[b"ab", "c"]], dtype=object)
    request, specs = as_request(encode({"t": original}))
    out = PROTOCOL.decode_request(request, specs).arrays["t"]
    assert out.tolist() == [["ab", "c"]]


def test_all_datatypes_in_one_request() -> None:
    request, specs = as_request(encode(SAMPLES))
    decoded = PROTOCOL.decode_request(request, specs)
    assert decoded.rows == 2
    assert list(decoded.arrays) == list(SAMPLES)


def test_response_layout() -> None:
    response = orjson.loads(encode({"p": np.array([[0.25, 0.75]], dtype=np.float32)}, "r-1"))
    assert response == {
        "model_name": "churn",
        "model_version": "3",
        "id": "r-1",
        "outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}],
    }
    assert "id" not in orjson.loads(encode({"p": np.zeros((1, 1))}))


def test_non_finite_outputs_are_written_as_null() -> None:
    response = orjson.loads(encode({"p": np.array([np.nan, np.inf], dtype=np.float32)}))
    assert response["outputs"][0]["data"] == [None, None]


def test_non_contiguous_and_big_endian_outputs_are_written() -> None:
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    big_endian = np.array([[1, 2]], dtype=">i4")
    response = orjson.loads(encode({"s": strided, "b": big_endian}))
    assert response["outputs"][0]["data"] == [0, 2, 4, 6, 8, 10]
    assert response["outputs"][1] == {
        "name": "b",
        "datatype": "INT32",
        "shape": [1, 2],
        "data": [1, 2],
    }


def test_unwritable_outputs_are_bad_output() -> None:
    with pytest.raises(PayloadError) as caught:
        encode({"c": np.array([1 + 2j])})
    assert caught.value.reason == "bad_output"


def test_decode_reads_id_requested_outputs_and_nested_data() -> None:
    decoded = PROTOCOL.decode_request(
        body(
            tensor([[1, 2, 3], [4, 5, 6]], [2, 3], parameters={"p": 1}),
            id="abc",
            parameters={"q": 2},
            outputs=[{"name": "label"}],
        ),
        [X],
    )
    assert decoded.id == "abc"
    assert decoded.outputs == ("label",)
    assert decoded.rows == 2
    assert decoded.arrays["x"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_nested_data_with_another_layout_is_flattened_row_major() -> None:
    decoded = PROTOCOL.decode_request(body(tensor([[1, 2], [3, 4], [5, 6]], [2, 3])), [X])
    assert decoded.arrays["x"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_multi_input_requests_match_inputs_by_name() -> None:
    specs = [TensorSpec("a", "INT64", (-1,)), TensorSpec("b", "BYTES", (-1, 1))]
    decoded = PROTOCOL.decode_request(
        body(
            {"name": "b", "shape": [2, 1], "datatype": "BYTES", "data": ["u", "v"]},
            {"name": "a", "shape": [2], "datatype": "INT64", "data": [7, 8]},
        ),
        specs,
    )
    assert decoded.arrays["a"].dtype == np.int64 and decoded.arrays["a"].tolist() == [7, 8]
    assert decoded.arrays["b"].tolist() == [["u"], ["v"]]


STRICT_CASES = [
    ("bad_json", b'{"inputs": [', "not valid JSON"),
    ("too_deep", body(tensor(nested(1, 31))), "max_depth 32"),
    ("bad_body", b"[1, 2, 3]", "body: expected an object, got a list"),
    ("bad_body", b'{"instances": [[1, 2, 3]]}', "inputs: expected a list"),
    ("bad_body", body(tensor([1, 2, 3]), id=5), "id: expected a string"),
    ("bad_body", body("x"), "inputs[0]: expected an object"),
    ("bad_body", body({"shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}), "inputs[0].name"),
    (
        "bad_body",
        body({"name": "x", "shape": [1, 3], "datatype": "FP32"}),
        "inputs[0].data: missing",
    ),
    ("bad_body", body(tensor([1, 2, 3]), outputs="label"), "outputs: expected a list"),
    (
        "unknown_input",
        body(tensor([1, 2, 3]), {**tensor([1, 2, 3]), "name": "y"}),
        "inputs[1].name: 'y'",
    ),
    ("missing_input", body(), "missing model input 'x'"),
    (
        "duplicate_input",
        body(tensor([1, 2, 3]), tensor([1, 2, 3])),
        "inputs[1].name: 'x' appears twice",
    ),
    (
        "bad_shape",
        body(tensor([1, 2, 3, 4, 5], [2, 3])),
        "inputs[0].shape: [2, 3] holds 6 values, data has 5",
    ),
    ("bad_shape", body(tensor([1, 2, 3, 4], [1, 4])), "inputs[0].shape: shape [1, 4] does not fit"),
    ("bad_shape", body(tensor([1, 2, 3], [3])), "inputs[0].shape: shape [3] does not fit"),
    (
        "bad_shape",
        body(tensor([1, 2, 3], [1, -3])),
        "inputs[0].shape: expected a list of non-negative",
    ),
    ("bad_shape", body(tensor([1, 2, 3], [True, 3])), "inputs[0].shape"),
    ("bad_shape", body(tensor(1, [])), "inputs[0].shape: a scalar"),
    (
        "bad_dtype",
        body(tensor([1, 2, 3], datatype="FP64")),
        "inputs[0].datatype: model input 'x' is FP32, request says FP64",
    ),
    ("bad_dtype", body(tensor([1, 2, 3], datatype="FLOAT")), "inputs[0].datatype: 'FLOAT' is not"),
    ("bad_dtype", body(tensor([1, "2", 3])), "inputs[0].data: FP32 takes numbers, got strings"),
    ("bad_dtype", body(tensor([1, None, 3])), "inputs[0].data: takes numbers, got null"),
    ("bad_dtype", body(tensor([1, True, 3])), "inputs[0].data: true/false mixed"),
    ("ragged", body(tensor([[1, 2], [3]], [1, 3])), "inputs[0].data: ragged"),
    ("nonfinite", body(tensor([1, 2, 1e39])), "inputs[0].data: 1e+39 is not a finite FP32"),
    (
        "nonfinite",
        b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, NaN, 3]}]}',
        "non-finite",
    ),
    (
        "nonfinite",
        b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 1e400, 3]}]}',
        "non-finite",
    ),
    ("empty_batch", body(tensor([], [0, 3])), "inputs[0].shape: the batch has no rows"),
    ("batch_too_large", body(tensor([0] * 3075, [1025, 3])), "1025 rows, more than max_rows 1024"),
]


@pytest.mark.parametrize(("reason", "request_body", "message"), STRICT_CASES)
def test_strictness(reason: str, request_body: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        PROTOCOL.decode_request(request_body, [X])
    assert caught.value.reason == reason
    assert message in str(caught.value)


def test_integer_inputs_refuse_over_long_integers() -> None:
    spec = TensorSpec("n", "INT64", (-1,))
    request = (
        b'{"inputs": [{"name": "n", "shape": [2], "datatype": "INT64", '
        b'"data": [1, 99999999999999999999]}]}'
    )
    with pytest.raises(
        PayloadError, match=r"inputs\[0\].data: integer 1e\+20 does not fit INT64"
    ) as caught:
        PROTOCOL.decode_request(request, [spec])
    assert caught.value.reason == "int_overflow"


def test_rows_must_agree_across_inputs() -> None:
    specs = [TensorSpec("a", "FP32", (-1,)), TensorSpec("b", "FP32", (-1,))]
    request = body(
        {"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
        {"name": "b", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]},
    )
    with pytest.raises(
        PayloadError, match=r"inputs\[1\].shape: 3 rows, but inputs\[0\] has 2"
    ) as caught:
        PROTOCOL.decode_request(request, specs)
    assert caught.value.reason == "bad_shape"


def test_nonfinite_inputs_pass_when_allowed() -> None:
    allowing = V2Protocol(Payload(nonfinite="allow"))
    request = (
        b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", '
        b'"data": [NaN, -Infinity, 1e39]}]}'
    )
    x = allowing.decode_request(request, [X]).arrays["x"]
    assert np.isnan(x[0, 0]) and np.isneginf(x[0, 1]) and np.isposinf(x[0, 2])


def test_max_rows_comes_from_the_payload_config() -> None:
    small = V2Protocol(Payload(max_rows=2))
    assert small.decode_request(body(tensor([0] * 6, [2, 3])), [X]).rows == 2
    with pytest.raises(PayloadError) as caught:
        small.decode_request(body(tensor([0] * 9, [3, 3])), [X])
    assert caught.value.reason == "batch_too_large"


def test_error_body() -> None:
    assert orjson.loads(PROTOCOL.encode_error('bad "input"')) == {"error": 'bad "input"'}


# -- extract ---------------------------------------------------------------------------


def response(*outputs: dict[str, Any]) -> bytes:
    return orjson.dumps({"model_name": "m", "outputs": list(outputs)})


def out(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def test_extract_defaults_to_probabilities_and_label() -> None:
    got = PROTOCOL.extract(
        response(
            out("label", "INT64", [2], [1, 0]),
            out("probabilities", "FP32", [2, 2], [0.2, 0.8, 0.7, 0.3]),
            out("other", "FP32", [2], [5, 6]),
        ),
        Outputs(),
    )
    assert got.rows == 2
    assert got.labels is not None and got.labels.tolist() == [1, 0]
    assert got.scores is not None and got.scores.dtype == np.float64
    assert got.scores.tolist() == [[0.2, 0.8], [0.7, 0.3]]


def test_extract_selectors_name_output_tensors() -> None:
    got = PROTOCOL.extract(
        response(
            out("label", "INT64", [2], [1, 0]),
            out("margin", "FP64", [2, 1], [0.5, -0.5]),
            out("cls", "BYTES", [2, 1], ["yes", "no"]),
        ),
        Outputs(score="margin", label="cls"),
    )
    assert got.scores is not None and got.scores.tolist() == [[0.5], [-0.5]]
    assert got.labels is not None and got.labels.tolist() == ["yes", "no"]


def test_extract_a_single_output_by_its_datatype() -> None:
    floats = PROTOCOL.extract(response(out("variable", "FP32", [3], [1, 2.5, None])), Outputs())
    assert floats.labels is None and floats.scores is not None
    assert floats.scores.shape == (3, 1) and np.isnan(floats.scores[2, 0])
    ints = PROTOCOL.extract(response(out("y", "INT32", [3, 1], [1, 2, 3])), Outputs())
    assert ints.scores is None and ints.labels is not None and ints.labels.tolist() == [1, 2, 3]


def test_extract_reads_local_model_responses() -> None:
    encoded = encode(
        {
            "label": np.array([1, 0], dtype=np.int64),
            "probabilities": np.array([[0.1, 0.9], [0.6, 0.4]], dtype=np.float32),
        }
    )
    got = PROTOCOL.extract(encoded, Outputs())
    assert got.labels is not None and got.labels.tolist() == [1, 0]
    assert got.scores is not None
    expected = np.array([[0.1, 0.9], [0.6, 0.4]], dtype=np.float32)
    assert np.array_equal(got.scores.astype(np.float32), expected)


@pytest.mark.parametrize(
    ("body_", "outputs", "reason", "message"),
    [
        (b"[]", Outputs(), "bad_response", "expected an object"),
        (b'{"error": "model exploded"}', Outputs(), "bad_response", "model exploded"),
        (b'{"outputs": [{"datatype": "FP32"}]}', Outputs(), "bad_response", "outputs[0]"),
        (response(out("a", "FP32", [1], [1])), Outputs(score="probs"), "bad_selector", "'probs'"),
        (
            response(out("a", "FP32", [1], [1]), out("b", "FP32", [1], [1])),
            Outputs(),
            "bad_selector",
            "set compare.outputs",
        ),
        (response(out("a", "FLOAT", [1], [1])), Outputs(), "bad_response", "'FLOAT'"),
        (
            response(out("probabilities", "FP32", [2, 2], [1, 2, 3])),
            Outputs(),
            "bad_shape",
            "holds 4",
        ),
        (response(out("probabilities", "FP32", [1], "x")), Outputs(), "bad_dtype", "strings"),
        (response(out("probabilities", "FP32", [0], [])), Outputs(), "empty_batch", "no rows"),
        (
            response(out("label", "INT64", [1, 2], [1, 2])),
            Outputs(),
            "bad_shape",
            "not one per row",
        ),
        (
            response(out("label", "INT64", [2], [1, 2]), out("probabilities", "FP32", [1], [1])),
            Outputs(),
            "bad_response",
            "1 rows of scores but 2 labels",
        ),
        (b"{", Outputs(), "bad_json", "not valid JSON"),
    ],
)
def test_extract_refusals(body_: bytes, outputs: Outputs, reason: str, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        PROTOCOL.extract(body_, outputs)
    assert caught.value.reason == reason
    assert message in str(caught.value)


def test_extract_accepts_nonfinite_literals_from_other_servers() -> None:
    got = PROTOCOL.extract(
        response(out("score", "FP64", [2], [0.5, 1])).replace(b"1]", b"NaN]"), Outputs()
    )
    assert got.scores is not None and np.isnan(got.scores[1, 0])


# -- health and metadata bodies --------------------------------------------------------


def test_metadata_bodies() -> None:
    server = orjson.loads(metadata.server_metadata())
    assert server["name"] == "shadowproxy" and isinstance(server["version"], str)
    model = orjson.loads(
        metadata.model_metadata(
            "churn", "3", [TensorSpec("x", "FP32", (-1, 4))], [TensorSpec("label", "INT64", (-1,))]
        )
    )
    assert model == {
        "name": "churn",
        "versions": ["3"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
    }
    assert orjson.loads(metadata.model_metadata("m", "", [], []))["versions"] == []
    assert orjson.loads(metadata.live()) == {"live": True}
    assert orjson.loads(metadata.ready(False)) == {"ready": False}
    assert orjson.loads(metadata.model_ready("churn", True)) == {"name": "churn", "ready": True}
