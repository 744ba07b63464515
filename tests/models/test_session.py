"""Sessions: built from checked bytes, run with plain numpy outputs, warmed up, thread-capped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from shadowproxy.config.model import ModelFile
from shadowproxy.errors import ModelError
from shadowproxy.models import (
    CheckedModel,
    build_session,
    check_model,
    run_model,
    thread_environment,
    warmup_inputs,
)
from shadowproxy.tensors import DATATYPES
from tests.models.helpers import pinned, pinned_file, save
from tests.support import models


@pytest.fixture(scope="module")
def zipmap_model(model_dir: Path) -> models.BuiltModel:
    return models.zipmap_logistic_regression(model_dir)


@pytest.mark.parametrize("fixture", ["logreg_model", "gbt_model", "slow_model", "zipmap_model"])
def test_warmup_inputs_run_on_every_fixture_model(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    checked = check_model(pinned(request.getfixturevalue(fixture)))
    session = build_session(checked, threads=1)
    outputs = run_model(session, checked.signature, warmup_inputs(checked.signature, rows=3))
    assert list(outputs) == [spec.name for spec in checked.signature.outputs]
    for spec in checked.signature.outputs:
        array = outputs[spec.name]
        assert isinstance(array, np.ndarray)
        assert array.shape[0] == 3
        assert array.dtype == DATATYPES[spec.datatype][0]


def test_zipmap_becomes_a_float_matrix_equal_to_plain_probabilities(
    zipmap_model: models.BuiltModel, logreg_model: models.BuiltModel
) -> None:
    zipmap = check_model(pinned(zipmap_model))
    plain = check_model(pinned(logreg_model))
    assert zipmap.signature.outputs[1].datatype == "FP32"
    assert zipmap.signature.outputs[1].shape == (-1, 2)
    x, _ = models.training_data(seed=5, rows=7)
    got = run_model(build_session(zipmap, 1), zipmap.signature, {"X": x})
    want = run_model(build_session(plain, 1), plain.signature, {"X": x})
    probabilities = got["output_probability"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (7, 2)
    np.testing.assert_allclose(probabilities, want["probabilities"], rtol=1e-6)
    np.testing.assert_array_equal(got["output_label"], want["label"])


def test_zipmap_columns_follow_the_declared_class_order(tmp_path: Path) -> None:
    # Labels deliberately not sorted: onnxruntime returns sorted maps, columns must not be.
    labels = ["zebra", "ant", "mole"]
    graph = helper.make_graph(
        [
            helper.make_node(
                "ZipMap", ["p"], ["maps"], domain="ai.onnx.ml", classlabels_strings=labels
            )
        ],
        "zipmap",
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_value_info(
                "maps",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(
                        TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
                    )
                ),
            )
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    )
    model.ir_version = 8
    checked = check_model(pinned_file(save(model, tmp_path / "zipmap_strings.onnx")))
    assert checked.signature.zipmaps == {"maps": tuple(labels)}
    p = np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]], np.float32)
    out = run_model(build_session(checked, 1), checked.signature, {"p": p})
    np.testing.assert_array_equal(out["maps"], p)


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_warmup_inputs_fit_every_datatype(datatype: str, model_dir: Path) -> None:
    built = models.identity_model(
        model_dir, DATATYPES[datatype][1], f"warm_{datatype}.onnx", shape=("N", "M", 3)
    )
    checked = check_model(pinned(built))
    inputs = warmup_inputs(checked.signature, rows=2)
    assert inputs["x"].shape == (2, 1, 3)
    out = run_model(build_session(checked, 1), checked.signature, inputs)
    np.testing.assert_array_equal(out["y"], inputs["x"])


def test_warmup_inputs_are_seeded(logreg_model: models.BuiltModel) -> None:
    signature = check_model(pinned(logreg_model)).signature
    first = warmup_inputs(signature, rows=4, seed=1)["X"]
    again = warmup_inputs(signature, rows=4, seed=1)["X"]
    other = warmup_inputs(signature, rows=4, seed=2)["X"]
    assert first.dtype == np.float32 and first.shape == (4, 4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_session_options_follow_the_contract(logreg_model: models.BuiltModel) -> None:
    session = build_session(check_model(pinned(logreg_model)), threads=3)
    options = session.get_session_options()
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_session_is_built_from_the_checked_bytes(
    tmp_path: Path, logreg_model: models.BuiltModel
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(logreg_model.path.read_bytes())
    checked = check_model(pinned_file(path))
    path.unlink()
    session = build_session(checked, 1)
    assert [i.name for i in session.get_inputs()] == ["X"]


def test_unloadable_bytes_raise_model_error(logreg_model: models.BuiltModel) -> None:
    checked = check_model(pinned(logreg_model))
    broken = CheckedModel(
        checked.path, checked.sha256, checked.data[:50], checked.signature, checked.size
    )
    with pytest.raises(ModelError, match="onnxruntime could not load the model") as caught:
        build_session(broken, 1)
    assert str(logreg_model.path) in str(caught.value)
    assert caught.value.__cause__ is not None


def test_threads_must_be_positive(logreg_model: models.BuiltModel) -> None:
    with pytest.raises(ValueError):
        build_session(check_model(pinned(logreg_model)), threads=0)
    with pytest.raises(ValueError):
        thread_environment(0)


def test_thread_environment_caps_every_pool() -> None:
    env = thread_environment(3)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert env[name] == "3"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert all(isinstance(value, str) for value in env.values())


def test_thread_environment_takes_effect_in_a_new_process() -> None:
    # numpy's wheels bundle OpenBLAS, and threadpoolctl comes with scikit-learn: the pool is
    # always there to be seen.
    script = (
        "import json, numpy, threadpoolctl;"
        "print(json.dumps([p['num_threads'] for p in threadpoolctl.threadpool_info()]))"
    )
    env = {**os.environ, **thread_environment(2)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    counts = json.loads(done.stdout)
    assert counts, "no BLAS/OpenMP pool found in the new process"
    assert set(counts) == {2}


def test_outputs_come_back_in_the_tables_dtypes(logreg_model: models.BuiltModel) -> None:
    """onnxruntime's ``longlong`` labels become ``int64``, which JSON encoders accept."""
    import orjson

    checked = check_model(ModelFile(path=logreg_model.path, sha256=logreg_model.sha256))
    session = build_session(checked, threads=1)
    outputs = run_model(session, checked.signature, warmup_inputs(checked.signature, rows=3))
    label = outputs["label"]
    assert label.dtype.char == np.dtype(np.int64).char
    assert orjson.loads(orjson.dumps([label[0]], option=orjson.OPT_SERIALIZE_NUMPY)) == [
        int(label[0])
    ]
