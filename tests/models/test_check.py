"""check_model: what it accepts, and every refusal with its own reason."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest

from shadowproxy.config.model import ModelFile
from shadowproxy.errors import ModelError
from shadowproxy.models import check_model
from tests.models.helpers import pinned, pinned_file, refusal, unpinned
from tests.support import models

TRUNCATED = "not a valid ONNX model (truncated or corrupt)"


@pytest.fixture
def logreg_copy(tmp_path: Path, logreg_model: models.BuiltModel) -> Path:
    """A private copy of the logreg model, free to damage."""
    path = tmp_path / "model.onnx"
    path.write_bytes(logreg_model.path.read_bytes())
    return path


def test_good_models_pass_with_their_bytes_and_signature(
    logreg_model: models.BuiltModel, gbt_model: models.BuiltModel
) -> None:
    for built in (logreg_model, gbt_model):
        checked = check_model(pinned(built))
        raw = built.path.read_bytes()
        assert checked.data == raw
        assert checked.size == len(raw)
        assert checked.sha256 == built.sha256
        assert [spec.name for spec in checked.signature.inputs] == ["X"]
        assert checked.signature.inputs[0].shape == (-1, 4)
        assert checked.signature.opsets == {"": 17, "ai.onnx.ml": 1}


def test_pin_is_case_insensitive(logreg_model: models.BuiltModel) -> None:
    spec = ModelFile(path=logreg_model.path, sha256=logreg_model.sha256.upper())
    assert check_model(spec).sha256 == logreg_model.sha256


def test_hash_mismatch_is_refused_with_both_values(logreg_model: models.BuiltModel) -> None:
    wrong = hashlib.sha256(b"another model").hexdigest()
    spec = ModelFile(path=logreg_model.path, sha256=wrong)
    message = refusal(spec, "candidates[0].model")
    assert "does not match its pinned sha256" in message
    assert wrong in message and logreg_model.sha256 in message


def test_unpinned_is_refused_with_the_value_to_pin(logreg_model: models.BuiltModel) -> None:
    message = refusal(ModelFile(path=logreg_model.path), "production.model")
    assert "no pinned sha256" in message
    assert f"sha256: {logreg_model.sha256}" in message
    assert "allow_unpinned" in message


def test_allow_unpinned_accepts_and_still_hashes(logreg_model: models.BuiltModel) -> None:
    checked = check_model(unpinned(logreg_model.path))
    assert checked.sha256 == logreg_model.sha256


def test_allow_unpinned_still_checks_a_given_pin(logreg_model: models.BuiltModel) -> None:
    spec = ModelFile(path=logreg_model.path, sha256="0" * 64, allow_unpinned=True)
    assert "does not match" in refusal(spec)


def test_max_bytes_is_a_hard_limit(logreg_model: models.BuiltModel) -> None:
    size = logreg_model.path.stat().st_size
    assert check_model(pinned(logreg_model, max_bytes=size)).size == size
    message = refusal(pinned(logreg_model, max_bytes=size - 1))
    assert "max_bytes" in message and str(size - 1) in message


def test_truncated_model_is_refused(logreg_copy: Path, gbt_model: models.BuiltModel) -> None:
    for source in (logreg_copy, gbt_model.path):
        raw = source.read_bytes()
        half = logreg_copy.parent / f"half_{source.name}"
        half.write_bytes(raw[: len(raw) // 2])
        assert TRUNCATED in refusal(pinned_file(half))


def test_garbage_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(3).bytes(4096))
    assert TRUNCATED in refusal(pinned_file(garbage))


def test_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert TRUNCATED in refusal(pinned_file(empty))


class _TouchOnLoad:
    """Unpickling this creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_pickle_renamed_onnx_is_refused_and_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = {"model": "weights", "hook": _TouchOnLoad(marker)}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"model_p{protocol}.onnx"
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
        message = refusal(pinned_file(path))
        assert "is a Python pickle" in message
        assert "unpickling runs arbitrary code" in message
        assert "export the model to ONNX" in message
    assert not marker.exists()


def test_joblib_dumps_are_refused(tmp_path: Path) -> None:
    for compress in (0, 3):
        path = tmp_path / f"model_{compress}.onnx"
        joblib.dump({"coef": np.arange(4.0)}, path, compress=compress)
        message = refusal(pinned_file(path))
        assert "joblib" in message
        assert "arbitrary code" in message


def test_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    message = refusal(pinned_file(path))
    assert "PyTorch checkpoint" in message and "arbitrary code" in message


def test_safetensors_is_refused(tmp_path: Path) -> None:
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path = tmp_path / "model.onnx"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    assert "is a safetensors weights file" in refusal(pinned_file(path))


def test_npy_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.eye(3))
    path = tmp_path / "model.onnx"
    path.write_bytes(buffer.getvalue())
    assert "is a numpy .npy array file" in refusal(pinned_file(path))


def test_missing_file_is_refused(tmp_path: Path) -> None:
    assert "does not exist" in refusal(unpinned(tmp_path / "nope.onnx"))


def test_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "dir.onnx"
    folder.mkdir()
    assert "not a regular file" in refusal(unpinned(folder))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    assert "not a regular file" in refusal(unpinned(fifo))


def test_symlinked_model_file_is_read_through_its_target(
    tmp_path: Path, logreg_model: models.BuiltModel
) -> None:
    # Mounted volumes often expose files through symlinks; the pin decides the content.
    link = tmp_path / "current.onnx"
    link.symlink_to(logreg_model.path)
    checked = check_model(ModelFile(path=link, sha256=logreg_model.sha256))
    assert checked.data == logreg_model.path.read_bytes()


def test_refusals_chain_their_cause(logreg_model: models.BuiltModel) -> None:
    with pytest.raises(ModelError) as caught:
        check_model(pinned(logreg_model, max_bytes=10))
    assert caught.value.__cause__ is not None


def test_checked_bytes_are_independent_of_later_file_changes(logreg_copy: Path) -> None:
    checked = check_model(pinned_file(logreg_copy))
    original = logreg_copy.read_bytes()
    logreg_copy.write_bytes(b"replaced after the check")
    assert checked.data == original
    assert hashlib.sha256(checked.data).hexdigest() == checked.sha256


def test_a_checker_refusal_is_one_line(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from tests.models.helpers import save

    # Gelu exists from opset 20 only: the checker's message spans several lines.
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = onnx.IR_VERSION
    message = refusal(pinned_file(save(model, tmp_path / "gelu.onnx")))
    assert "Gelu" in message and "\n" not in message
