"""Signatures: OIP datatypes and shapes, ZipMap reported as a tensor, unsupported types refused."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from shadowproxy.models import check_model
from shadowproxy.models.signature import ModelSignature, SignatureRefused, read_signature
from shadowproxy.tensors import TensorSpec
from tests.models.helpers import pinned, pinned_file, refusal, save
from tests.support import models


def _model(
    inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", [inputs[0].name], [outputs[0].name])],
        "g",
        inputs,
        outputs,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_metadata_form(logreg_model: models.BuiltModel) -> None:
    metadata = check_model(pinned(logreg_model)).signature.as_metadata()
    assert metadata == {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
        ],
    }


def test_zipmap_output_is_reported_as_fp32_matrix(model_dir: Path) -> None:
    signature = check_model(pinned(models.zipmap_logistic_regression(model_dir))).signature
    assert signature.outputs[1] == TensorSpec("output_probability", "FP32", (-1, 2))
    assert signature.zipmaps == {"output_probability": (0, 1)}


def test_named_and_fixed_dimensions() -> None:
    model = _model(
        [helper.make_tensor_value_info("x", TensorProto.INT32, ["batch", 3, None])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", 3, None])],
    )
    signature = read_signature(model, {"": 17})
    assert signature.inputs == (TensorSpec("x", "INT32", (-1, 3, -1)),)
    assert signature.input("x").batchable


def test_initializers_listed_as_inputs_are_not_inputs() -> None:
    model = _model(
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    model.graph.initializer.append(helper.make_tensor("w", TensorProto.FLOAT, [1], [0.5]))
    assert [spec.name for spec in read_signature(model, {}).inputs] == ["x"]


def test_input_without_a_shape_is_refused() -> None:
    model = _model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(SignatureRefused, match="input 'x' declares no shape"):
        read_signature(model, {})


def test_unsupported_element_type_is_refused_with_its_name(tmp_path: Path) -> None:
    model = _model(
        [helper.make_tensor_value_info("x", TensorProto.COMPLEX64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.COMPLEX64, ["N"])],
    )
    message = refusal(pinned_file(save(model, tmp_path / "complex.onnx")))
    assert "input 'x' has element type COMPLEX64" in message


def test_sequence_output_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [
            helper.make_value_info(
                "y",
                helper.make_sequence_type_proto(
                    helper.make_tensor_type_proto(TensorProto.FLOAT, ["N"])
                ),
            )
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    message = refusal(pinned_file(save(model, tmp_path / "sequence.onnx")))
    assert "output 'y' is a sequence_type" in message


def test_unknown_input_name_raises_key_error() -> None:
    with pytest.raises(KeyError):
        ModelSignature(inputs=(), outputs=(), opsets={}).input("missing")
