"""The demo's models, input reference and traffic, rebuilt byte for byte from a fixed seed.

``python -m shadowproxy.devtools.demo_models --out configs/demo`` regenerates every file that
``shadowproxy demo`` uses. The task is real: scikit-learn's bundled breast-cancer data (569
rows, label 0 = malignant, 1 = benign), restricted to its first 8 features and split once
with a fixed seed. The raw data is never standardised; the models carry their own scaler.

The four models, and the decision each one should get from the promotion gates:

``production.onnx``
    ``StandardScaler`` then ``LogisticRegression`` (C = 1): the model answering clients.
``candidate-retrain.onnx``
    The same pipeline retrained with slightly weaker regularisation (C = 0.8), the kind of
    change a routine retrain brings. Its labels agree with production on every test row and
    its probabilities move by a few thousandths, so it passes agreement and score gates and
    should be PROMOTED.
``candidate-shifted.onnx``
    The same pipeline trained cost-sensitively, a malignant case weighing ten times a benign
    one. That moves its decision boundary: it calls about one test row in six malignant
    where production says benign, and its score distribution is clearly shifted (PSI about
    0.6 against a 0.2 gate), so it should be REJECTED for divergence and drift.
``candidate-hog.onnx``
    Production's graph plus a branch that does heavy work and contributes nothing: a matrix
    built at run time from the input is multiplied with itself a few times, a large tensor is
    filled and summed, and the total, multiplied by 0, is added to the probabilities. Its
    answers are bit-identical to production's for every finite input, so agreement gates
    pass, but a call costs thousands of times production's CPU and holds about 200 MB more
    memory; it should be REJECTED on the resource gates (CPU ratio, RSS delta).

Besides the models the output folder gets ``models.json`` (file name and sha256 of each
model, which the demo config pins, and the feature names), ``reference.json`` (the training
rows' per-feature distributions, built with :func:`~shadowproxy.compare.reference
.build_reference`), ``traffic.npy`` (2,000 request rows resampled from the test split) and
``traffic-shifted.npy`` (500 such rows with two features moved by 1.5 training standard
deviations, for the input-drift part of the demo). Arrays are plain ``.npy`` files, written
and read with pickle disabled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from shadowproxy.compare.reference import build_reference

__all__ = [
    "FEATURE_COUNT",
    "HOG_MATMULS",
    "HOG_MATRIX",
    "HOG_MEMORY_SLABS",
    "MODEL_FILES",
    "DemoData",
    "build",
    "build_hog",
    "load_data",
    "main",
    "sha256_file",
]

SEED = 20240611
TEST_FRACTION = 0.3
FEATURE_COUNT = 8
TARGET_OPSET = 17
TRAFFIC_ROWS = 2000
SHIFTED_ROWS = 500
# Two features moved for the input-drift traffic, and by how many training SDs.
SHIFTED_FEATURES = ("mean_texture", "mean_smoothness")
SHIFT_SDS = 1.5
REFERENCE_BINS = 10

# The hog's idle work: HOG_MATMULS products of a HOG_MATRIX square matrix (about 2 GFLOP
# each), plus HOG_MEMORY_SLABS slabs of HOG_MATRIX**2 float32 values (4 MiB each) filled and
# summed, so the call also holds that much memory at its peak.
HOG_MATRIX = 1024
HOG_MATMULS = 3
HOG_MEMORY_SLABS = 48

MODEL_FILES = {
    "production": "production.onnx",
    "candidate-retrain": "candidate-retrain.onnx",
    "candidate-shifted": "candidate-shifted.onnx",
    "candidate-hog": "candidate-hog.onnx",
}

# What the promotion report should conclude for each candidate, and why; written into
# models.json so the demo can print the expectation next to the verdict.
EXPECTED = {
    "candidate-retrain": ("promote", "faithful retrain: same labels, scores within 0.01"),
    "candidate-shifted": ("reject", "shifted decision boundary: label flips and score drift"),
    "candidate-hog": ("reject", "same answers at many times the CPU and memory per call"),
}

PRODUCER = "shadowproxy.devtools.demo_models"


@dataclass(frozen=True)
class DemoData:
    """The seeded train/test split of the first 8 breast-cancer features (float32)."""

    features: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def feature_name(raw: str) -> str:
    """``"mean concave points"`` -> ``"mean_concave_points"``: a plain identifier."""
    name = re.sub(r"[^0-9a-zA-Z]+", "_", raw.strip()).strip("_").lower()
    return name if name and not name[0].isdigit() else f"f_{name}"


def load_data() -> DemoData:
    """Load the bundled data set (no download) and split it with the fixed seed."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    x = np.asarray(bunch.data[:, :FEATURE_COUNT], dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    features = tuple(feature_name(str(n)) for n in bunch.feature_names[:FEATURE_COUNT])
    # Stratified, so both halves keep the data set's class balance.
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    return DemoData(
        features,
        np.ascontiguousarray(x_train),
        np.ascontiguousarray(y_train),
        np.ascontiguousarray(x_test),
        np.ascontiguousarray(y_test),
    )


