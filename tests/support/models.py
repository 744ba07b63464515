"""Small real ONNX models for the tests, built with scikit-learn and skl2onnx.

Every builder is deterministic (fixed seeds), writes the model to ``folder`` and returns a
:class:`BuiltModel` with its path and sha256, ready for a ``model: {path, sha256}`` config.
Models are built once per test session (see ``tests/conftest.py``); building is the slow
part, loading is cheap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N_FEATURES = 4


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    sha256: str
    n_features: int = N_FEATURES

    def config(self, **extra: object) -> dict[str, object]:
        """The ``model:`` block of a config for this file."""
        return {"path": str(self.path), "sha256": self.sha256, **extra}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save(model: onnx.ModelProto, path: Path) -> BuiltModel:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return BuiltModel(path, sha256_of(path))


def training_data(seed: int = 0, rows: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A seeded binary task: four float32 features, a label from a noisy linear rule."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(scale=0.3, size=rows) > 0).astype(
        np.int64
    )
    return x, y


def _convert(estimator: object, x: np.ndarray) -> onnx.ModelProto:
    from skl2onnx import to_onnx

    # zipmap off: probabilities come out as one [N, classes] float tensor, not a list of maps.
    return to_onnx(estimator, x[:1], options={id(estimator): {"zipmap": False}}, target_opset=17)


def logistic_regression(folder: Path, seed: int = 0, name: str = "logreg.onnx") -> BuiltModel:
    from sklearn.linear_model import LogisticRegression

    x, y = training_data(seed)
    return _save(_convert(LogisticRegression().fit(x, y), x), folder / name)


def gradient_boosting(folder: Path, seed: int = 0, name: str = "gbt.onnx") -> BuiltModel:
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = training_data(seed)
    model = GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=seed)
    return _save(_convert(model.fit(x, y), x), folder / name)


def zipmap_logistic_regression(folder: Path, name: str = "zipmap.onnx") -> BuiltModel:
    """skl2onnx's default output: probabilities as a sequence of maps."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = training_data(0)
    return _save(to_onnx(LogisticRegression().fit(x, y), x[:1], target_opset=17), folder / name)


