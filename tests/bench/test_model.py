"""The benchmark's ONNX model: deterministic, and it answers the benchmark's request body."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.load import BODY  # noqa: E402
from bench.model import INPUT_NAME, build_logistic_regression, sha256_of  # noqa: E402


def test_the_model_is_the_same_on_every_build(tmp_path: Path) -> None:
    first = build_logistic_regression(tmp_path / "a")
    second = build_logistic_regression(tmp_path / "b")
    assert first.sha256 == second.sha256 == sha256_of(first.path)
    assert first.path.read_bytes() == second.path.read_bytes()


def test_the_model_takes_the_request_body_input(tmp_path: Path) -> None:
    model = build_logistic_regression(tmp_path)
    (request,) = json.loads(BODY)["inputs"]
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert graph_input.name == INPUT_NAME == request["name"]
    assert graph_input.shape[1] == request["shape"][1]
    rows = np.array(request["data"], dtype=np.float32).reshape(request["shape"])
    label, probabilities = session.run(None, {INPUT_NAME: rows})
    assert label.shape == (1,) and probabilities.shape == (1, 2)
    assert np.isclose(probabilities.sum(), 1.0)
    assert f'sha256: "{model.sha256}"' in model.yaml()