def _pipeline(c: float = 1.0, class_weight: dict[int, float] | None = None) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    # lbfgs with no randomness: the same data always gives the same coefficients.
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(C=c, class_weight=class_weight, max_iter=1000)),
        ]
    )


def train(data: DemoData) -> dict[str, Any]:
    """The three trained pipelines: production, the faithful retrain, the shifted one."""
    x, y = data.x_train, data.y_train
    return {
        "production": _pipeline().fit(x, y),
        "candidate-retrain": _pipeline(c=0.8).fit(x, y),
        # Malignant (label 0) errors weigh ten times more: the boundary moves towards benign.
        "candidate-shifted": _pipeline(class_weight={0: 10.0, 1: 1.0}).fit(x, y),
    }


def to_onnx(estimator: Any, name: str) -> onnx.ModelProto:
    """Convert a fitted pipeline: input ``X`` [N, 8], outputs ``label`` and ``probabilities``."""
    from skl2onnx import to_onnx as convert
    from skl2onnx.common.data_types import FloatTensorType

    model = convert(
        estimator,
        initial_types=[("X", FloatTensorType([None, FEATURE_COUNT]))],
        # zipmap off: probabilities as one [N, 2] float tensor, which every protocol carries.
        options={id(estimator): {"zipmap": False}},
        target_opset=TARGET_OPSET,
        name=name,
    )
    return _stamp(model, name)