def slow_matmul_chain(
    folder: Path, size: int = 256, depth: int = 10, name: str = "slow.onnx"
) -> BuiltModel:
    """A deliberately slow model: ``depth`` chained ``size``×``size`` MatMuls per call.

    Input ``x`` is [N, 4] like the other models; output ``score`` is [N, 1]. The chain runs on
    a matrix scaled by the input's mean, so onnxruntime cannot fold it into a constant at load,
    and a call costs about ``depth * size**3`` multiply-adds whatever the batch size.
    """
    rng = np.random.default_rng(7)
    project = rng.normal(scale=0.1, size=(N_FEATURES, size)).astype(np.float32)
    weight = (np.eye(size) + rng.normal(scale=0.01, size=(size, size))).astype(np.float32)
    weight /= np.linalg.norm(weight, ord=2)
    inits = [
        helper.make_tensor("P", TensorProto.FLOAT, project.shape, project.ravel()),
        helper.make_tensor("W", TensorProto.FLOAT, weight.shape, weight.ravel()),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
        helper.make_node("Mul", ["W", "m"], ["M0"]),
    ]
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [f"M{i}", "W"], [f"M{i + 1}"]))
    nodes += [
        helper.make_node("MatMul", ["x", "P"], ["h"]),
        helper.make_node("MatMul", ["h", f"M{depth}"], ["hm"]),
        helper.make_node("ReduceMean", ["hm"], ["score"], axes=[1], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", N_FEATURES])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return _save(model, folder / name)


def identity_model(
    folder: Path, elem_type: int, name: str, shape: tuple[str | int, ...] = ("N", 3)
) -> BuiltModel:
    """``y = Identity(x)`` for one element type: round-trips every datatype exactly."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, list(shape))],
        [helper.make_tensor_value_info("y", elem_type, list(shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return _save(model, folder / name)


def lookup_model(folder: Path, rows: int = 10, name: str = "lookup.onnx") -> BuiltModel:
    """``score[i] = table[idx[i]]`` with ``table = 0, 1, ..., rows - 1``.

    An index outside the table is refused by onnxruntime at run time (InvalidArgument): a
    request that passes every check on its shape and datatype and still fails the model.
    """
    table = np.arange(rows, dtype=np.float32).reshape(rows, 1)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "idx"], ["picked"], axis=0),
            helper.make_node("Reshape", ["picked", "shape"], ["score"]),
        ],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [
            helper.make_tensor("table", TensorProto.FLOAT, table.shape, table.ravel()),
            helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return _save(model, folder / name)


def large_model(folder: Path, megabytes: int = 256, name: str = "large.onnx") -> BuiltModel:
    """``y = x + w[0:4]`` with a ``megabytes`` MB weight: a file that takes seconds to check."""
    weight = np.zeros(megabytes * 1_000_000 // 4, dtype=np.float32)
    inits = [
        numpy_helper.from_array(weight, "w"),
        helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [N_FEATURES]),
    ]
    nodes = [
        helper.make_node("Slice", ["w", "starts", "ends"], ["head"]),
        helper.make_node("Add", ["x", "head"], ["y"]),
    ]
    return _save(_add_model(nodes, inits), folder / name)


# -- models the loader must refuse or handle specially -----------------------------------


def _add_model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto] | None = None,
    opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """``y = f(x)`` over a float [N, 4] input, with ``opsets`` domain -> version imported."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", N_FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", N_FEATURES])],
        initializers or [],
    )
    imports = [helper.make_opsetid(d, v) for d, v in (opsets or {"": 13}).items()]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model


def add_constant_model(folder: Path, name: str = "add.onnx") -> BuiltModel:
    """``y = x + w`` with a [4] float initializer ``w`` = 1, 2, 3, 4."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [N_FEATURES], [1.0, 2.0, 3.0, 4.0])
    return _save(_add_model([helper.make_node("Add", ["x", "w"], ["y"])], [weight]), folder / name)


def external_data_model(
    folder: Path, name: str = "external.onnx", location: str = "weights.bin"
) -> BuiltModel:
    """:func:`add_constant_model` with ``w`` saved as external data in ``folder/location``.

    The returned sha256 covers the model file followed by the data file, the pin a model with
    external data needs.
    """
    # onnx only moves tensors stored as raw bytes out of the file.
    weight = onnx.numpy_helper.from_array(np.array([1.0, 2.0, 3.0, 4.0], np.float32), "w")
    model = _add_model([helper.make_node("Add", ["x", "w"], ["y"])], [weight])
    path = folder / name
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    digest = hashlib.sha256(path.read_bytes() + (folder / location).read_bytes()).hexdigest()
    return BuiltModel(path, digest)


def custom_op_model(
    folder: Path, name: str = "custom.onnx", domain: str = "com.example"
) -> BuiltModel:
    """``y = MyRelu(x)`` with ``MyRelu`` in a custom operator domain."""
    node = helper.make_node("MyRelu", ["x"], ["y"], domain=domain, name="custom_relu")
    return _save(_add_model([node], opsets={"": 13, domain: 1}), folder / name)


def nested_custom_op_model(folder: Path, name: str = "nested_custom.onnx") -> BuiltModel:
    """An ``If`` whose then-branch hides a node of domain ``com.example``."""

    def branch(node: onnx.NodeProto, label: str) -> onnx.GraphProto:
        output = helper.make_tensor_value_info("y_" + label, TensorProto.FLOAT, None)
        return helper.make_graph([node], label, [], [output])

    then = branch(helper.make_node("MyRelu", ["x"], ["y_then"], domain="com.example"), "then")
    other = branch(helper.make_node("Relu", ["x"], ["y_else"]), "else")
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value_float=0.0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["y"], then_branch=then, else_branch=other),
    ]
    return _save(_add_model(nodes, opsets={"": 13, "com.example": 1}), folder / name)


# -- models that pass every check but cannot run -------------------------------------------


def missing_kernel_model(folder: Path, name: str = "relu_int16.onnx") -> BuiltModel:
    """``y = Relu(x)`` over int16: valid ONNX (opset 14), but onnxruntime has no such kernel.

    Every check passes; building the session fails (``NOT_IMPLEMENTED``).
    """
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu_int16",
        [helper.make_tensor_value_info("x", TensorProto.INT16, ["N", N_FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.INT16, ["N", N_FEATURES])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return _save(model, folder / name)


def memory_hungry_model(
    folder: Path, megabytes: int = 800, name: str = "memory_hungry.onnx"
) -> BuiltModel:
    """``y = x + sum(ones(megabytes))``: a tiny file that needs ``megabytes`` MB to run.

    The constant is built by ``ConstantOfShape`` when the model first runs (onnxruntime's
    constant folding at load gives up on it when memory is short), so a worker capped below
    that fails at warm-up, the first run.
    """
    rows = megabytes * 1_000_000 // (4 * N_FEATURES)
    inits = [
        helper.make_tensor("shape", TensorProto.INT64, [2], [rows, N_FEATURES]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
    ]
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["ones"], value=one),
        helper.make_node("ReduceSum", ["ones", "axes"], ["total"], keepdims=0),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    return _save(_add_model(nodes, inits), folder / name)
