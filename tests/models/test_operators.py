"""The operator allowlist: standard domains and opsets only, subgraphs and functions included."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from shadowproxy.models import check_model
from shadowproxy.models.operators import opset_ceilings
from tests.models.helpers import pinned, pinned_file, refusal, save
from tests.support import models


def _relu_model(opsets: dict[str, int], op: str = "Relu", domain: str = "") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], domain=domain)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()]
    )
    model.ir_version = 8
    return model


def test_custom_domain_node_is_refused(model_dir: Path) -> None:
    message = refusal(pinned(models.custom_op_model(model_dir)))
    # The imported custom domain is the first thing found; either way it is named.
    assert "'com.example'" in message
    assert "custom operator" in message


def test_custom_node_is_named_even_without_a_domain_import(tmp_path: Path) -> None:
    path = save(_relu_model({"": 13}, op="MyRelu", domain="com.example"), tmp_path / "m.onnx")
    message = refusal(pinned_file(path))
    assert "'MyRelu'" in message and "'com.example'" in message
    assert "custom operators" in message


def test_custom_node_inside_an_if_branch_is_refused(model_dir: Path, tmp_path: Path) -> None:
    built = models.nested_custom_op_model(model_dir)
    model = onnx.load(str(built.path))
    # Drop the custom domain import so only the hidden node itself can trip the check.
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 13))
    path = save(model, tmp_path / "nested.onnx")
    message = refusal(pinned_file(path))
    assert "'MyRelu'" in message and "'com.example'" in message


def test_microsoft_contrib_domain_is_refused(tmp_path: Path) -> None:
    model = _relu_model({"": 13, "com.microsoft": 1}, op="Gelu", domain="com.microsoft")
    assert "'com.microsoft'" in refusal(pinned_file(save(model, tmp_path / "m.onnx")))


def test_model_local_function_is_refused(tmp_path: Path) -> None:
    function = helper.make_function(
        "local.fn",
        "DoubleRelu",
        ["a"],
        ["b"],
        [helper.make_node("Relu", ["a"], ["t"]), helper.make_node("Relu", ["t"], ["b"])],
        [helper.make_opsetid("", 13)],
    )
    model = _relu_model({"": 13, "local.fn": 1}, op="DoubleRelu", domain="local.fn")
    model.functions.append(function)
    message = refusal(pinned_file(save(model, tmp_path / "m.onnx")))
    assert "'local.fn'" in message


def test_unknown_operator_in_the_default_domain_is_refused(tmp_path: Path) -> None:
    path = save(_relu_model({"": 13}, op="Frobnicate"), tmp_path / "m.onnx")
    message = refusal(pinned_file(path))
    assert "'Frobnicate' is not a standard operator" in message


def test_opset_newer_than_the_runtimes_is_refused(tmp_path: Path) -> None:
    too_new = opset_ceilings()[""] + 1
    path = save(_relu_model({"": too_new}), tmp_path / "m.onnx")
    message = refusal(pinned_file(path))
    assert f"opset {too_new}" in message and f"1 to {too_new - 1}" in message


def test_ai_onnx_alias_is_the_default_domain(tmp_path: Path) -> None:
    path = save(_relu_model({"ai.onnx": 13}), tmp_path / "m.onnx")
    assert check_model(pinned_file(path)).signature.opsets == {"": 13}


def test_ceilings_cover_both_standard_domains() -> None:
    ceilings = opset_ceilings()
    assert ceilings[""] >= 17 and ceilings["ai.onnx.ml"] >= 1
    assert ceilings[""] <= onnx.defs.onnx_opset_version()


def test_checker_failure_is_reported(tmp_path: Path) -> None:
    model = _relu_model({"": 13})
    model.graph.node[0].input[0] = "undefined_tensor"
    message = refusal(pinned_file(save(model, tmp_path / "m.onnx")))
    assert "not a valid ONNX model: " in message and "undefined_tensor" in message


def test_ml_opset_newer_than_the_runtimes_is_refused(tmp_path: Path) -> None:
    too_new = opset_ceilings()["ai.onnx.ml"] + 1
    path = save(_relu_model({"": 13, "ai.onnx.ml": too_new}), tmp_path / "m.onnx")
    assert f"opset {too_new} of domain 'ai.onnx.ml'" in refusal(pinned_file(path))
