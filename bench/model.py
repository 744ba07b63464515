"""The ONNX model of the local-candidate benchmarks, built at run time.

A scikit-learn logistic regression over the four features of the benchmark's request body,
converted with skl2onnx. The data are seeded, so the file (and so its sha256) is the same on
every run with the same library versions; the sha256 is computed from the file written, never
assumed, because that is what the proxy checks before loading it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_FEATURES = 4  # the benchmark's body: input named "input", shape [1, 4], FP32
INPUT_NAME = "input"
SEED = 0


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    sha256: str

    def yaml(self) -> str:
        """The ``model:`` block of a candidate, as a YAML flow mapping."""
        return f'{{path: "{self.path}", sha256: "{self.sha256}"}}'


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_data(seed: int = SEED, rows: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A seeded binary task: a noisy linear rule over four float32 features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES)).astype(np.float32)
    noise = rng.normal(scale=0.3, size=rows)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + noise > 0).astype(np.int64)
    return x, y


def build_logistic_regression(folder: Path, name: str = "logreg.onnx") -> BuiltModel:
    """Write the benchmark model to ``folder/name``; its input is ``input`` of shape [N, 4]."""
    # Imported here: only runs that measure a local candidate pay for scikit-learn.
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x, y = training_data()
    estimator = LogisticRegression().fit(x, y)
    onnx_model = to_onnx(
        estimator,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        # zipmap off: probabilities come out as one [N, 2] tensor, which the proxy can encode.
        options={id(estimator): {"zipmap": False}},
        target_opset=17,
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(onnx_model.SerializeToString())
    return BuiltModel(path, sha256_of(path))