def _stamp(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Fix every metadata field, so the bytes depend only on the weights and the graph."""
    model.producer_name = PRODUCER
    model.producer_version = "1"
    model.domain = "shadowproxy.demo"
    model.model_version = 1
    model.doc_string = f"shadowproxy demo model {name}"
    model.graph.name = name.replace("-", "_")
    model.graph.doc_string = ""
    del model.metadata_props[:]
    for node in model.graph.node:
        node.doc_string = ""
    return model


def build_hog(production: onnx.ModelProto) -> onnx.ModelProto:
    """Production's graph plus a heavy branch whose result is added to it times zero.

    The branch starts from a scalar computed from ``X``, so onnxruntime cannot fold it into a
    constant when it loads the model; every call redoes it. The scalar goes through a sigmoid
    and each product is scaled back by ``1 / HOG_MATRIX``, so every value stays in [0, 1]:
    the sum is finite and ``0 * sum`` is exactly zero, leaving the probabilities bit for bit
    as production computes them. Only a few shape constants are stored, so the file stays as
    small as production's.
    """
    model = onnx.ModelProto()
    model.CopyFrom(production)
    graph = model.graph
    base = "hog_probabilities_base"
    producers = [n for n in graph.node if "probabilities" in n.output]
    if len(producers) != 1:
        raise ValueError("production graph must have one node producing 'probabilities'")
    node = producers[0]
    node.output[list(node.output).index("probabilities")] = base

    size = HOG_MATRIX
    graph.initializer.extend(
        [
            helper.make_tensor("hog_square", TensorProto.INT64, [2], [size, size]),
            helper.make_tensor("hog_slabs", TensorProto.INT64, [3], [HOG_MEMORY_SLABS, size, size]),
            helper.make_tensor("hog_rescale", TensorProto.FLOAT, [], [1.0 / size]),
            helper.make_tensor("hog_zero", TensorProto.FLOAT, [], [0.0]),
        ]
    )
    nodes = [
        helper.make_node("ReduceMean", ["X"], ["hog_mean"], keepdims=0),
        helper.make_node("Sigmoid", ["hog_mean"], ["hog_seed"]),
        helper.make_node("Expand", ["hog_seed", "hog_square"], ["hog_m0"]),
    ]
    for i in range(HOG_MATMULS):
        nodes += [
            helper.make_node("MatMul", [f"hog_m{i}", f"hog_m{i}"], [f"hog_p{i}"]),
            helper.make_node("Mul", [f"hog_p{i}", "hog_rescale"], [f"hog_m{i + 1}"]),
        ]
    nodes += [
        helper.make_node("ReduceSum", [f"hog_m{HOG_MATMULS}"], ["hog_cpu_sum"], keepdims=0),
        helper.make_node("Expand", ["hog_seed", "hog_slabs"], ["hog_slab"]),
        helper.make_node("ReduceSum", ["hog_slab"], ["hog_memory_sum"], keepdims=0),
        helper.make_node("Add", ["hog_cpu_sum", "hog_memory_sum"], ["hog_total"]),
        helper.make_node("Mul", ["hog_total", "hog_zero"], ["hog_nothing"]),
        helper.make_node("Add", [base, "hog_nothing"], ["probabilities"]),
    ]
    for extra in nodes:
        extra.name = extra.output[0]
    graph.node.extend(nodes)
    return _stamp(model, "candidate-hog")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def traffic(data: DemoData) -> tuple[np.ndarray, np.ndarray]:
    """Request rows: the test split resampled, and a covariate-shifted variant of it."""
    rng = np.random.default_rng(SEED)
    rows = data.x_test[rng.integers(0, len(data.x_test), TRAFFIC_ROWS)]
    shifted = data.x_test[rng.integers(0, len(data.x_test), SHIFTED_ROWS)].astype(np.float64)
    sd = data.x_train.astype(np.float64).std(axis=0)
    for name in SHIFTED_FEATURES:
        j = data.features.index(name)
        shifted[:, j] += SHIFT_SDS * sd[j]
    return (
        np.ascontiguousarray(rows, dtype=np.float32),
        np.ascontiguousarray(shifted, dtype=np.float32),
    )


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as fh:
        np.save(fh, array, allow_pickle=False)


def build(out: Path) -> dict[str, Any]:
    """Write every demo file into ``out`` (created if needed); return the manifest written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data()

    models = {name: to_onnx(est, name) for name, est in train(data).items()}
    models["candidate-hog"] = build_hog(models["production"])
    entries: dict[str, Any] = {}
    for name, model in models.items():
        onnx.checker.check_model(model, full_check=True)
        path = out / MODEL_FILES[name]
        _write(path, model.SerializeToString())
        entry: dict[str, Any] = {"file": path.name, "sha256": sha256_file(path)}
        if name in EXPECTED:
            entry["expect"], entry["why"] = EXPECTED[name]
        entries[name] = entry

    # The reference is built the way an operator would: from a file of training rows.
    with tempfile.TemporaryDirectory() as tmp:
        rows_path = Path(tmp) / "train.npy"
        _save_npy(rows_path, data.x_train)
        reference = build_reference(rows_path, data.features, bins=REFERENCE_BINS)
    reference.save(out / "reference.json")
    # save() writes through a private temporary file; the committed file is world-readable.
    (out / "reference.json").chmod(0o644)

    rows, shifted = traffic(data)
    _save_npy(out / "traffic.npy", rows)
    _save_npy(out / "traffic-shifted.npy", shifted)

    manifest = {
        "dataset": "sklearn.datasets.load_breast_cancer, first 8 features",
        "seed": SEED,
        "input": {"name": "X", "datatype": "FP32", "shape": [-1, FEATURE_COUNT]},
        "outputs": {"label": "INT64 [N]", "probabilities": "FP32 [N, 2]"},
        "features": list(data.features),
        "models": entries,
        "files": {
            name: {"sha256": sha256_file(out / name)}
            for name in ("reference.json", "traffic.npy", "traffic-shifted.npy")
        },
        "traffic_shift": {"features": list(SHIFTED_FEATURES), "sds": SHIFT_SDS},
    }
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    (out / "models.json").write_text(text, encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shadowproxy.devtools.demo_models",
        description="Regenerate the demo's models, reference and traffic files.",
    )
    parser.add_argument("--out", type=Path, default=Path("configs/demo"), help="output folder")
    args = parser.parse_args(argv)
    manifest = build(args.out)
    for name, entry in manifest["models"].items():
        print(f"{entry['sha256']}  {args.out / entry['file']}  ({name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
