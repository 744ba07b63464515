"""The committed demo files: pinned, reproducible, valid, and each model as the demo needs it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from shadowproxy.compare.bins import Histogram
from shadowproxy.compare.reference import Reference
from shadowproxy.compare.stats import psi
from shadowproxy.compare.target import SCORE_LAYOUT
from shadowproxy.config.model import ModelFile
from shadowproxy.devtools import demo_models
from shadowproxy.models.check import check_model

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo"
GENERATED = [
    *demo_models.MODEL_FILES.values(),
    "models.json",
    "reference.json",
    "traffic.npy",
    "traffic-shifted.npy",
]


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEMO / "models.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    demo_models.build(out)
    return out


@pytest.fixture(scope="module")
def data() -> demo_models.DemoData:
    return demo_models.load_data()


def _session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One thread, so CPU time per call compares the work itself, not the parallelism.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    path = DEMO / demo_models.MODEL_FILES[name]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    label, probabilities = session.run(["label", "probabilities"], {"X": x})
    return np.asarray(label), np.asarray(probabilities)


def _cpu_per_call(session: ort.InferenceSession, x: np.ndarray, calls: int) -> float:
    _run(session, x)  # the first call allocates; measure steady state
    start = time.process_time()
    for _ in range(calls):
        _run(session, x)
    return (time.process_time() - start) / calls


def _score_hist(scores: np.ndarray) -> np.ndarray:
    hist = Histogram(SCORE_LAYOUT)
    hist.add(scores.astype(np.float64))
    return np.asarray(hist.counts)


def test_committed_models_match_their_pins(manifest: dict[str, Any]) -> None:
    assert set(manifest["models"]) == set(demo_models.MODEL_FILES)
    for name, entry in manifest["models"].items():
        assert entry["file"] == demo_models.MODEL_FILES[name]
        assert demo_models.sha256_file(DEMO / entry["file"]) == entry["sha256"], name
    for name, entry in manifest["files"].items():
        assert demo_models.sha256_file(DEMO / name) == entry["sha256"], name


def test_regeneration_is_byte_identical(regenerated: Path) -> None:
    assert sorted(p.name for p in regenerated.iterdir()) == sorted(GENERATED)
    for name in GENERATED:
        assert demo_models.sha256_file(regenerated / name) == demo_models.sha256_file(
            DEMO / name
        ), f"{name} differs from a fresh regeneration; rerun demo_models --out configs/demo"


def test_models_are_small_files(manifest: dict[str, Any]) -> None:
    # No large initializers: the hog's cost is built at run time, not stored.
    for entry in manifest["models"].values():
        assert (DEMO / entry["file"]).stat().st_size < 16 * 1024, entry["file"]


@pytest.mark.parametrize("name", list(demo_models.MODEL_FILES))
def test_each_model_passes_the_model_checks(name: str, manifest: dict[str, Any]) -> None:
    entry = manifest["models"][name]
    checked = check_model(ModelFile(path=DEMO / entry["file"], sha256=entry["sha256"]))
    inputs = {s.name: s for s in checked.signature.inputs}
    outputs = {s.name: s for s in checked.signature.outputs}
    assert list(inputs) == ["X"]
    assert inputs["X"].datatype == "FP32" and inputs["X"].shape == (-1, 8)
    assert outputs["label"].datatype == "INT64"
    assert outputs["probabilities"].datatype == "FP32"
    assert outputs["probabilities"].shape == (-1, 2)


def test_retrain_agrees_with_production(data: demo_models.DemoData) -> None:
    p_label, p_prob = _run(_session("production"), data.x_test)
    c_label, c_prob = _run(_session("candidate-retrain"), data.x_test)
    assert np.mean(p_label == c_label) >= 0.99
    assert float(np.mean(np.abs(p_prob[:, 1] - c_prob[:, 1]))) < 0.01
    # Production is a real classifier, not a constant: it gets most test rows right.
    assert np.mean(p_label == data.y_test) >= 0.9


def test_shifted_candidate_diverges_and_drifts(data: demo_models.DemoData) -> None:
    p_label, p_prob = _run(_session("production"), data.x_test)
    c_label, c_prob = _run(_session("candidate-shifted"), data.x_test)
    assert np.mean(p_label != c_label) >= 0.08
    assert psi(_score_hist(p_prob[:, 1]), _score_hist(c_prob[:, 1])) >= 0.2


def test_hog_answers_exactly_like_production_at_many_times_the_cpu(
    data: demo_models.DemoData,
) -> None:
    production, hog = _session("production"), _session("candidate-hog")
    for x in (data.x_test, data.x_test[:1], np.load(DEMO / "traffic.npy", allow_pickle=False)):
        p_label, p_prob = _run(production, x)
        h_label, h_prob = _run(hog, x)
        assert np.array_equal(p_label, h_label)
        # Bit for bit, not merely close.
        assert p_prob.tobytes() == h_prob.tobytes()
    batch = data.x_test[:32]
    production_cpu = _cpu_per_call(production, batch, 200)
    hog_cpu = _cpu_per_call(hog, batch, 20)
    assert hog_cpu >= 20 * production_cpu, (hog_cpu, production_cpu)


def test_reference_has_the_eight_training_features(
    manifest: dict[str, Any], data: demo_models.DemoData
) -> None:
    reference = Reference.load(DEMO / "reference.json")
    assert reference.names == tuple(manifest["features"]) == data.features
    assert len(reference.names) == 8
    assert reference.rows == len(data.x_train)
    for feature in reference.features:
        assert feature.kind == "numeric"
        assert sum(feature.counts) == len(data.x_train)


def test_traffic_files_have_the_right_shape_and_shift(
    manifest: dict[str, Any], data: demo_models.DemoData
) -> None:
    traffic = np.load(DEMO / "traffic.npy", allow_pickle=False)
    shifted = np.load(DEMO / "traffic-shifted.npy", allow_pickle=False)
    assert traffic.shape == (2000, 8) and traffic.dtype == np.float32
    assert shifted.shape == (500, 8) and shifted.dtype == np.float32
    assert np.isfinite(traffic).all() and np.isfinite(shifted).all()
    # Every request row is a test row: nothing the models were trained on leaks in.
    test_rows = {row.tobytes() for row in data.x_test}
    assert all(row.tobytes() in test_rows for row in traffic)

    sd = data.x_train.std(axis=0)
    moved = (shifted.mean(axis=0) - traffic.mean(axis=0)) / sd
    shifted_columns = [manifest["features"].index(n) for n in manifest["traffic_shift"]["features"]]
    for j in range(8):
        if j in shifted_columns:
            assert moved[j] > 1.0, (manifest["features"][j], moved[j])
        else:
            assert abs(moved[j]) < 0.5, (manifest["features"][j], moved[j])
