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
from onnx import TensorProto, helper

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
    return to_onnx(
        estimator, x[:1], options={id(estimator): {"zipmap": False}}, target_opset=17
    )


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
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx

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
